"""Raspberry Pi camera modules through picamera2 (libcamera).

picamera2 is imported at module level on purpose: this module is only imported by the backend
factory when the configuration asks for ``picamera2``, and the factory turns the ImportError
into :class:`~appliance.errors.MissingExtraError` naming the ``pi`` extra. On x86 picamera2
cannot import at all (libcamera's Python bindings are neither on PyPI nor in Debian 12;
Raspberry Pi OS ships them); on a Pi use Debian's ``python3-picamera2`` in a venv made
with ``--system-site-packages``.

Not exercised on hardware in CI: the tests cover the factory's error and this adapter's calls
against a stand-in module with picamera2's documented API (``Picamera2(camera_num)``,
``create_video_configuration``, ``configure``, ``start``, ``capture_array``, ``stop``,
``close``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from picamera2 import Picamera2

from ...devices import EventSink
from ...errors import DeviceDisconnected, DeviceError
from .config import CameraConfig
from .interface import CameraBase, Image

log = logging.getLogger(__name__)


class Picamera2Camera(CameraBase):
    """Camera backend ``picamera2``."""

    backend_name = "picamera2"

    def __init__(self, config: CameraConfig, sink: EventSink) -> None:
        super().__init__(config, sink)
        self._cam: Any = None

    def _camera_number(self) -> int:
        return int(self.config.device) if self.config.device.isdigit() else 0

    def _open(self) -> None:
        try:
            cam = Picamera2(self._camera_number())
        except (IndexError, RuntimeError, OSError) as exc:
            # picamera2 raises IndexError when the camera number is not attached and
            # RuntimeError when libcamera cannot acquire it (in use, cable loose).
            raise DeviceDisconnected(
                f"no Pi camera {self._camera_number()}: {exc}", device=self.kind
            ) from exc
        try:
            # "RGB888" in libcamera's naming is B, G, R byte order in memory: exactly OpenCV's
            # BGR, so frames need no conversion (picamera2 manual, the table of image formats).
            video = cam.create_video_configuration(
                main={"size": (self.config.width, self.config.height), "format": "RGB888"}
            )
            cam.configure(video)
            cam.start()
        except Exception as exc:
            cam.close()
            raise DeviceError(f"Pi camera would not start: {exc}", device=self.kind) from exc
        self._cam = cam

    def _read(self, timeout_s: float) -> Image:
        cam = self._cam
        try:
            array = cam.capture_array("main")
        except Exception as exc:
            raise DeviceDisconnected(f"Pi camera capture failed: {exc}", device=self.kind) from exc
        image = np.asarray(array)
        if image.ndim == 3 and image.shape[2] == 4:  # XBGR8888 layouts carry a padding byte
            image = image[:, :, :3]
        return np.ascontiguousarray(image, dtype=np.uint8)

    def _close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            try:
                cam.stop()
            finally:
                cam.close()
