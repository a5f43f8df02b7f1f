"""The enrollment manager checks disk space before a session opens (refusing loses nothing)
and dates its sessions with the kiosk's trusted clock, not the board's unset system clock.
The manager is called as the kiosk's local screen calls it (a Job, no MQTT)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from appliance.capabilities.base import Job
from appliance.enrollment.session import EnrollmentManager, SkipArgs, StartArgs
from appliance.errors import StoreError
from appliance.store import Store
from appliance.timekeeping import Clock
from appliance.trust.keys import DeviceIdentity
from appliance.trust.sealed import EnrollmentKeyPair

T0 = 1_800_000_000.0


def _manager(state: Path) -> EnrollmentManager:
    return EnrollmentManager(
        store=Store(state),
        state_dir=state,
        device_id="kiosk-room",
        identity=DeviceIdentity.load_or_create(state),
        portraits=None,
        fingers=None,
        enrollment_key=EnrollmentKeyPair.generate().public_key,
        emit=lambda *_a, **_k: None,
        resume_s=600,
        on_package=lambda _pid: None,
    )


def _rows(m: EnrollmentManager) -> tuple[int, int, int]:
    c = m.store.conn
    return (
        c.execute("SELECT count(*) FROM enrollment_sessions").fetchone()[0],
        c.execute("SELECT count(*) FROM enrollment_records").fetchone()[0],
        c.execute("SELECT count(*) FROM kv").fetchone()[0],
    )


def test_no_room_refuses_before_anything_is_written(tmp_path: Path) -> None:
    m = _manager(tmp_path)
    before = _rows(m)
    need = m.space_estimate.total
    m.free_space = lambda _p: need - 1
    args = StartArgs(citizen_ref="CIT-ROOM-1", exceptions=[{"position": 1, "reason": "missing"}])
    with pytest.raises(StoreError) as info:
        m.start(args, job=Job.local(5))
    assert info.value.code == "no_room"
    assert info.value.details["needed_bytes"] == need
    assert info.value.details["free_bytes"] == need - 1
    assert m.active() is None and _rows(m) == before
    m.free_space = lambda _p: need
    assert m.start(args, job=Job.local(5))["session_id"]
    m.store.close()


def test_sessions_are_dated_with_the_kiosks_clock(tmp_path: Path) -> None:
    m = _manager(tmp_path)
    # a board without a real-time clock, back in 1970, no NTP; the centre's signed time known
    clock = Clock(tmp_path, wall=lambda: 0.0, mono=lambda: 50.0, synced=lambda: False)
    clock.observe_signed(T0, bound=True, round_trip_s=0.1)
    m.clock = clock
    m.start(StartArgs(citizen_ref="CIT-TIME-1"), job=Job.local(5))
    s = m.active()
    assert s is not None and s.started_at == T0
    # the restart's idle check still compares the system clock with the system clock
    (updated,) = m.store.conn.execute(
        "SELECT updated FROM enrollment_sessions WHERE id=?", (s.id,)
    ).fetchone()
    assert abs(updated - time.time()) < 60
    m.skip(SkipArgs(position=2, reason="bandaged"), job=Job.local(5))
    (captured_at,) = m.store.conn.execute(
        "SELECT captured_at FROM enrollment_records WHERE session_id=? AND status='skipped'",
        (s.id,),
    ).fetchone()
    assert captured_at == T0
    m.store.close()
