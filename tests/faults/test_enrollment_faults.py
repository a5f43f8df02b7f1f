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
