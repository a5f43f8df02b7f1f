"""The officer who runs an attended enrollment is recorded in the signed package, whatever the
exceptions, and a restart in between keeps it: the station's backend starts the session with
the signed-in officer, a new manager on the same SQLite state (the daemon after a power cut)
finishes it, and the centre's verifier reads the officer from the verified manifest.

The simulated camera and the sensor emulator on a pty behind the production drivers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.capabilities import FingerCapture, PortraitCapture
from appliance.central.verify import verify_package
from appliance.drivers.camera.config import CameraConfig
from appliance.drivers.camera.sim import SimCamera
from appliance.drivers.fingerprint.config import FingerprintConfig
from appliance.drivers.fingerprint.device import FingerprintSensor
from appliance.drivers.fingerprint.emulator import FingerprintEmulator
from appliance.enrollment.session import EnrollmentManager
from appliance.station.backend import Backend
from appliance.store import Store
from appliance.trust.keys import DeviceIdentity
from appliance.trust.sealed import EnrollmentKeyPair

BAUD = 115200
DEVICE = "kiosk-officer-rec"
OFFICER = {"id": "can-bo-01", "name": "Trần Văn Cán", "supervisor": False}


class Kit:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.emu = FingerprintEmulator("r307", pace=False, baud=BAUD)
        self.emu.start_pty()
        self.sensor = FingerprintSensor(
            FingerprintConfig(port=str(self.emu.path), baud=BAUD, capture_poll_s=0.0)
        )
        self.sensor.start()
        self.camera = SimCamera(
            CameraConfig(backend="sim", sim_fps=60.0, reopen_interval_s=0.05),
            lambda *_a, **_kw: None,
        )
        self.camera.start()
        self.key = EnrollmentKeyPair.generate()
        self.identity = DeviceIdentity.load_or_create(tmp / "state")
        self.store = Store(tmp / "state")
        self.packages: list[str] = []

    def manager(self) -> EnrollmentManager:
        """A manager on the kit's state, as the daemon builds one at each start."""
        return EnrollmentManager(
            store=self.store,
            state_dir=self.tmp / "state",
            device_id=DEVICE,
            identity=self.identity,
            portraits=PortraitCapture(self.camera),
            fingers=FingerCapture(self.sensor),
            enrollment_key=self.key.public_key,
            emit=lambda *_a, **_kw: None,
            resume_s=600,
            on_package=self.packages.append,
        )

    def close(self) -> None:
        self.camera.stop()
        self.sensor.stop()
        self.emu.stop()
        self.store.close()


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = Kit(tmp_path)
    yield k
    k.close()


def _enroll(kit: Kit, officer: dict[str, Any] | None) -> dict[str, Any]:
    """Start with ``officer``, restart, capture the portrait and every finger but one (skipped
    with its reason), finish; the centre's verified manifest summary."""
    backend = Backend(manager=kit.manager(), lookup=None)
    backend.start("CIT-OFF-1", [], False, officer)
    manager = kit.manager()  # the daemon restarted: same SQLite state, new objects
    manager.recover()
    backend = Backend(manager=manager, lookup=None)
    assert backend.active_session() is not None
    backend.portrait(lambda *_a: None, lambda *_a: None, timeout_s=20)
    remaining = manager.review(job=_job())["remaining"]
    first, *rest = remaining
    kit.emu.present_finger(1, "good", after_polls=1)
    try:
        backend.finger(first, lambda *_a: None, timeout_s=20)
    finally:
        kit.emu.remove_finger()
    for position in rest:
        backend.skip(position, "missing", "")
    finished = backend.finish()
    (package_id,) = kit.packages
    data = (kit.tmp / "state" / "outgoing" / f"{package_id}.pkg").read_bytes()
    verified = verify_package(
        data,
        device_id=DEVICE,
        device_public_key=kit.identity.public_key,
        enrollment_key=kit.key,
        package_id=finished["package_id"],
    )
    return verified.summary()


def _job() -> Any:
    from appliance.capabilities import Job

    return Job.local(10)


def test_the_officer_is_in_the_verified_manifest_after_a_restart(kit: Kit) -> None:
    summary = _enroll(kit, OFFICER)
    assert summary["station"] == {
        "mode": "attended",
        "officer": {"officer_id": "can-bo-01", "name": "Trần Văn Cán"},
    }
    # Nothing about the officer is left in the kiosk's state once the package is built.
    with kit.store.lock:
        rows = kit.store.conn.execute(
            "SELECT key FROM kv WHERE key LIKE 'enrollment.operator.%'"
        ).fetchall()
    assert rows == []


def test_a_self_service_enrollment_names_no_officer(kit: Kit) -> None:
    assert _enroll(kit, None)["station"] is None


def test_an_attended_manifest_without_its_officer_is_refused_naming_the_field(
    tmp_path: Path,
) -> None:
    import json

    from appliance.central.package import parse_manifest
    from appliance.central.testkit import build_package, standard_records
    from appliance.errors import TrustError

    built = build_package(
        DeviceIdentity.create(tmp_path / "k"),
        EnrollmentKeyPair.generate().public_key,
        device=DEVICE,
        records=standard_records((2,)),
    )
    good = {**built.manifest, "station": {"mode": "attended", "officer": {"officer_id": "a-1"}}}
    assert parse_manifest(json.dumps(good).encode()).station is not None
    bad = {**built.manifest, "station": {"mode": "attended"}}
    with pytest.raises(TrustError) as info:
        parse_manifest(json.dumps(bad).encode())
    assert info.value.code == "package_malformed" and "station" in info.value.message
