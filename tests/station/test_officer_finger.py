"""An officer's finger templates from the configuration reach the capture through the station's
backend: the citizen's finger that matches one is refused (``officer_finger``) and the position
stays to do. The production driver and the emulator on a pty; the sensor does the 1:1 match."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.capabilities import OFFICER_FINGER, FingerCapture, Job
from appliance.config import validate
from appliance.drivers.fingerprint.config import FingerprintConfig
from appliance.drivers.fingerprint.device import FingerprintSensor
from appliance.drivers.fingerprint.emulator import FingerprintEmulator
from appliance.enrollment.session import EnrollmentManager
from appliance.errors import CommandError
from appliance.station.backend import Backend
from appliance.station.officers import hash_secret, officer_templates
from appliance.store import Store
from appliance.trust.keys import DeviceIdentity
from appliance.trust.sealed import EnrollmentKeyPair

BAUD = 115200


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[tuple[FingerprintEmulator, FingerCapture, Backend]]:
    emu = FingerprintEmulator("r307", pace=False, baud=BAUD)
    emu.start_pty()
    sensor = FingerprintSensor(FingerprintConfig(port=str(emu.path), baud=BAUD, capture_poll_s=0.0))
    sensor.start()
    store = Store(tmp_path / "state")
    fingers = FingerCapture(sensor)
    manager = EnrollmentManager(
        store=store,
        state_dir=tmp_path / "state",
        device_id="kiosk-officer",
        identity=DeviceIdentity.load_or_create(tmp_path / "state"),
        portraits=None,
        fingers=fingers,
        enrollment_key=EnrollmentKeyPair.generate().public_key,
        emit=lambda *_a, **_kw: None,
        resume_s=600,
        on_package=lambda _pid: None,
    )
    yield emu, fingers, Backend(manager=manager, lookup=None)
    sensor.stop()
    emu.stop()
    store.close()


def test_the_signed_in_officers_finger_is_refused_as_the_citizens(
    kit: tuple[FingerprintEmulator, FingerCapture, Backend],
) -> None:
    emu, fingers, backend = kit
    # The fleet enrolled the officer's left index on this sensor model: its template travels
    # base64 in the signed configuration.
    emu.present_finger(9, "good")
    taken = fingers.capture(Job.local(30), position=7, attempts=1, timeout_s=20, template=True)
    emu.remove_finger()
    assert taken.template is not None
    encoded = base64.b64encode(bytes(taken.template)).decode()
    taken.wipe()
    cfg = validate(
        {
            "station": {
                "officers": [
                    {
                        "id": "can-bo-01",
                        "name": "Trần Văn Cán",
                        "secret_hash": hash_secret("2468"),
                        "expires": time.time() + 60,
                        "templates": [encoded],
                    }
                ]
            }
        }
    )
    assert cfg.redacted()["station"]["officers"][0]["templates"] == ["<redacted>"]
    backend.start("CIT-OFF-1", [], False)
    progress: list[tuple[str, Any]] = []

    def capture(finger_id: int) -> dict[str, Any]:
        refuse = officer_templates(cfg.station.officers, "can-bo-01")
        emu.present_finger(finger_id, "good", after_polls=1)
        try:
            return backend.finger(2, lambda s, d: progress.append((s, d)), 30, refuse=refuse)
        finally:
            emu.remove_finger()
            assert all(not any(r.template) for r in refuse)  # wiped after the capture

    with pytest.raises(CommandError) as refused:
        capture(9)  # the officer puts their own finger on the sensor
    assert refused.value.code == OFFICER_FINGER
    assert backend.review()["remaining"][0] == 2  # refused, not lost
    assert capture(2)["position"] == 2  # the citizen's own finger passes
    assert ("lift", {"attempt": 1, "position": 2}) in progress


def test_officer_templates_must_be_base64() -> None:
    from appliance.errors import ConfigError

    entry = {"id": "a", "name": "A", "secret_hash": hash_secret("1"), "expires": 1.0}
    with pytest.raises(ConfigError) as bad:
        validate({"station": {"officers": [{**entry, "templates": ["not base64!"]}]}})
    assert any(p.startswith("station.officers.0.templates") for p, _ in bad.value.problems)
