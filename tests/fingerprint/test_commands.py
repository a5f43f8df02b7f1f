"""fingerprint.capture / fingerprint.status handlers with a real CommandContext, driving the
production driver against the emulator over a pty (the MQTT round trip is tested with the
daemon)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from appliance.biometrics import finger_record as fr
from appliance.commands import CommandContext, CommandRegistry, NoArgs
from appliance.drivers.fingerprint import commands
from appliance.drivers.fingerprint.device import FingerprintSensor
from appliance.drivers.fingerprint.emulator import FingerprintEmulator
from appliance.errors import DeviceDisconnected, DeviceTimeout

from .conftest import Events

MakeEmu = Callable[..., FingerprintEmulator]
MakeDev = Callable[..., tuple[FingerprintSensor, Events]]


class Emitted(list[tuple[str, dict[str, Any], bool]]):
    def __call__(self, kind: str, data: dict[str, Any], durable: bool = True) -> None:
        self.append((kind, data, durable))

    def steps(self) -> list[str]:
        return [d["step"] for k, d, _ in self if k == "command.progress"]


def make_ctx(name: str, timeout_s: float = 30.0) -> tuple[CommandContext, Emitted]:
    emitted = Emitted()
    ctx = CommandContext(
        command_id="c-1",
        name=name,
        deadline=time.monotonic() + timeout_s,
        emit=emitted,
    )
    return ctx, emitted


@pytest.fixture
def setup(
    make_emulator: MakeEmu, make_sensor: MakeDev
) -> tuple[FingerprintEmulator, FingerprintSensor, CommandRegistry]:
    emu = make_emulator("r307")
    dev, _ = make_sensor(emu.path)
    registry = CommandRegistry()
    commands.register(registry, dev)
    return emu, dev, registry


def run(
    registry: CommandRegistry, name: str, payload: dict[str, Any], **ctx_kw: Any
) -> tuple[dict[str, Any], Emitted]:
    spec = registry.get(name)
    ctx, emitted = make_ctx(name, **ctx_kw)
    result = spec.handler(ctx, spec.args_model.model_validate(payload))
    return result, emitted


def test_registered_commands_and_schemas(
    setup: tuple[FingerprintEmulator, FingerprintSensor, CommandRegistry],
) -> None:
    _, _, registry = setup
    assert registry.names() == ["fingerprint.capture", "fingerprint.status"]
    cap = registry.get("fingerprint.capture")
    assert cap.args_model is commands.CaptureArgs and cap.timeout_s > 120
    assert registry.get("fingerprint.status").args_model is NoArgs
    for bad in ({}, {"position": 11}, {"position": 1, "attempts": 0},
                {"position": 1, "timeout_s": 500}, {"position": 1, "min_quality": 101},
                {"position": 1, "colour": "red"}):  # fmt: skip
        with pytest.raises(ValidationError):
            commands.CaptureArgs.model_validate(bad)


def test_capture_good_finger_first_time(
    setup: tuple[FingerprintEmulator, FingerprintSensor, CommandRegistry],
    caplog: pytest.LogCaptureFixture,
) -> None:
    emu, dev, registry = setup
    emu.present_finger(2, "good", after_polls=2)
    caplog.set_level(logging.DEBUG)
    uploads_at_lift: list[int] = []
    emitted_lift = Emitted()

    def emit(kind: str, data: dict[str, Any], durable: bool = True) -> None:
        if data.get("step") == "lift":  # the image is in the sensor, not yet on the line
            uploads_at_lift.append(emu.received["UpImage"])
        emitted_lift(kind, data, durable)

    spec = registry.get("fingerprint.capture")
    ctx = CommandContext("c-1", "fingerprint.capture", time.monotonic() + 30, emit)
    result = spec.handler(ctx, spec.args_model.model_validate({"position": 2, "timeout_s": 5}))
    emitted = emitted_lift
    assert emitted.steps() == ["waiting_for_finger", "lift", "captured", "quality"]
    assert uploads_at_lift == [0] and emu.received["UpImage"] == 1
    # The MQTT command has nothing to compare with: no extraction on the line.
    assert emu.received["Img2Tz"] == 0 and emu.received["UpChar"] == 0
    assert all(not durable for _, _, durable in emitted)
    quality_event = emitted[3][1]
    assert quality_event["score"] == result["quality"] and quality_event["accepted"] is True
    assert result["met_threshold"] and result["attempts_used"] == 1
    assert result["quality"] >= 40 and result["position"] == 2
    assert (result["width"], result["height"]) == (256, 288)
    assert 0 < result["processing_ms"] < 5000
    # The record lives in memory and decodes; its bytes appear in no reply, event or log.
    held = dev.records.get(result["record_id"])
    assert held is not None and held.quality == result["quality"]
    record = fr.decode(held.data)
    assert record.views[0].position == 2 and record.views[0].quality == result["quality"]
    assert record.compression == fr.Compression.PNG
    blob = json.dumps(result) + json.dumps([d for _, d, _ in emitted]) + caplog.text
    assert len(blob) < 4000
    assert held.data[:16].hex() not in blob and "FIR" not in blob


def test_capture_retries_poor_fingers_and_keeps_the_best(
    setup: tuple[FingerprintEmulator, FingerprintSensor, CommandRegistry],
) -> None:
    emu, _, registry = setup
    emu.present_finger(1, "partial")
    emu.present_finger(1, "no_finger")  # the finger is lifted between attempts
    emu.present_finger(1, "low_contrast")
    emu.present_finger(1, "no_finger")
    emu.present_finger(1, "good")
    result, emitted = run(
        registry,
        "fingerprint.capture",
        {"position": 1, "timeout_s": 10, "attempts": 3, "min_quality": 60},
    )
    assert emitted.steps() == [
        "waiting_for_finger", "lift", "captured", "quality", "retry",
        "waiting_for_finger", "lift", "captured", "quality", "retry",
        "waiting_for_finger", "lift", "captured", "quality",
    ]  # fmt: skip
    scores = [d["score"] for _, d, _ in emitted if d.get("step") == "quality"]
    assert scores[0] < scores[1] < scores[2] == result["quality"]
    retry = next(d for _, d, _ in emitted if d.get("step") == "retry")
    assert "SufficientFingerprintForeground" in retry["feedback"]
    assert result["attempts_used"] == 3 and result["met_threshold"]


def test_capture_returns_the_best_even_below_threshold(
    setup: tuple[FingerprintEmulator, FingerprintSensor, CommandRegistry],
) -> None:
    emu, _, registry = setup
    emu.present_finger(3, "low_contrast")
    emu.present_finger(3, "no_finger")
    emu.present_finger(3, "partial")
    result, emitted = run(
        registry,
        "fingerprint.capture",
        {"position": 3, "timeout_s": 10, "attempts": 2, "min_quality": 95},
    )
    scores = [d["score"] for _, d, _ in emitted if d.get("step") == "quality"]
    assert result["quality"] == max(scores) == scores[0]
    assert result["met_threshold"] is False and result["min_quality"] == 95


def test_capture_without_a_finger_times_out(
    setup: tuple[FingerprintEmulator, FingerprintSensor, CommandRegistry],
) -> None:
    _, dev, registry = setup
    with pytest.raises(DeviceTimeout) as err:
        run(registry, "fingerprint.capture", {"position": 1, "timeout_s": 0.3})
    assert err.value.code == "no_finger" and err.value.retryable
    assert len(dev.records) == 0


def test_capture_stops_when_cancelled(
    setup: tuple[FingerprintEmulator, FingerprintSensor, CommandRegistry],
) -> None:
    _, _, registry = setup
    spec = registry.get("fingerprint.capture")
    ctx, _ = make_ctx("fingerprint.capture")
    threading.Timer(0.2, ctx.cancelled.set).start()
    t0 = time.monotonic()
    with pytest.raises(DeviceTimeout) as err:
        spec.handler(ctx, commands.CaptureArgs(position=1, timeout_s=30))
    assert err.value.code == "cancelled" and time.monotonic() - t0 < 5


def test_status_reports_health_and_counts(
    setup: tuple[FingerprintEmulator, FingerprintSensor, CommandRegistry],
) -> None:
    emu, _, registry = setup
    emu.library[0] = bytes(512)
    result, _ = run(registry, "fingerprint.status", {})
    assert result["health"]["state"] == "ok"
    assert result["templates"] == 1 and result["records_held"] == 0
    assert result["sensor"]["model"] == "r307" and result["sensor"]["baud"] == 57600
    json.dumps(result)  # JSON-ready


def test_status_and_capture_while_unplugged(
    setup: tuple[FingerprintEmulator, FingerprintSensor, CommandRegistry],
) -> None:
    emu, _, registry = setup
    emu.unplug()
    with pytest.raises(DeviceDisconnected):
        run(registry, "fingerprint.capture", {"position": 1, "timeout_s": 1})
    result, _ = run(registry, "fingerprint.status", {})
    assert result["health"]["state"] == "disconnected" and result["templates"] is None


def test_record_store_bounds_and_wipes() -> None:
    from appliance.drivers.fingerprint.records import FingerRecordStore

    store = FingerRecordStore(max_records=2, ttl_s=60)
    a = store.put(b"a" * 10, position=1, quality=50, compression="raw")
    held_a = store.get(a)
    assert held_a is not None
    store.put(b"b" * 10, position=2, quality=50, compression="raw")
    store.put(b"c" * 10, position=3, quality=50, compression="raw")
    assert store.get(a) is None and len(store) == 2
    assert held_a.data == bytes(10)  # evicted bytes are overwritten
    taken = store.take(store.ids()[0])
    assert taken is not None and taken.data == b"b" * 10 and len(store) == 1
    assert "data" not in taken.describe() and taken.describe()["size"] == 10
    expired = FingerRecordStore(ttl_s=60)
    rid = expired.put(b"x", position=0, quality=0, compression="raw")
    old = expired.get(rid)
    assert old is not None
    old.created_at -= 61  # as if captured a minute ago
    assert expired.get(rid) is None and old.data == b"\x00"


def test_a_second_capture_is_refused_while_one_runs_and_status_stays_quick(
    setup: tuple[FingerprintEmulator, FingerprintSensor, CommandRegistry],
) -> None:
    from appliance.errors import Busy
    from tests.helpers import wait_for

    emu, dev, registry = setup
    spec = registry.get("fingerprint.capture")
    ctx, _ = make_ctx("fingerprint.capture")
    outcome: dict[str, Any] = {}

    def first() -> None:
        outcome["result"] = spec.handler(ctx, commands.CaptureArgs(position=1, timeout_s=20))

    worker = threading.Thread(target=first)
    worker.start()
    try:
        wait_for(lambda: dev.busy, 5, "the first capture to hold the sensor")
        with pytest.raises(Busy) as err:
            run(registry, "fingerprint.capture", {"position": 2, "timeout_s": 1})
        assert err.value.retryable
        t0 = time.monotonic()
        status, _ = run(registry, "fingerprint.status", {})
        assert time.monotonic() - t0 < 1.0
        assert status["sensor"]["busy"] is True and status["templates"] is None
        emu.present_finger(1, "good")
    finally:
        worker.join(timeout=20)
    assert outcome["result"]["met_threshold"] is True
    assert not dev.busy
