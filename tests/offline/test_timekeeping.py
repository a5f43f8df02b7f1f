"""The kiosk's time without a real-time clock: the floor never goes down, the monotonic clock
carries the anchor, NTP and the centre's signed time move it, and a package's time fields are
checked for shape at the centre."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from appliance.timekeeping import Clock, check_time_source


class FakeClocks:
    """The system clock, the boot's monotonic clock, the boot id and NTP's state, by hand."""

    def __init__(self, wall: float, mono: float = 100.0, boot: str = "boot-1") -> None:
        self.wall, self.mono, self.boot, self.synced = wall, mono, boot, False

    def clock(self, state: Path) -> Clock:
        return Clock(
            state,
            wall=lambda: self.wall,
            mono=lambda: self.mono,
            boot_id=lambda: self.boot,
            synced=lambda: self.synced,
        )

    def advance(self, s: float) -> None:
        self.wall += s
        self.mono += s


T0 = 1_800_000_000.0


def test_ntp_sets_the_floor_and_a_reboot_without_network_never_goes_below_it(
    tmp_path: Path,
) -> None:
    f = FakeClocks(T0)
    f.synced = True
    c = f.clock(tmp_path)
    assert c.now() == T0
    assert c.source() == "ntp"
    f.advance(3600)
    stamp = c.stamp()
    assert stamp["time_source"] == "ntp" and stamp["at"] == T0 + 3600
    assert stat.S_IMODE((tmp_path / "time.json").stat().st_mode) == 0o600
    # Power off; the board boots with its clock back in 1970 and no network.
    f.wall, f.mono, f.boot, f.synced = 0.0, 5.0, "boot-2", False
    c2 = f.clock(tmp_path)
    assert c2.now() >= T0 + 3600
    assert c2.source() == "floor_monotonic"
    f.advance(600)  # ten minutes of work offline: the monotonic clock carries the floor
    s = c2.stamp()
    assert s["at"] == T0 + 3600 + 605  # the floor, anchored at the boot, plus the boot's clock
    assert s["time_source"] == "floor_monotonic"
    assert s["time_anchor"]["boot_id"] == "boot-2" and s["time_floor"] == s["at"]
    assert check_time_source({**_fields(s), "finished_at": s["at"]}) == []


def test_a_system_clock_set_wrongly_forward_is_not_trusted_without_ntp(tmp_path: Path) -> None:
    f = FakeClocks(T0)
    f.synced = True
    f.clock(tmp_path).stamp()
    f.wall, f.boot, f.synced = T0 + 10 * 365 * 86400, "boot-2", False
    c = f.clock(tmp_path)
    assert c.now() < T0 + 86400  # the floor plus the boot's clock, not ten years on
    assert json.loads((tmp_path / "time.json").read_text())["floor"] < T0 + 86400


def test_a_daemon_restart_in_the_same_boot_keeps_the_anchor(tmp_path: Path) -> None:
    f = FakeClocks(T0)
    f.synced = True
    f.clock(tmp_path).stamp()
    f.synced = False
    f.advance(30)
    c = f.clock(tmp_path)  # same boot id: the anchor still holds
    assert c.now() == T0 + 30


def test_signed_centre_time_bound_to_a_request_becomes_the_anchor(tmp_path: Path) -> None:
    f = FakeClocks(0.0)
    c = f.clock(tmp_path)
    assert c.now() < 1000  # nothing trusted yet: the boot's clock from zero
    assert c.observe_signed(T0, bound=True, round_trip_s=0.2)
    f.advance(10)
    assert c.now() == T0 + 10
    assert c.source() == "signed_centre"
    # a signed time not bound to a fresh request (a batch's issued_at) raises only the floor
    assert c.observe_signed(T0 + 100, bound=False)
    assert c.now() == T0 + 100
    assert c.stamp()["time_anchor"]["source"] == "signed_centre"
    # an older signed time never moves anything back, nor becomes the anchor
    assert not c.observe_signed(T0 - 5000, bound=True)
    assert c.now() >= T0 + 100
    assert c.stamp()["time_anchor"]["wall"] == T0


def test_a_bound_answer_in_the_second_a_batch_set_the_floor_still_anchors(
    tmp_path: Path,
) -> None:
    """Signed times are whole seconds: a batch fetched, then a lookup answered in the same
    second. The lookup must still anchor the clock (found by the offline-day test)."""
    f = FakeClocks(0.0)
    c = f.clock(tmp_path)
    assert c.observe_signed(T0, bound=False)  # the batch: the floor only
    assert c.source() == "floor_monotonic"
    assert not c.observe_signed(T0, bound=True, round_trip_s=0.05)  # same second
    assert c.source() == "signed_centre"
    f.advance(5)
    assert c.now() == T0 + 5
    # the daemon restarts in the same boot: the anchor was persisted with the answer
    again = f.clock(tmp_path)
    assert again.source() == "signed_centre" and again.now() == T0 + 5


def test_a_corrupt_state_file_starts_from_nothing_and_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "time.json").write_text("{not json")
    f = FakeClocks(T0)
    f.synced = True
    c = f.clock(tmp_path)
    assert c.stamp()["at"] == T0
    assert json.loads((tmp_path / "time.json").read_text())["floor"] == T0


def _fields(s: dict[str, object]) -> dict[str, object]:
    return {k: s[k] for k in ("time_source", "time_floor", "time_anchor")}


def test_the_centre_checks_the_shape_of_the_time_fields() -> None:
    good = {
        "time_source": "floor_monotonic",
        "time_floor": T0,
        "time_anchor": {"source": "ntp", "wall": T0 - 50, "monotonic": 12.5, "boot_id": "b"},
        "finished_at": T0,
    }
    assert check_time_source(good) == []
    assert check_time_source({"finished_at": T0}) == []  # an older kiosk: nothing to check
    bad = [
        ({"time_source": "rtc"}, "time_source"),
        ({"time_floor": "yesterday"}, "time_floor"),
        ({"time_floor": -1}, "time_floor"),
        ({"time_anchor": []}, "time_anchor"),
        ({"time_anchor": {**good["time_anchor"], "wall": None}}, "time_anchor.wall"),  # type: ignore[dict-item]
        ({"time_anchor": {**good["time_anchor"], "boot_id": ""}}, "time_anchor.boot_id"),  # type: ignore[dict-item]
        ({"time_anchor": {**good["time_anchor"], "source": "gps"}}, "time_anchor.source"),  # type: ignore[dict-item]
        ({"finished_at": T0 - 1}, "finished_at"),
    ]
    for change, field in bad:
        problems = check_time_source({**good, **change})
        assert problems and problems[0].startswith(field + ":"), (change, problems)
