"""OpenCV ``VideoCapture`` backend for USB/V4L2 webcams.

A grabber thread owns the ``VideoCapture`` and keeps only the newest frame, so a reader always
gets a fresh picture (webcams buffer several frames, and guidance on a stale frame confuses
the citizen) and a read can honour its timeout even when the driver blocks. When the grabber's
read fails (cable pulled, V4L2 ``ENODEV``) it releases the device and the base class's watcher
reopens it on hot-plug.

``device`` is a V4L2 index (``0``) or path (``/dev/video0``, ``/dev/v4l/by-id/...``); any other
string is handed to
OpenCV as is (a video file, or an image-sequence pattern such as ``frames/%03d.png``) and is
then paced at ``sim_fps``, which is how the tests drive this backend for real.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from typing import Any

import cv2
import numpy as np

from ...devices import EventSink
from ...errors import DeviceDisconnected, DeviceError, DeviceTimeout
from .config import CameraConfig
from .interface import CameraBase, Image

log = logging.getLogger(__name__)


def _source(device: str) -> tuple[int | str, int, bool]:
    """(VideoCapture source, API preference, is a live device) for a config ``device``.

    OpenCV's V4L2 backend opens by index only ("can't be used to capture by name"), so a
    ``/dev/videoN`` path, or a udev symlink such as ``/dev/v4l/by-id/...`` that resolves to
    one, becomes the index N.
    """
    live_api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
    if device.isdigit():
        return int(device), live_api, True
    if device.startswith("/dev/"):
        match = re.fullmatch(r"/dev/video(\d+)", os.path.realpath(device))
        if match:
            return int(match.group(1)), live_api, True
        return device, live_api, True
    return device, cv2.CAP_ANY, False


class OpenCVCamera(CameraBase):
    """Camera backend ``opencv``."""

    backend_name = "opencv"

    def __init__(self, config: CameraConfig, sink: EventSink) -> None:
        super().__init__(config, sink)
        self._cap: Any = None
        self._grabber: threading.Thread | None = None
        self._cond = threading.Condition()
        self._latest: Image | None = None
        self._latest_seq = 0
        self._taken_seq = 0
        self._failure: DeviceError | None = None
        self._grab_stop = threading.Event()

    def _open(self) -> None:
        source, api, live = _source(self.config.device)
        cap = cv2.VideoCapture(source, api)
        if not cap.isOpened():
            cap.release()
            raise DeviceDisconnected(
                f"no camera at {self.config.device!r}",
                device=self.kind,
                details={"source": self.config.device},
            )
        if live:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.config.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.config.height)
            # One buffered frame where the driver supports it: we want the newest picture.
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
            pace = 0.0
        else:
            # Files are read as fast as the disk allows; pace them like a camera's frame clock.
            pace = 1.0 / self.config.sim_fps
        self._cap = cap
        with self._cond:
            self._latest = None
            self._latest_seq = self._taken_seq = 0
            self._failure = None
        self._grab_stop.clear()
        self._grabber = threading.Thread(
            target=self._grab_loop, args=(cap, pace), name="camera-opencv-grab", daemon=True
        )
        self._grabber.start()

    def _grab_loop(self, cap: Any, pace: float) -> None:
        next_due = time.monotonic()
        while not self._grab_stop.is_set():
            try:
                ok, image = cap.read()
            except cv2.error as exc:  # converted at the boundary
                ok, image = False, None
                log.warning("camera opencv read raised: %s", exc)
            if not ok or image is None:
                with self._cond:
                    self._failure = DeviceDisconnected(
                        f"camera {self.config.device!r} stopped delivering frames",
                        device=self.kind,
                    )
                    self._cond.notify_all()
                return
            if image.ndim == 2:
                image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
            with self._cond:
                self._latest = np.ascontiguousarray(image, dtype=np.uint8)
                self._latest_seq += 1
                self._cond.notify_all()
            if pace > 0:
                next_due += pace
                self._grab_stop.wait(max(0.0, next_due - time.monotonic()))

    def _opened_size(self) -> tuple[int, int]:
        # A webcam may not support the requested size and silently picks another one.
        cap = self._cap
        if cap is None:
            return self.config.width, self.config.height
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        if width <= 0 or height <= 0:
            return self.config.width, self.config.height
        return width, height

    def _read(self, timeout_s: float) -> Image:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._latest_seq == self._taken_seq:
                if self._failure is not None:
                    raise self._failure
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeviceTimeout(
                        f"no frame from {self.config.device!r} within {timeout_s:.1f} s",
                        device=self.kind,
                    )
                self._cond.wait(remaining)
            self._taken_seq = self._latest_seq
            assert self._latest is not None
            return self._latest

    def _close(self) -> None:
        self._grab_stop.set()
        grabber, self._grabber = self._grabber, None
        if grabber is not None and grabber is not threading.current_thread():
            grabber.join(timeout=5.0)
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()
