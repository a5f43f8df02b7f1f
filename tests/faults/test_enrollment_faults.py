"""Fault injection on the enrollment flow, the bounded CI version of
bench/enrollment_faults.py (issue 8 item 2): the daemon on the simulated kit, the real central
receiver, scripted enrollments, and ``kill -9`` of the daemon at seeded random points of a
capture, of ``enrollment.finish`` and of the upload. Afterwards every package the kiosk
reported finished is verified exactly once at the centre, nothing is corrupted, the kiosk's
SQLite passes ``PRAGMA integrity_check``, no sealed record or package is left after the
receipts, and no plaintext biometric is on disk.

Also: the fingerprint sensor unplugged in the middle of an enrollment capture (a clear error,
a health change, the daemon keeps serving, the session carries on after the replug), and the
card pulled in the middle of ``card.encode`` (reported as a spoiled card at the step where the
write broke off, never as issued), once through ``appliance fleet issue`` and then at three
points in a row (before the first write, during a write, during the read-back), each followed by
the sim kit inserting a new blank card."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.devtools.broker import Mosquitto
from appliance.devtools.fleetkit import FleetKit
from tests.helpers import ROOT, get_json

from .cardpull import PULL_ERRORS, CardPuller, PullPoint
from .rig import PHASES, EnrollmentFaultRig


@pytest.fixture
def broker(tls_broker: Mosquitto) -> Mosquitto:
    """The production broker: mutual TLS, the shipped ACL."""
    return tls_broker


@pytest.fixture
def rig(tmp_path: Path, broker: Mosquitto, fleet_kit: FleetKit) -> Iterator[EnrollmentFaultRig]:
    r = EnrollmentFaultRig(tmp_path, broker, kit=fleet_kit)
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
    tmp_path: Path, broker: Mosquitto, fleet_kit: FleetKit
) -> None:
    rig = EnrollmentFaultRig(
        tmp_path, broker, device="kiosk-enr-unplug", kit=fleet_kit, external_sensor=True
    )
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


def _card_emulator_pid(rig: EnrollmentFaultRig) -> int:
    """The sim kit's card emulator (a child of the daemon), from the daemon's log line."""
    found = re.findall(r"card emulator pid (\d+)", rig.daemon.log())
    assert found, "the daemon did not start the card emulator"
    return int(found[-1])


def test_card_pulled_during_encode_is_never_reported_issued(
    tmp_path: Path, broker: Mosquitto, fleet_kit: FleetKit
) -> None:
    rig = EnrollmentFaultRig(tmp_path, broker, device="kiosk-enr-pull", kit=fleet_kit, card=True)
    try:
        rig.start()
        dev = rig.device
        assert rig.drive() is not None
        rig.settle()
        progress = rig.ctl.subscribe(f"kiosk/{dev}/events/command.progress")
        issue = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "appliance.central.issuecli",
                dev,
                "--citizen-ref",
                "CIT-F-0001",
                "--synthetic",
                "--ds-dir",
                str(rig.daemon.state_dir / "sim" / "pki"),
                "--home",
                str(rig.home),
                *fleet_kit.flags(broker.port)[2:],
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            # The portrait (DG2, the largest file, many APDUs) is being written: the citizen
            # pulls the card out now (the emulator's vpcd connection ends, as when the card
            # leaves the field). The kill lands a little later than the progress event, so on
            # a loaded machine the encoder may have reached a later writing step.
            get_json(
                progress,
                60,
                lambda m: (
                    m["data"]["command"] == "card.encode" and m["data"]["step"] == "write:DG2"
                ),
            )
            os.kill(_card_emulator_pid(rig), signal.SIGKILL)
            out, err = issue.communicate(timeout=90)  # an answer, never a hang
        finally:
            if issue.poll() is None:
                issue.kill()
                issue.communicate()
        assert issue.returncode == 1, out + err
        result = json.loads(out)
        assert result["outcome"] != "issued", result
        assert result["error"]["code"] and result["error"]["message"], result
        # The write broke off mid-card: reported as a spoiled card naming the step, so the
        # operator takes a new blank; the reader itself stays healthy (nothing is wrong with
        # it), and the daemon keeps answering.
        assert result["outcome"] == "failed", result
        assert result["error"]["code"] == "card_spoiled", result
        # Any step after the first write (docs/card.md, "Spoiled card"): on a loaded machine the
        # kill may land as late as the read-back.
        step = result["error"]["details"]["step"]
        assert step.startswith(("write:", "verify:")) or step in ("put_data:bac_seed", "lock"), (
            result
        )
        st = rig.ctl.request(dev, "status")
        assert st["ok"] and st["result"]["devices"]["card"]["state"] == "ok", st
        assert rig.ctl.request(dev, "card.status")["ok"]
        report = rig.check()
        assert report["plaintext_files"] == [] and report["integrity_check"] == "ok", report
    finally:
        rig.close()


# Steps of card.encode before anything is written to the card (docs/card.md).
BEFORE_THE_FIRST_WRITE = ("wait_card", "check_blank", "select_application")


def test_card_pulled_at_three_points_then_reinserted_is_never_issued_and_the_kiosk_recovers(
    tmp_path: Path, broker: Mosquitto, fleet_kit: FleetKit
) -> None:
    rig = EnrollmentFaultRig(tmp_path, broker, device="kiosk-enr-pulls", kit=fleet_kit, card=True)
    try:
        rig.start()
        puller = CardPuller(rig)
        puller.prepare()
        points = [
            PullPoint(None, 0.0),  # as the command leaves: before the encode's first APDU
            PullPoint("write:DG2", 0.0),  # the portrait is being written
            PullPoint("verify:read", 0.0),  # the read-back
        ]
        for point in points:
            out = puller.encode_with_pull(point)
            assert out.outcome != "hung", out
            if out.issued:  # the encode finished before the card left: verified, then
                assert out.reply_pa_passed, out
                assert out.readback_passed or out.outcome == "issued_pull_after_last_apdu", out
            else:
                assert out.outcome in PULL_ERRORS, out
                assert out.step, out  # the error names where the encode stopped
                # spoiled exactly when something had been written
                assert (out.outcome == "card_spoiled") == (
                    out.step not in BEFORE_THE_FIRST_WRITE
                ), out
            # The sim kit inserted the next blank card; the kiosk answers, the reader is fine.
            assert out.reinserted, out
            assert out.status_ok and out.card_status_ok and out.health_ok, out
        # A clean encode onto the fresh card is issued, and a relying party's read verifies it.
        _line, reply = puller.timeline()
        assert reply["ok"] and reply["result"]["outcome"] == "issued", reply
        assert reply["result"]["passive_authentication"]["passed"] is True, reply
        assert puller.read_back()
        report = rig.check()
        assert report["integrity_check"] == "ok" and report["plaintext_files"] == [], report
        assert report["orphaned_emulators"] == 0, report
        assert report["lost"] == 0 and report["corrupted"] == 0, report
    finally:
        rig.close()
