"""The kiosk builds its package manifest with the wire contract's model
(appliance/protocol/package.py ``Manifest``, the one the centre parses): a manifest the centre
would refuse is refused at the kiosk, naming the field, before anything is signed or queued, and
the session is kept so nothing is lost.

The simulated camera and the sensor emulator on a pty behind the production drivers (the kit
of tests/station/test_officer_recorded.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.capabilities import Job
from appliance.central.verify import verify_package
from appliance.errors import CommandError
from appliance.station.backend import Backend
from tests.station.test_officer_recorded import DEVICE, OFFICER, Kit

_OPERATOR_KEY = "enrollment.operator."  # appliance/enrollment/session.py


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = Kit(tmp_path)
    yield k
    k.close()


def test_a_manifest_the_centre_would_refuse_is_refused_at_the_kiosk(kit: Kit) -> None:
    manager = kit.manager()
    backend = Backend(manager=manager, lookup=None)
    backend.start("CIT-MODEL-1", [], False, OFFICER)
    session = manager.active()
    assert session is not None
    backend.portrait(lambda *_a: None, lambda *_a: None, timeout_s=20)
    for position in manager.review(job=Job.local(10))["remaining"]:
        backend.skip(position, "missing", "")
    # An officer id the contract's pattern refuses (a topic-unsafe id in stored state).
    kit.store.kv_set(
        _OPERATOR_KEY + session.id, json.dumps({"officer_id": "can bo/01", "name": "X"})
    )
    with pytest.raises(CommandError) as info:
        manager.finish(job=Job.local(10))
    assert info.value.code == "package_malformed"
    assert "station.officer.officer_id" in info.value.message
    assert info.value.details == {"field": "station.officer.officer_id"}
    # Nothing signed, queued or lost: the session is still open with its records.
    assert kit.packages == []
    assert list((kit.tmp / "state" / "outgoing").glob("*.pkg")) == []
    active = manager.active()
    assert active is not None and active.id == session.id
    kit.store.kv_set(
        _OPERATOR_KEY + session.id, json.dumps({"officer_id": "can-bo-01", "name": "X"})
    )
    finished = manager.finish(job=Job.local(10))
    (package_id,) = kit.packages
    data = (kit.tmp / "state" / "outgoing" / f"{package_id}.pkg").read_bytes()
    verified = verify_package(
        data,
        device_id=DEVICE,
        device_public_key=kit.identity.public_key,
        enrollment_key=kit.key,
        package_id=finished["package_id"],
    )
    assert verified.summary()["station"]["officer"]["officer_id"] == "can-bo-01"
