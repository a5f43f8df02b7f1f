"""The picamera2 adapter against a stand-in module, and ``appliance sim camera``.

picamera2 cannot be imported off a Raspberry Pi (libcamera's bindings are not on PyPI), so the
adapter's calls are checked against a stand-in that implements the part of picamera2's
documented API the adapter uses. It proves the adapter's life cycle and error mapping, not
the real library: that needs a Pi (see docs/camera.md).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from appliance.drivers.camera.config import CameraConfig
from appliance.errors import DeviceDisconnected

from .conftest import Events, wait_for


class StandInPicamera2:
    """The slice of picamera2.Picamera2 that the adapter calls."""

    attached: int = 1
    fail_capture = False
    instances: list[StandInPicamera2] = []  # noqa: RUF012 - test bookkeeping

    def __init__(self, camera_num: int = 0) -> None:
        if camera_num >= self.attached:
            raise IndexError("list index out of range")
        self.calls: list[str] = []
        self.size = (0, 0)
        self.started = False
        StandInPicamera2.instances.append(self)

    def create_video_configuration(self, main: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(f"config:{main['format']}")
        return {"main": main}

    def configure(self, config: dict[str, Any]) -> None:
        self.size = config["main"]["size"]

    def start(self) -> None:
        self.started = True

    def capture_array(self, name: str = "main") -> np.ndarray:
        if StandInPicamera2.fail_capture:
            raise RuntimeError("camera frontend has timed out")
        w, h = self.size
        frame = np.zeros((h, w, 4), np.uint8)  # XBGR8888-like padding byte
        frame[..., 0] = 200
        return frame

    def stop(self) -> None:
        self.calls.append("stop")
        self.started = False

    def close(self) -> None:
        self.calls.append("close")


@pytest.fixture
def picam(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    module = types.ModuleType("picamera2")
    module.Picamera2 = StandInPicamera2  # type: ignore[attr-defined]
    StandInPicamera2.attached = 1
    StandInPicamera2.fail_capture = False
    StandInPicamera2.instances = []
    monkeypatch.setitem(sys.modules, "picamera2", module)
    monkeypatch.delitem(sys.modules, "appliance.drivers.camera.picam", raising=False)
    yield importlib.import_module("appliance.drivers.camera.picam")
    sys.modules.pop("appliance.drivers.camera.picam", None)


def test_picamera2_adapter_life_cycle(picam: types.ModuleType, events: Events) -> None:
    cfg = CameraConfig(backend="picamera2", width=320, height=240, reopen_interval_s=0.05)
    cam = picam.Picamera2Camera(cfg, events.sink)
    cam.start()
    try:
        assert cam.health().state == "ok"
        frame = cam.read()
        assert frame.image.shape == (240, 320, 3) and frame.image[0, 0, 0] == 200
        first = StandInPicamera2.instances[-1]
        assert first.calls[0] == "config:RGB888"
        StandInPicamera2.fail_capture = True
        with pytest.raises(DeviceDisconnected, match="timed out"):
            cam.read()
        assert first.calls[-2:] == ["stop", "close"]  # released on error
        assert cam.health().state == "disconnected"
        StandInPicamera2.fail_capture = False
        wait_for(lambda: cam.health().state == "ok", what="Pi camera reopened")
        assert cam.read().image.shape == (240, 320, 3)
    finally:
        cam.stop()


def test_picamera2_absent_camera_is_health_not_exception(
    picam: types.ModuleType, events: Events
) -> None:
    StandInPicamera2.attached = 0
    cam = picam.Picamera2Camera(CameraConfig(backend="picamera2"), events.sink)
    cam.start()
    try:
        assert cam.health().state == "disconnected"
        assert "no Pi camera 0" in (cam.health().detail or "")
    finally:
        cam.stop()


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance.drivers.camera.simcli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_simcli_help_explains_every_option() -> None:
    out = _cli("--help")
    assert out.returncode == 0
    for option in ("--fault", "--frames", "--width", "--height", "--out", "--image"):
        assert option in out.stdout
    assert "default" in out.stdout


def test_simcli_renders_and_scores(tmp_path: Path) -> None:
    out = _cli("--fault", "tilted", "--frames", "2", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 2
    assert all("roll" in line["failing"] for line in lines)
    assert cv2.imread(lines[0]["file"]).shape == (480, 640, 3)
    scored = _cli("--image", lines[0]["file"], "--image", str(tmp_path / "missing.png"))
    assert scored.returncode == 2
    assert "cannot read picture" in scored.stderr
    (report,) = [json.loads(line) for line in scored.stdout.splitlines()]
    assert report["faces"] == 1 and "roll" in report["failing"]


def test_simcli_rejects_bad_values() -> None:
    assert _cli("--frames", "0").returncode == 2
    assert _cli("--fault", "melted").returncode == 2
    assert _cli("--width", "10").returncode == 2
