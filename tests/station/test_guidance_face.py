"""The preview's guidance carries the face box (camera pixels) and the frame size, so that the
screen can draw the box; no face, no box."""

from __future__ import annotations

from appliance.capabilities import Guidance
from appliance.drivers.camera import scene
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
