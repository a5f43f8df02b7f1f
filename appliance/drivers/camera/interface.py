"""The camera capability: one interface, and the shared life cycle of every backend.

A backend implements three hooks on :class:`CameraBase`: ``_open`` (acquire the device or
raise :class:`~appliance.errors.DeviceDisconnected`), ``_read`` (one BGR frame, or a
:class:`~appliance.errors.DeviceError`) and ``_close`` (release; never raises). The base class
turns them into the :class:`~appliance.devices.Device` contract: ``start()`` never raises for
an absent camera, a failed read releases the device and reports health, and a watcher thread
reopens it every ``reopen_interval_s`` (hot-plug).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

from ...devices import DeviceHealth, EventSink, HealthState, HealthTracker
from ...errors import DeviceDisconnected, DeviceError, DeviceTimeout
from .config import CameraConfig

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Image: TypeAlias = npt.NDArray[np.uint8]
else:
    # numpy is not needed until the first frame: an idle kiosk does not pay for it.
    Image = Any


@dataclass(frozen=True)
class Frame:
    """One camera frame: BGR ``uint8`` pixels (H x W x 3), a sequence number and a timestamp."""

    image: Image
    index: int
    timestamp: float  # time.monotonic() when the frame was delivered

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[1]), int(self.image.shape[0])


@runtime_checkable
class Camera(Protocol):
    """What the daemon and the camera commands use; every backend satisfies it."""

    kind: str
    config: CameraConfig
    #: Set by the daemon while an enrollment session is active; camera.snapshot refuses then.
    enrollment_active: bool

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def health(self) -> DeviceHealth: ...

    def read(self, timeout_s: float | None = None) -> Frame:
        """The next frame; raises DeviceDisconnected / DeviceTimeout / DeviceError."""
        ...

    def stats(self) -> dict[str, int]: ...


class CameraBase:
    """Life cycle shared by the backends (health, release on error, reopen on hot-plug)."""

    kind = "camera"
    backend_name = "camera"

    def __init__(self, config: CameraConfig, sink: EventSink) -> None:
        self.config = config
        self.enrollment_active = False
        self._sink = sink
        self._tracker = HealthTracker(self.kind, self.backend_name, sink)
        self._io_lock = threading.RLock()
        self._opened = False
        self._running = False
        self._stop_event = threading.Event()
        self._watcher: threading.Thread | None = None
        self._index = 0
        self._stats = {"frames": 0, "opens": 0, "failures": 0}

    # --- hooks --------------------------------------------------------------------------

    def _open(self) -> None:
        raise NotImplementedError

    def _read(self, timeout_s: float) -> Image:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _opened_size(self) -> tuple[int, int]:
        """The frame size the open device delivers (backends that can ask the driver do)."""
        return self.config.width, self.config.height

    # --- Device ---------------------------------------------------------------------------

    def start(self) -> None:
        """Open the camera if it is there; otherwise report it and keep trying in background."""
        if not self.config.enabled:
            self._tracker.set("disabled", "camera disabled in configuration")
            return
        self._stop_event.clear()
        self._running = True
        self._try_open()
        if self._watcher is None or not self._watcher.is_alive():
            self._watcher = threading.Thread(
                target=self._watch, name=f"camera-{self.backend_name}-watch", daemon=True
            )
            self._watcher.start()

    def stop(self) -> None:
        self._running = False
        self._stop_event.set()
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout=5.0)
        with self._io_lock:
            self._release()
        if self.config.enabled:
            self._tracker.set("disabled", "stopped")

    def health(self) -> DeviceHealth:
        return self._tracker.current

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    @property
    def is_open(self) -> bool:
        return self._opened

    # --- frames ---------------------------------------------------------------------------

    def read(self, timeout_s: float | None = None) -> Frame:
        """The next frame within ``timeout_s`` (default ``read_timeout_s``).

        An absent camera is tried once more before DeviceDisconnected is raised; a failing
        read releases the device (so a replugged camera can be reopened) and re-raises.
        """
        if not self.config.enabled:
            raise DeviceDisconnected("camera disabled in configuration", device=self.kind)
        timeout = self.config.read_timeout_s if timeout_s is None else max(0.0, timeout_s)
        with self._io_lock:
            if not self._opened and not self._try_open():
                health = self._tracker.current
                raise DeviceDisconnected(
                    f"camera not available: {health.detail or health.state}", device=self.kind
                )
            try:
                image = self._read(timeout)
            except DeviceTimeout:
                self._stats["failures"] += 1
                raise
            except DeviceError as exc:
                self._stats["failures"] += 1
                log.warning("camera %s read failed: %s", self.backend_name, exc.message)
                self._release()
                state: HealthState = (
                    "disconnected" if isinstance(exc, DeviceDisconnected) else "error"
                )
                self._tracker.set(state, exc.message)
                raise
            self._index += 1
            self._stats["frames"] += 1
            return Frame(image=image, index=self._index, timestamp=time.monotonic())

    # --- internals ------------------------------------------------------------------------

    def _try_open(self) -> bool:
        with self._io_lock:
            if self._opened:
                return True
            try:
                self._open()
            except DeviceError as exc:
                state: HealthState = (
                    "disconnected" if isinstance(exc, DeviceDisconnected) else "error"
                )
                self._tracker.set(state, exc.message)
                return False
            self._opened = True
            self._stats["opens"] += 1
            width, height = self._opened_size()
            self._tracker.set("ok", None, width=width, height=height)
            log.info("camera %s opened", self.backend_name)
            return True

    def _release(self) -> None:
        if self._opened:
            self._opened = False
            try:
                self._close()
            except Exception:  # a failing release must not hide the original error
                log.exception("camera %s release failed", self.backend_name)

    def _watch(self) -> None:
        while not self._stop_event.wait(self.config.reopen_interval_s):
            if self._running and not self._opened:
                self._try_open()
