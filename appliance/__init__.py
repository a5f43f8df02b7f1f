"""appliance: the daemon of a CCCD self-service enrollment kiosk."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("appliance")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+src"
