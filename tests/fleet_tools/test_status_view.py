"""How the fleet tools read a status message: state, last contact, the text line (pure)."""

from __future__ import annotations

import json
import time

from appliance.fleet.tools import Verification
from appliance.fleet.watch import Seen, status_last_seen, status_state

OK = Verification("ok", "signed by the device key approved for it")
BAD = Verification("bad", "bad_signature: the signature does not match")


def _seen(body: dict[str, object], verified: Verification, last_seen: float | None) -> Seen:
    return Seen(
        "status", "kiosk-1", "status", "kiosk/kiosk-1/status", body, verified,
        received_at=1_800_000_100.0, last_seen=last_seen,
    )  # fmt: skip


def test_state_and_last_contact_of_each_kind_of_status() -> None:
    birth = {"online": True, "device": "k", "ts": 10.0, "connected_at": 10.0}
    will = {"online": False, "device": "k", "reason": "lost", "connected_at": 5.0, "last_seen": 5.0}
    stop = {"online": False, "device": "k", "reason": "shutdown", "ts": 9.0, "last_seen": 9.0}
    old_will = {"online": False, "device": "k", "reason": "lost"}  # before connected_at existed
    assert [status_state(b) for b in (birth, will, stop)] == ["online", "lost", "offline"]
    assert status_last_seen(birth) == 10.0 and status_last_seen(will) == 5.0
    assert status_last_seen(stop) == 9.0 and status_last_seen(old_will) is None
    assert status_last_seen({"online": False, "last_seen": True}) is None  # not a number


def test_a_lost_kiosk_line_says_when_it_was_last_seen_and_a_forgery_is_flagged() -> None:
    will = {"online": False, "device": "kiosk-1", "reason": "lost", "connected_at": 1.0,
            "last_seen": 1.0}  # fmt: skip
    seen_at = 1_800_000_040.0
    line = _seen(will, OK, seen_at).line()
    clock = time.strftime("%H:%M:%S", time.localtime(seen_at))
    assert f"kiosk-1 status lost, last seen {clock} (60s ago)" in line
    assert "SIGNATURE INVALID" not in line
    assert "[SIGNATURE INVALID]" in _seen(will, BAD, None).line()
    assert "last seen unknown" in _seen(will, BAD, None).line()
    out = _seen(will, OK, seen_at).to_json()
    assert out["state"] == "lost" and out["last_seen"] == seen_at and out["verified"] == "ok"
    assert json.dumps(out)  # serialisable for --json
