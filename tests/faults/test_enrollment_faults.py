"""Fault injection on the enrollment flow, the bounded CI version of
bench/enrollment_faults.py (issue 8 item 2): the daemon on the simulated kit, the real central
receiver, scripted enrollments, and ``kill -9`` of the daemon at seeded random points of a
capture, of ``enrollment.finish`` and of the upload. Afterwards every package the kiosk
reported finished is verified exactly once at the centre, nothing is corrupted, the kiosk's
SQLite passes ``PRAGMA integrity_check``, no sealed record or package is left after the
receipts, and no plaintext biometric is on disk."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.devtools.broker import Mosquitto
from tests.helpers import get_json

from .rig import PHASES, EnrollmentFaultRig


@pytest.fixture
def rig(tmp_path: Path, broker: Mosquitto) -> Iterator[EnrollmentFaultRig]:
    r = EnrollmentFaultRig(tmp_path, broker)
    try:
        yield r.start()
    finally:
        r.close()


def test_kill9_during_captures_finish_and_uploads_loses_nothing(
    rig: EnrollmentFaultRig,
) -> None:
    rnd = random.Random(8)
    for phase in PHASES:  # each phase once for sure, then two seeded draws
        rnd.seed(f"{phase}-8")
        rig.round_with_kill_in(phase, rnd)
    for _ in range(2):
        rig.round_with_kill(rnd)
    rig.settle()
    # One clean enrollment after the storm: the kiosk still serves.
    assert rig.drive() is not None
    rig.settle()
    report = rig.check()
    assert report["kills"] == 5
    assert report["packages_reported_finished"] >= 1, report
    assert report["lost"] == 0, report
    assert report["duplicated"] == 0, report
    assert report["unexpected_at_central"] == 0, report
    assert report["corrupted"] == 0, report
    assert report["uploads_not_purged"] == 0, report
    assert report["sessions_left_active"] == 0, report
    assert report["integrity_check"] == "ok"
    assert report["sealed_left"] == [] and report["outgoing_left"] == [], report
    assert report["plaintext_files"] == [], report


def test_sensor_unplugged_during_a_capture_is_a_clear_error_and_the_kiosk_keeps_serving(
    tmp_path: Path, broker: Mosquitto
) -> None:
    rig = EnrollmentFaultRig(tmp_path, broker, device="kiosk-enr-unplug", external_sensor=True)
    try:
        rig.start()
        sensor = rig.sensor
        assert sensor is not None
        dev = rig.device
        health = rig.ctl.subscribe(f"kiosk/{dev}/events/device.health")
        progress = rig.ctl.subscribe(f"kiosk/{dev}/events/command.progress")
        ok = rig.ctl.request(
            dev, "enrollment.start", {"citizen_ref": "CIT-U-1", "finger_policy": [2, 7]}
        )
        assert ok["ok"], ok
        assert rig.ctl.request(dev, "enrollment.portrait", {"timeout_s": 20}, timeout=60)["ok"]
        replies = rig.ctl.send(dev, "enrollment.finger", {"position": 2, "attempts": 1})
        # The capture has begun (GenImg polling, then the image paced at 57,600 baud).
        get_json(progress, 30, lambda m: m["data"]["step"] == "waiting_for_finger")
        sensor.unplug()
        reply = replies.get(timeout=60)  # an answer, never a hang
        assert reply["ok"] is False, reply
        assert reply["error"]["code"] in ("device_disconnected", "device_timeout"), reply
        assert reply["error"]["message"], reply
        get_json(
            health,
            30,
            lambda m: m["data"]["device"] == "fingerprint" and m["data"]["state"] != "ok",
        )
        # The daemon keeps serving while the sensor is away, and says so.
        st = rig.ctl.request(dev, "status")
        assert st["ok"] and st["result"]["devices"]["fingerprint"]["state"] != "ok", st
        review = rig.ctl.request(dev, "enrollment.review")["result"]
        assert review["remaining"] == [2, 7]  # nothing half-recorded
        sensor.replug()
        get_json(
            health,
            30,
            lambda m: m["data"]["device"] == "fingerprint" and m["data"]["state"] == "ok",
        )
        # The session carries on to a verified package.
        pid = rig.drive()
        assert pid is not None
        rig.settle()
        report = rig.check()
        assert report["packages_verified"] == 1 and report["lost"] == 0, report
        assert report["corrupted"] == 0 and report["integrity_check"] == "ok", report
        assert report["sealed_left"] == [] and report["plaintext_files"] == [], report
    finally:
        rig.close()
