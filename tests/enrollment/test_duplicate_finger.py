"""The same finger twice in one session is refused, and so is the officer's own finger
(issue 16, "Duplicates"): the enrollment manager over the finger service, the production
driver and the emulator on a pty, the 1:1 match done by the sensor (Match, 0x03) on the wire.
No MQTT here: the manager is called as the kiosk's local screen calls it, with a Job."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.capabilities import (
    DUPLICATE_FINGER,
    OFFICER_FINGER,
    FingerCapture,
    Job,
    ReferenceTemplate,
)
from appliance.drivers.fingerprint.config import FingerprintConfig
from appliance.drivers.fingerprint.device import FingerprintSensor
from appliance.drivers.fingerprint.emulator import FingerprintEmulator
from appliance.enrollment.session import CancelArgs, EnrollmentManager, FingerArgs, StartArgs
from appliance.errors import CommandError
from appliance.store import Store
from appliance.trust.keys import DeviceIdentity
from appliance.trust.sealed import EnrollmentKeyPair

# The kit's sensor at its fastest standard rate: a paced UpImage is about 3.5 s on the line.
BAUD = 115200


class Kit:
    def __init__(self, tmp: Path, *, pace: bool) -> None:
        self.emu = FingerprintEmulator("r307", pace=pace, baud=BAUD)
        self.emu.start_pty()
        self.sensor = FingerprintSensor(
            FingerprintConfig(port=str(self.emu.path), baud=BAUD, capture_poll_s=0.0)
        )
        self.sensor.start()
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.store = Store(tmp / "state")
        self.fingers = FingerCapture(self.sensor)
        self.manager = EnrollmentManager(
            store=self.store,
            state_dir=tmp / "state",
            device_id="kiosk-dup",
            identity=DeviceIdentity.load_or_create(tmp / "state"),
            portraits=None,
            fingers=self.fingers,
            enrollment_key=EnrollmentKeyPair.generate().public_key,
            emit=lambda kind, data, **_kw: self.events.append((kind, data)),
            resume_s=600,
            on_package=lambda _pid: None,
        )

    def finger(self, position: int, finger_id: int, **kw: Any) -> dict[str, Any]:
        """The citizen lays ``finger_id`` on the sensor and the kiosk captures ``position``
        (the session first sees the sensor empty: the previous finger was lifted)."""
        self.emu.present_finger(finger_id, "good", after_polls=1)
        try:
            return self.manager.finger(
                FingerArgs(position=position, attempts=1, timeout_s=30), job=Job.local(60), **kw
            )
        finally:
            self.emu.remove_finger()

    def close(self) -> None:
        self.sensor.stop()
        self.emu.stop()
        self.store.close()


@pytest.fixture
def make_kit(tmp_path: Path) -> Iterator[Callable[..., Kit]]:
    made: list[Kit] = []

    def make(*, pace: bool) -> Kit:
        kit = Kit(tmp_path / str(len(made)), pace=pace)
        made.append(kit)
        return kit

    yield make
    for kit in made:
        kit.close()


def test_same_finger_for_two_positions_is_refused_on_the_sensor_at_line_rate(
    make_kit: Callable[..., Kit],
) -> None:
    kit = make_kit(pace=True)
    kit.manager.start(StartArgs(citizen_ref="CIT-DUP-1", finger_policy=[2, 3]), job=Job.local(10))
    first = kit.finger(2, finger_id=5)
    assert first["position"] == 2
    matches_before = kit.emu.received["Match"]
    packet_size_changes = kit.emu.received["SetSysPara"]
    with pytest.raises(CommandError) as refused:
        kit.finger(3, finger_id=5)  # the right index again, for the right middle
    err = refused.value
    assert err.code == DUPLICATE_FINGER and err.retryable
    assert err.details == {"position": 3, "matches_position": 2}
    assert "finger 3" in err.message and "finger 2" in err.message
    # The sensor did the 1:1 match: the probe and the reference went down, Match answered.
    assert kit.emu.received["Match"] == matches_before + 1
    assert kit.emu.received["DownChar"] >= 2
    # R307 takes DownChar only in 32-byte packets: one switch there and back for the batch.
    assert kit.emu.received["SetSysPara"] == packet_size_changes + 2
    # Refused, not lost: the position is still to do, and another finger passes.
    assert kit.manager.status()["active"]["remaining"] == [3]
    assert ("enrollment.progress", "finger_refused") in [(k, d.get("step")) for k, d in kit.events]
    second = kit.finger(3, finger_id=6)
    assert second["position"] == 3
    assert kit.manager.review(job=Job.local(5))["remaining"] == []


def test_officer_finger_refused_and_templates_wiped_at_the_end(
    make_kit: Callable[..., Kit],
) -> None:
    kit = make_kit(pace=False)
    # The station signs the officer in with a capture of their own (template kept, no record).
    kit.emu.present_finger(9, "good")
    officer = kit.fingers.capture(Job.local(30), position=7, attempts=1, timeout_s=20)
    kit.emu.remove_finger()
    reference = officer.reference("officer")
    officer.wipe()
    assert reference is not None and any(reference.template)
    kit.manager.start(StartArgs(citizen_ref="CIT-DUP-2", finger_policy=[1, 2]), job=Job.local(10))
    with pytest.raises(CommandError) as refused:
        kit.finger(1, finger_id=9, refuse_matching=[reference])
    assert refused.value.code == OFFICER_FINGER
    assert refused.value.details == {"position": 1, "officer_position": 7}
    kit.finger(1, finger_id=1, refuse_matching=[reference])
    held = list(kit.manager._templates[kit.manager._require().id])
    assert len(held) == 1 and any(held[0].template)
    kit.manager.cancel(CancelArgs(reason="test"), job=Job.local(5))
    # Session over: its templates are zeroed in memory and forgotten.
    assert not any(held[0].template) and kit.manager._templates == {}


def test_reference_templates_never_show_their_bytes() -> None:
    ref = ReferenceTemplate(bytearray(b"\x01" * 256), position=3)
    assert "01" not in repr(ref) and "position=3" in repr(ref)
