"""Simulated camera: a generated portrait scene or image files, with injectable faults.

It runs through the same :class:`~appliance.drivers.camera.interface.CameraBase` life cycle as
the real backends, so health, release-on-error and reopen-on-hot-plug are exercised by the
simulator exactly as they run on a kiosk. Faults come from configuration (``sim_fault``,
``sim_unplug_after``) and can be changed at run time (:meth:`SimCamera.set_fault`,
:meth:`SimCamera.unplug`, :meth:`SimCamera.replug`) by tests and by ``appliance sim camera``.
"""

from __future__ import annotations

import glob
import logging
import threading
import time

from ...devices import EventSink
from ...errors import ConfigError, DeviceDisconnected
from .config import CameraConfig
from .interface import CameraBase, Image

log = logging.getLogger(__name__)


class SimCamera(CameraBase):
    """Camera backend ``sim``."""

    backend_name = "sim"

    def __init__(self, config: CameraConfig, sink: EventSink) -> None:
        super().__init__(config, sink)
        self._fault: str = config.sim_fault
        self._unplug_after = config.sim_unplug_after
        self._plugged = config.sim_fault != "unplugged"
        self._delivered = 0  # frames delivered since the last (re)plug
        self._files: list[str] = []
        self._file_images: dict[str, Image] = {}
        self._next_due = 0.0
        self._state_lock = threading.Lock()
        if config.sim_source != "scene":
            self._files = sorted(glob.glob(config.sim_source))
            if not self._files:
                raise ConfigError(
                    f"no image files match {config.sim_source!r}",
                    [("hardware.camera.sim_source", "glob matches no file")],
                )

    # --- run-time fault control -------------------------------------------------------------

    @property
    def fault(self) -> str:
        return self._fault

    def set_fault(self, fault: str) -> None:
        """Switch the injected fault; ``unplugged`` pulls the cable, anything else plugs it."""
        from . import scene  # numpy and OpenCV load with the first frame, not at start

        if fault not in scene.FAULTS:
            raise ConfigError(
                f"unknown simulator fault {fault!r}",
                [("hardware.camera.sim_fault", f"choose one of {', '.join(scene.FAULTS)}")],
            )
        with self._state_lock:
            self._fault = fault
            self._plugged = fault != "unplugged"

    def unplug(self) -> None:
        """Pull the simulated cable: the next read fails and reopening fails until replug."""
        with self._state_lock:
            self._plugged = False

    def replug(self, unplug_after: int | None = None) -> None:
        """Plug the cable back in; the watcher thread reopens the camera."""
        with self._state_lock:
            self._plugged = True
            self._delivered = 0
            self._unplug_after = unplug_after
            if self._fault == "unplugged":
                self._fault = "none"

    @property
    def plugged(self) -> bool:
        return self._plugged

    # --- CameraBase hooks ---------------------------------------------------------------

    def _open(self) -> None:
        if not self._plugged:
            raise DeviceDisconnected("simulated camera unplugged", device=self.kind)
        self._next_due = time.monotonic()

    def _close(self) -> None:
        self._next_due = 0.0

    def _read(self, timeout_s: float) -> Image:
        # Pace frames at sim_fps like a sensor's frame clock; an interruptible wait so stop()
        # never hangs behind a slow frame rate.
        now = time.monotonic()
        delay = self._next_due - now
        if delay > 0:
            self._stop_event.wait(min(delay, timeout_s))
        self._next_due = max(now, self._next_due) + 1.0 / self.config.sim_fps
        with self._state_lock:
            if self._unplug_after is not None and self._delivered >= self._unplug_after:
                self._plugged = False
            if not self._plugged:
                raise DeviceDisconnected("simulated camera unplugged mid-stream", device=self.kind)
            self._delivered += 1
            fault = self._fault
            upcoming = self._index + 1  # the number read() will give this frame
        if self._files:
            return self._file_frame(upcoming - 1)
        from . import scene

        image, _truth = scene.render(self.config.width, self.config.height, fault, upcoming)
        return image

    def _file_frame(self, index: int) -> Image:
        path = self._files[index % len(self._files)]
        image = self._file_images.get(path)
        if image is None:
            import cv2

            loaded = cv2.imread(path, cv2.IMREAD_COLOR)
            if loaded is None:
                raise ConfigError(
                    f"cannot read image file {path!r}",
                    [("hardware.camera.sim_source", f"unreadable image {path!r}")],
                )
            image = loaded.astype("uint8")
            self._file_images[path] = image
        return image
