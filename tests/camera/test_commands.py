"""camera.capture / camera.status / camera.snapshot handlers, called with a real
CommandContext on the simulated camera (the MQTT round trip is tested with the daemon)."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from appliance.biometrics.face_record import (
    FaceImageType,
    FaceRecord,
    ImageDataType,
)
from appliance.commands import CommandContext, CommandRegistry, NoArgs
from appliance.drivers.camera.commands import CaptureArgs, SnapshotArgs, register
from appliance.drivers.camera.records import Portrait, PortraitStore
from appliance.drivers.camera.sim import SimCamera
from appliance.errors import Busy, CommandError, DeviceDisconnected

from .conftest import Events, wait_for


def ctx_for(name: str, events: Events, seconds: float = 60.0) -> CommandContext:
    return CommandContext(
        command_id=f"cmd-{name}",
        name=name,
        deadline=time.monotonic() + seconds,
        emit=events.emit,
    )


def run(registry: CommandRegistry, name: str, events: Events, **args: Any) -> dict[str, Any]:
    spec = registry.get(name)
    return spec.handler(ctx_for(name, events), spec.args_model(**args))


@pytest.fixture
def setup(
    make_sim: Callable[..., SimCamera],
) -> tuple[CommandRegistry, SimCamera, PortraitStore]:
    cam = make_sim(guidance_interval_s=0.1)
    cam.start()
    registry = CommandRegistry()
    store = PortraitStore(4, 900.0)
    register(registry, cam, store=store)
    return registry, cam, store


def test_registered_commands(setup: tuple[CommandRegistry, SimCamera, PortraitStore]) -> None:
    registry, _, _ = setup
    assert {"camera.capture", "camera.status", "camera.snapshot"} <= set(registry.names())
    snap = registry.get("camera.snapshot")
    assert snap.role == "technician" and snap.intrusive
    assert registry.get("camera.capture").timeout_s > 120
    assert registry.get("camera.status").args_model is NoArgs


def test_capture_keeps_a_valid_19794_5_record_and_replies_without_pixels(
    setup: tuple[CommandRegistry, SimCamera, PortraitStore], events: Events
) -> None:
    registry, _, store = setup
    reply = run(registry, "camera.capture", events, timeout_s=10)
    assert reply["met"] is True
    assert reply["score"] >= 50 and reply["quality"]["passed"]
    assert reply["frames"] >= 1
    text = json.dumps(reply)
    assert len(text) < 4000 and "base64" not in text
    portrait = store.get(reply["record_id"])
    assert portrait is not None
    assert reply["record"]["bytes"] == len(portrait.record)
    assert reply["record"]["sha256"] == portrait.record_sha256
    record = FaceRecord.decode(portrait.record)
    (face,) = record.images
    assert face.face_image_type == FaceImageType.TOKEN_FRONTAL
    assert face.image_data_type == ImageDataType.JPEG
    assert face.quality == reply["score"]
    assert (face.width, face.height) == (reply["token"]["width"], reply["token"]["height"])
    assert abs(face.width / face.height - 0.75) < 0.01
    jpeg = Image.open(io.BytesIO(face.image))
    assert jpeg.format == "JPEG" and jpeg.size == (face.width, face.height)
    # Eye feature points at the token positions (0.375 W, 0.6 W) and (0.625 W, 0.6 W).
    pts = {(p.major, p.minor): (p.x, p.y) for p in face.feature_points}
    assert pts[(12, 2)] == (round(0.375 * face.width), round(0.6 * face.width))
    assert pts[(12, 1)] == (round(0.625 * face.width), round(0.6 * face.width))
    assert portrait.jpeg2000 is not None
    j2k = Image.open(io.BytesIO(portrait.jpeg2000))
    assert j2k.format == "JPEG2000" and j2k.size == (face.width, face.height)


def test_capture_guides_until_the_citizen_fixes_the_pose(
    make_sim: Callable[..., SimCamera], events: Events
) -> None:
    cam = make_sim(sim_fault="tilted", guidance_interval_s=0.05)
    cam.start()
    registry = CommandRegistry()
    register(registry, cam, store=PortraitStore())
    fixed = threading.Event()

    def emit(kind: str, data: dict[str, Any], durable: bool = True) -> None:
        events.emit(kind, data, durable)
        # The citizen reads the guidance and straightens up.
        if kind == "camera.guidance" and "straighten_head" in data["hints"]:
            cam.set_fault("none")
            fixed.set()

    spec = registry.get("camera.capture")
    ctx = CommandContext("c1", "camera.capture", time.monotonic() + 60, emit)
    reply = spec.handler(ctx, CaptureArgs(timeout_s=20))
    assert fixed.is_set()
    assert reply["met"] is True
    guidance = events.of("camera.guidance")
    assert guidance[0]["failing"] and "roll" in guidance[0]["failing"]
    assert guidance[0]["command_id"] == "c1"
    assert all(not durable for k, _, durable in events.items if k == "camera.guidance")


def test_capture_times_out_with_best_frame_and_rate_limited_guidance(
    make_sim: Callable[..., SimCamera], events: Events
) -> None:
    cam = make_sim(sim_fault="off_centre", guidance_interval_s=0.2, sim_fps=60.0)
    cam.start()
    registry = CommandRegistry()
    store = PortraitStore()
    register(registry, cam, store=store)
    started = time.monotonic()
    reply = run(registry, "camera.capture", events, timeout_s=1.0)
    elapsed = time.monotonic() - started
    assert reply["met"] is False  # best frame returned, and flagged
    assert "position" in reply["quality"]["failing"]
    assert store.get(reply["record_id"]) is not None
    guidance = events.of("camera.guidance")
    assert 1 <= len(guidance) <= elapsed / 0.2 + 1
    assert all("move_left" in g["hints"] for g in guidance)  # the citizen's own left
    assert reply["frames"] >= len(guidance)


def test_capture_without_any_face_is_a_clear_error(
    make_sim: Callable[..., SimCamera], events: Events
) -> None:
    cam = make_sim(sim_fault="no_face")
    cam.start()
    registry = CommandRegistry()
    register(registry, cam)
    with pytest.raises(CommandError) as info:
        run(registry, "camera.capture", events, timeout_s=0.5)
    assert info.value.code == "no_face"
    assert info.value.details["frames"] >= 1
    assert any("look_at_camera" in g["hints"] for g in events.of("camera.guidance"))


def test_capture_when_the_camera_is_pulled(
    make_sim: Callable[..., SimCamera], events: Events
) -> None:
    cam = make_sim(sim_fault="no_face", sim_unplug_after=5)
    cam.start()
    registry = CommandRegistry()
    register(registry, cam)
    with pytest.raises(DeviceDisconnected) as info:
        run(registry, "camera.capture", events, timeout_s=10)
    assert info.value.code == "device_disconnected"
    status = run(registry, "camera.status", events)
    assert status["health"]["state"] == "disconnected"


def test_second_capture_while_one_runs_is_busy(
    make_sim: Callable[..., SimCamera], events: Events
) -> None:
    cam = make_sim(sim_fault="no_face")
    cam.start()
    registry = CommandRegistry()
    register(registry, cam)
    errors: list[BaseException] = []

    def first() -> None:
        try:
            run(registry, "camera.capture", events, timeout_s=1.5)
        except CommandError as exc:
            errors.append(exc)

    t = threading.Thread(target=first)
    t.start()
    wait_for(lambda: run(registry, "camera.status", events)["capturing"], what="capture runs")
    with pytest.raises(Busy):
        run(registry, "camera.capture", events, timeout_s=1)
    with pytest.raises(Busy, match="capture runs"):
        run(registry, "camera.snapshot", events)
    t.join(timeout=30)
    assert errors and isinstance(errors[0], CommandError)


def test_cancelled_capture_stops(make_sim: Callable[..., SimCamera], events: Events) -> None:
    cam = make_sim(sim_fault="no_face")
    cam.start()
    registry = CommandRegistry()
    register(registry, cam)
    spec = registry.get("camera.capture")
    ctx = ctx_for("camera.capture", events)
    ctx.cancelled.set()
    started = time.monotonic()
    with pytest.raises(CommandError):
        spec.handler(ctx, CaptureArgs(timeout_s=30))
    assert time.monotonic() - started < 5


def test_status_reports_health_and_portraits(
    setup: tuple[CommandRegistry, SimCamera, PortraitStore], events: Events
) -> None:
    registry, _, _ = setup
    captured = run(registry, "camera.capture", events, timeout_s=10)
    status = run(registry, "camera.status", events)
    assert status["health"]["state"] == "ok"
    assert status["backend"] == "sim"
    assert status["stats"]["frames"] >= 1
    assert status["capturing"] is False
    assert [p["record_id"] for p in status["portraits"]] == [captured["record_id"]]
    json.dumps(status)


def test_snapshot_is_low_res_and_refused_during_enrollment(
    setup: tuple[CommandRegistry, SimCamera, PortraitStore], events: Events
) -> None:
    registry, cam, _ = setup
    reply = run(registry, "camera.snapshot", events)
    assert (reply["width"], reply["height"]) == (320, 240)
    pixels = cv2.imdecode(
        np.frombuffer(base64.b64decode(reply["jpeg_base64"]), np.uint8), cv2.IMREAD_COLOR
    )
    assert pixels.shape == (240, 320, 3)
    assert reply["quality"]["faces"] == 1
    # A wider request is capped at snapshot_width.
    assert run(registry, "camera.snapshot", events, width=640)["width"] == 320
    cam.enrollment_active = True
    with pytest.raises(Busy, match="enrollment"):
        run(registry, "camera.snapshot", events)
    assert run(registry, "camera.status", events)["enrollment_active"] is True


def test_snapshot_uses_the_enrollment_callable(
    make_sim: Callable[..., SimCamera], events: Events
) -> None:
    cam = make_sim()
    cam.start()
    registry = CommandRegistry()
    active = {"now": False}
    register(registry, cam, enrollment_active=lambda: active["now"])
    run(registry, "camera.snapshot", events, assess=False)
    active["now"] = True
    with pytest.raises(Busy) as info:
        run(registry, "camera.snapshot", events)
    assert info.value.code == "busy" and info.value.details["reason"] == "enrollment_active"


@pytest.mark.parametrize(
    ("model", "payload"),
    [
        (CaptureArgs, {"timeout_s": 0}),
        (CaptureArgs, {"timeout_s": 500}),
        (CaptureArgs, {"min_quality": 101}),
        (CaptureArgs, {"min_quality": "high"}),
        (CaptureArgs, {"bogus": 1}),
        (SnapshotArgs, {"width": 10}),
        (SnapshotArgs, {"width": 4000}),
    ],
)
def test_bad_arguments_are_refused(model: type, payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        model.model_validate(payload)


def test_no_biometric_bytes_in_logs(
    setup: tuple[CommandRegistry, SimCamera, PortraitStore],
    events: Events,
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry, _, store = setup
    with caplog.at_level(logging.DEBUG):
        reply = run(registry, "camera.capture", events, timeout_s=10)
    portrait = store.get(reply["record_id"])
    assert portrait is not None
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert reply["record_id"] in logged
    assert portrait.jpeg[:64].hex() not in logged and "\\xff\\xd8" not in logged
    # No bytes literal in the repr; a hex record id ending in "b" before its quote is not one.
    assert re.search(r"(?<![0-9A-Za-z_])b['\"]", repr(portrait)) is None


def _portrait(rid: str) -> Portrait:
    return Portrait(rid, b"rec", b"jpg", None, 3, 4, 60, True)


def test_portrait_store_bounds_and_expiry() -> None:
    now = [0.0]
    store = PortraitStore(capacity=2, ttl_s=10.0, clock=lambda: now[0])
    for rid in ("a", "b", "c"):
        store.put(_portrait(rid))
    assert store.get("a") is None and len(store) == 2
    taken = store.take("b")
    assert taken is not None and taken.record_id == "b" and store.get("b") is None
    now[0] = 11.0
    assert store.get("c") is None and len(store) == 0
    with pytest.raises(ValueError):
        PortraitStore(capacity=0)


def test_adapters_share_the_portrait_service_and_ask_the_session_state(
    make_sim: Callable[..., SimCamera], events: Events
) -> None:
    """As the daemon wires them: the handlers get the portrait service (shared with the
    enrollment session) and an ``enrollment_active`` callable at registration; nothing comes
    through the command context."""
    from appliance.capabilities import Guidance, Job, PortraitCapture

    cam = make_sim()
    cam.start()
    registry = CommandRegistry()
    service = PortraitCapture(cam)
    store = PortraitStore(4, 60)
    active = {"now": False}
    register(registry, cam, capture=service, store=store, enrollment_active=lambda: active["now"])

    def call(name: str, **args: Any) -> dict[str, Any]:
        spec = registry.get(name)
        ctx = CommandContext(f"c-{name}", name, time.monotonic() + 60, events.emit)
        return spec.handler(ctx, spec.args_model(**args))

    reply = call("camera.capture", timeout_s=10)
    assert store.get(reply["record_id"]) is not None
    # The session's path: the same service, the record in the result, nothing stored.
    seen: list[Guidance] = []
    steps: list[str] = []
    result = service.capture(
        Job.local(15, progress=lambda step, _data: steps.append(step)),
        timeout_s=10,
        on_frame=lambda _frame, guidance: seen.append(guidance),
    )
    # Every frame reaches the live view; the analysed ones (at most one per
    # live_analysis_interval_s) with their guidance, the others without.
    analysed = [g for g in seen if g is not None]
    assert len(analysed) == result.frames and analysed[-1].score == result.score
    assert seen[-1] is analysed[-1]  # the capture ends on an analysed frame
    assert set(steps) <= {"guidance"}
    assert result.record[:4] == b"FAC\x00" and store.get(result.record_id) is None
    result.wipe()
    assert not any(result.record)
    call("camera.snapshot", assess=False)
    active["now"] = True
    with pytest.raises(Busy, match="enrollment"):
        call("camera.snapshot")
    assert call("camera.status")["enrollment_active"] is True
