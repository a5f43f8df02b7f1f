"""Where the files that ship with the daemon are found: the hardware kit profiles.

``firmware_profiles/`` sits at the project root beside the package (the fixed layout). A
checkout or an editable install reads it there; a wheel install (``pip install .``, as
docs/deployment.md does) carries it as data files under ``<prefix>/share/appliance/`` (see
``[tool.setuptools.data-files]`` in pyproject.toml), where ``<prefix>`` is the venv.
``APPLIANCE_PROFILES_DIR`` overrides both, e.g. for a site's own profiles.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROFILES_ENV = "APPLIANCE_PROFILES_DIR"
_SHARE = Path("share") / "appliance" / "firmware_profiles"


def profile_dir_candidates() -> list[Path]:
    """Where profiles are looked for, in order (the first that exists wins)."""
    env = os.environ.get(PROFILES_ENV)
    if env:
        return [Path(env)]
    return [
        Path(__file__).resolve().parent.parent / "firmware_profiles",  # checkout / editable
        Path(sys.prefix) / _SHARE,  # wheel installed in a venv
        Path("/usr/local") / _SHARE,
        Path("/usr") / _SHARE,
    ]


def profiles_dir() -> Path:
    """The hardware kit profiles' directory (``<name>.toml``, ``sensors/``, ``cards/``); when
    none exists, the first candidate, so that the error names a sensible place."""
    candidates = profile_dir_candidates()
    return next((c for c in candidates if c.is_dir()), candidates[0])
