"""Camera backends through the real life cycle: the simulator, OpenCV on real image files,
the factory's lazy imports, hot-plug and health."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance.devices import Device
from appliance.drivers import create_device
from appliance.drivers.camera import scene
from appliance.drivers.camera.config import CameraConfig
from appliance.drivers.camera.interface import Camera
from appliance.drivers.camera.opencv import OpenCVCamera
from appliance.drivers.camera.sim import SimCamera
from appliance.errors import ConfigError, DeviceDisconnected, DeviceTimeout, MissingExtraError

from .conftest import Events, wait_for


def test_sim_delivers_scene_frames_and_reports_ok(make_sim: Callable[..., SimCamera]) -> None:
    cam = make_sim(width=320, height=240)
    assert isinstance(cam, Device) and isinstance(cam, Camera)
    cam.start()
    assert cam.health().state == "ok"
    a, b = cam.read(), cam.read()
    assert a.image.shape == (240, 320, 3) and a.image.dtype == np.uint8
    assert b.index == a.index + 1 and b.timestamp >= a.timestamp
    expected, _ = scene.render(320, 240, "none", a.index)
    assert np.array_equal(a.image, expected)
    assert cam.stats()["frames"] == 2


def test_sim_unplugged_mid_stream_then_replugged(
    make_sim: Callable[..., SimCamera], events: Events
) -> None:
    cam = make_sim(sim_unplug_after=3)
    cam.start()
    for _ in range(3):
        cam.read()
    with pytest.raises(DeviceDisconnected, match="unplugged"):
        cam.read()
    assert cam.health().state == "disconnected"
    assert not cam.is_open
    # While unplugged a read fails at once, whatever its timeout.
    with pytest.raises(DeviceDisconnected):
        cam.read(timeout_s=5)
    cam.replug()
    wait_for(lambda: cam.health().state == "ok", what="watcher reopened the camera")
    assert cam.read().image.shape == (480, 640, 3)
    states = [d["state"] for d in events.of("device.health")]
    changes = [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]
    assert changes[:3] == ["ok", "disconnected", "ok"]
    assert all(d["device"] == "camera" for d in events.of("device.health"))


def test_sim_start_without_camera_does_not_raise(make_sim: Callable[..., SimCamera]) -> None:
    cam = make_sim(sim_fault="unplugged")
    cam.start()
    assert cam.health().state == "disconnected"
    with pytest.raises(DeviceDisconnected):
        cam.read()
    cam.set_fault("none")
    wait_for(lambda: cam.health().state == "ok", what="hot-plugged camera reopened")


def test_sim_disabled(make_sim: Callable[..., SimCamera]) -> None:
    cam = make_sim(enabled=False)
    cam.start()
    assert cam.health().state == "disabled"
    with pytest.raises(DeviceDisconnected, match="disabled"):
        cam.read()


def test_sim_stop_is_idempotent(make_sim: Callable[..., SimCamera]) -> None:
    cam = make_sim()
    cam.start()
    cam.read()
    cam.stop()
    cam.stop()
    assert cam.health().state == "disabled"


def test_sim_rejects_unknown_fault(make_sim: Callable[..., SimCamera]) -> None:
    cam = make_sim()
    with pytest.raises(ConfigError, match="unknown simulator fault"):
        cam.set_fault("melted")
    with pytest.raises(Exception, match="sim_fault"):
        CameraConfig(sim_fault="melted")  # type: ignore[arg-type]


def test_sim_serves_image_files_in_order(tmp_path: Path, events: Events) -> None:
    images = [np.full((60, 80, 3), 30 * i, np.uint8) for i in range(3)]
    for i, img in enumerate(images):
        cv2.imwrite(str(tmp_path / f"p{i}.png"), img)
    cam = SimCamera(CameraConfig(sim_source=str(tmp_path / "p*.png"), sim_fps=200.0), events.sink)
    cam.start()
    try:
        got = [cam.read().image for _ in range(4)]
    finally:
        cam.stop()
    assert [int(g[0, 0, 0]) for g in got] == [0, 30, 60, 0]


def test_sim_file_source_must_match(tmp_path: Path, events: Events) -> None:
    with pytest.raises(ConfigError, match="no image files"):
        SimCamera(CameraConfig(sim_source=str(tmp_path / "*.png")), events.sink)


def test_factory_builds_the_simulator(events: Events) -> None:
    cam = create_device("camera", "sim", CameraConfig(), events.sink)
    assert isinstance(cam, SimCamera)
    assert cam.kind == "camera"


@pytest.mark.skipif(
    importlib.util.find_spec("picamera2") is not None,
    reason="picamera2 is importable here (a Pi): the missing-extra path cannot be shown",
)
def test_factory_names_the_pi_extra_when_picamera2_is_missing(events: Events) -> None:
    with pytest.raises(MissingExtraError) as info:
        create_device("camera", "picamera2", CameraConfig(backend="picamera2"), events.sink)
    assert info.value.details == {"backend": "picamera2", "extra": "pi", "module": "picamera2"}
    assert "appliance[pi]" in info.value.message


# --- OpenCV VideoCapture on real files (FFmpeg's image2 demuxer) ---------------------------------


def _write_sequence(folder: Path, count: int) -> list[np.ndarray]:
    frames = []
    for i in range(count):
        frame, _ = scene.render(320, 240, "none", i)
        cv2.imwrite(str(folder / f"f{i:03d}.png"), frame)
        frames.append(frame)
    return frames


def _opencv(events: Events, device: str, **kw: float) -> OpenCVCamera:
    fields: dict[str, float | str] = {"sim_fps": 100.0, "reopen_interval_s": 0.05, **kw}
    cfg = CameraConfig.model_validate({"backend": "opencv", "device": device, **fields})
    return OpenCVCamera(cfg, events.sink)


def test_opencv_reads_frames_then_reports_the_end_as_unplugged(
    tmp_path: Path, events: Events
) -> None:
    frames = _write_sequence(tmp_path, 4)
    cam = _opencv(events, str(tmp_path / "f%03d.png"))
    cam.start()
    try:
        assert cam.health().state == "ok"
        # The size the source delivers, not the 640x480 asked for in the configuration.
        assert cam.health().info == {"width": 320, "height": 240}
        first = cam.read(timeout_s=5)
        assert any(np.array_equal(first.image, f) for f in frames)
        with pytest.raises(DeviceDisconnected, match="stopped delivering"):
            for _ in range(10):
                cam.read(timeout_s=5)
        assert cam.health().state == "disconnected"
    finally:
        cam.stop()


def test_opencv_absent_device_then_hot_plug(tmp_path: Path, events: Events) -> None:
    cam = _opencv(events, str(tmp_path / "f%03d.png"))
    cam.start()  # nothing there yet: must not raise
    try:
        assert cam.health().state == "disconnected"
        with pytest.raises(DeviceDisconnected, match="no camera"):
            cam.read()
        _write_sequence(tmp_path, 200)
        wait_for(lambda: cam.health().state == "ok", what="camera appeared and was opened")
        assert cam.read(timeout_s=5).image.shape == (240, 320, 3)
    finally:
        cam.stop()
    assert cam.health().state == "disabled"


def test_opencv_missing_v4l2_device_is_reported_not_raised(events: Events) -> None:
    cam = _opencv(events, "/dev/video63")
    cam.start()
    try:
        assert cam.health().state == "disconnected"
        assert "no camera" in (cam.health().detail or "")
    finally:
        cam.stop()


def test_opencv_read_times_out_when_no_new_frame(tmp_path: Path, events: Events) -> None:
    _write_sequence(tmp_path, 2)
    # One frame per 10 s: the second read cannot get a fresh frame within 0.2 s.
    cam = _opencv(events, str(tmp_path / "f%03d.png"), sim_fps=0.1)
    cam.start()
    try:
        cam.read(timeout_s=5)
        with pytest.raises(DeviceTimeout):
            cam.read(timeout_s=0.2)
        assert cam.health().state == "ok"  # a timeout alone does not drop the camera
    finally:
        cam.stop()


def test_capture_rides_out_late_frames(tmp_path: Path, events: Events) -> None:
    from appliance.drivers.camera.autocapture import auto_capture

    _write_sequence(tmp_path, 3)
    # One frame every 5 s, reads give up after 0.1 s: after the first frame every read is late.
    cam = _opencv(events, str(tmp_path / "f%03d.png"), sim_fps=0.2, read_timeout_s=0.1)
    cam.start()
    try:
        outcome = auto_capture(cam, timeout_s=0.8, min_quality=101)
    finally:
        cam.stop()
    assert outcome.frames == 1
    assert outcome.portrait.met is False
    assert cam.stats()["failures"] >= 1  # late reads happened and were ridden out
