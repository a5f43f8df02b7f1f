"""The preview's guidance carries the face box (camera pixels) and the frame size, so that the
screen can draw the box; no face, no box. The preview gets every frame, the analysis runs at
its own rate."""

from __future__ import annotations

import time
from typing import Any, cast

from appliance.capabilities import Guidance
from appliance.drivers.camera import scene
from appliance.drivers.camera.autocapture import auto_capture
from appliance.drivers.camera.config import CameraConfig
from appliance.drivers.camera.interface import Frame
from appliance.drivers.camera.quality import assess


def test_guidance_has_the_face_box_around_the_eyes_and_the_frame_size() -> None:
    frame, truth = scene.render(640, 480, "off_centre", 0)
    g = Guidance.from_report(assess(frame), 7).to_dict()
    assert g["frame"] == 7 and g["frame_size"] == [640, 480]
    box = g["face"]
    assert set(box) == {"x", "y", "w", "h"} and box["w"] > 0 and box["h"] > 0
    assert box["x"] + box["w"] <= 640 and box["y"] + box["h"] <= 480
    for x, y in truth.eyes[0]:
        assert box["x"] < x < box["x"] + box["w"] and box["y"] < y < box["y"] + box["h"]


def test_guidance_without_a_face_has_no_box() -> None:
    frame, _truth = scene.render(640, 480, "no_face", 0)
    g = Guidance.from_report(assess(frame), 0).to_dict()
    assert "face" not in g and "frame_size" not in g
    assert "look_at_camera" in g["hints"]


def test_a_live_view_gets_every_frame_while_the_analysis_runs_at_its_own_rate() -> None:
    """Issue 15's preview rate: with an analysis interval, every frame the camera delivers
    reaches the live view and only one per interval is analysed (the capture's own clock, a
    fake one here, decides); without one every frame is analysed, as camera.capture does."""
    image, _truth = scene.render(640, 480, "none", 0)

    class Camera:
        config = CameraConfig(backend="sim")
        reads = 0

        def read(self, timeout_s: float | None = None) -> Frame:
            self.reads += 1
            return Frame(image=image, index=self.reads, timestamp=time.monotonic())

    def run(interval: float, timeout_s: float) -> tuple[Camera, list[Any], Any]:
        ticks = [0.0]

        def clock() -> float:
            ticks[0] += 0.01
            return ticks[0]

        cam, seen = Camera(), []
        outcome = auto_capture(
            cast(Any, cam),
            timeout_s=timeout_s,
            min_quality=101,  # never met: the capture runs to its deadline
            clock=clock,
            on_frame=lambda _frame, report: seen.append(report),
            analysis_interval_s=interval,
        )
        return cam, seen, outcome

    cam, seen, outcome = run(0.2, 1.0)
    analysed = [r for r in seen if r is not None]
    assert len(seen) == cam.reads  # every frame read reached the live view
    assert outcome.frames == len(analysed) and 4 <= len(analysed) <= 6  # ~1 s / 0.2 s
    assert len(seen) >= 5 * len(analysed)
    cam, seen, outcome = run(0.0, 0.1)
    assert None not in seen and outcome.frames == len(seen) == cam.reads
