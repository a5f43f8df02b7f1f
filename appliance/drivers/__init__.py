"""Backend factory: one table maps (capability, backend name) to the class that implements it.

Imports are lazy so a machine without picamera2 or pyscard still imports the package; asking
for such a backend raises :class:`~appliance.errors.MissingExtraError` naming the extra to
install. Each backend class is constructed as ``cls(config, sink)`` where ``config`` is the
capability's config model and ``sink`` an :data:`~appliance.devices.EventSink`.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..devices import Device, EventSink
from ..errors import ConfigError, MissingExtraError

# capability -> backend -> ("module:Class", extra name, top-level module the extra provides)
BACKENDS: dict[str, dict[str, tuple[str, str | None, str | None]]] = {
    "camera": {
        "sim": ("appliance.drivers.camera.sim:SimCamera", None, None),
        "opencv": ("appliance.drivers.camera.opencv:OpenCVCamera", None, "cv2"),
        "picamera2": ("appliance.drivers.camera.picam:Picamera2Camera", "pi", "picamera2"),
    },
    "fingerprint": {
        # The serial driver serves real sensors and the emulator alike (a pty or socket:// URL).
        "serial": ("appliance.drivers.fingerprint.device:FingerprintSensor", None, "serial"),
    },
    "card": {
        "pcsc": ("appliance.drivers.card.pcsc:PcscEncoder", "pcsc", "smartcard"),
    },
}


def backend_names(capability: str) -> list[str]:
    return sorted(BACKENDS.get(capability, {}))


def create_device(capability: str, backend: str, config: Any, sink: EventSink) -> Device:
    """Instantiate ``backend`` for ``capability``; import its module only now."""
    try:
        target, extra, module = BACKENDS[capability][backend]
    except KeyError:
        raise ConfigError(
            f"unknown {capability} backend {backend!r}",
            [
                (
                    f"hardware.{capability}.backend",
                    f"unknown backend {backend!r}; choose one of {backend_names(capability)}",
                )
            ],
        ) from None
    module_name, class_name = target.split(":")
    try:
        mod = importlib.import_module(module_name)
    except ImportError as exc:
        missing = exc.name or module or module_name
        if extra is not None and module is not None and missing.split(".")[0] == module:
            raise MissingExtraError(backend, extra, module) from exc
        raise
    cls = getattr(mod, class_name)
    device: Device = cls(config, sink)
    return device
