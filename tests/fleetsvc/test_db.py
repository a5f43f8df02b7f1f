"""The data-access layer on SQLite and on PostgreSQL (the same tests, parametrized by
``db_url``): migrations, upserts, the overview's filters, sorting and paging, events stored
once, alarms raised once per device and kind, cleared, acknowledged, and the audit log."""

from __future__ import annotations

import time

import pytest

from appliance.fleetsvc.db import MIGRATIONS, DeviceFilter, FleetDB
from appliance.fleetsvc.ingest import AlarmEvaluator


def _fill(db: FleetDB, n: int = 30, now: float = 1_000_000.0) -> None:
    with db.tx() as conn:
        for i in range(n):
            db.upsert_device(
                conn,
                f"kiosk-{i:03d}",
                now,
                state="online" if i % 3 else "lost",
                version="1.0" if i < 20 else "1.1",
                site="Ha Noi" if i % 2 else "Hue",
                groups=",north," if i < 10 else ",south,",
                health="ok" if i != 5 else "fingerprint:error",
                last_seen=now - i,
                outbox_depth=i,
                config_applied=3 if i < 25 else 4,
            )


def test_migrations_apply_once_in_order(fleet_db: FleetDB) -> None:
    assert fleet_db.schema_version() == MIGRATIONS[-1][0]
    assert fleet_db.migrate() == []  # a second start (or a second instance) applies nothing
    again = FleetDB(fleet_db.url)
    assert again.migrate() == []
    again.close()


def test_last_seen_only_moves_forward(fleet_db: FleetDB) -> None:
    with fleet_db.tx() as conn:
        fleet_db.upsert_device(conn, "k1", 10.0, state="online", last_seen=100.0)
        fleet_db.upsert_device(conn, "k1", 11.0, state="lost", last_seen=50.0)  # stale will
        fleet_db.upsert_device(conn, "k1", 12.0, signature="bad")  # no time: unchanged
    d = fleet_db.device("k1")
    assert d is not None
    assert d["last_seen"] == 100.0 and d["state"] == "lost" and d["signature"] == "bad"


def test_filters_sort_and_paging(fleet_db: FleetDB) -> None:
    _fill(fleet_db)
    assert fleet_db.counts() == {"online": 20, "offline": 0, "lost": 10, "never seen": 0}
    total, rows = fleet_db.list_devices(DeviceFilter(state="lost", page_size=4))
    assert total == 10 and [r["device_id"] for r in rows] == [
        "kiosk-000",
        "kiosk-003",
        "kiosk-006",
        "kiosk-009",
    ]
    total, rows = fleet_db.list_devices(DeviceFilter(state="lost", page_size=4, page=3))
    assert total == 10 and [r["device_id"] for r in rows] == ["kiosk-024", "kiosk-027"]
    assert fleet_db.list_devices(DeviceFilter(group="north"))[0] == 10
    assert fleet_db.list_devices(DeviceFilter(site="Hue", version="1.1"))[0] == 5
    assert fleet_db.list_devices(DeviceFilter(config="4"))[0] == 5
    assert fleet_db.list_devices(DeviceFilter(config="x"))[0] == 0  # not a number: nothing
    total, rows = fleet_db.list_devices(DeviceFilter(health="bad"))
    assert total == 1 and rows[0]["device_id"] == "kiosk-005"
    assert fleet_db.list_devices(DeviceFilter(q="-01"))[0] == 10
    assert fleet_db.list_devices(DeviceFilter(q="%"))[0] == 0  # LIKE wildcards are literal
    _total, rows = fleet_db.list_devices(DeviceFilter(sort="last_seen", page_size=2))
    assert [r["device_id"] for r in rows] == ["kiosk-029", "kiosk-028"]  # oldest first
    _total, rows = fleet_db.list_devices(DeviceFilter(sort="outbox", desc=True, page_size=1))
    assert rows[0]["device_id"] == "kiosk-029" and rows[0]["groups"] == ["south"]
    assert fleet_db.facets()["version"] == ["1.0", "1.1"]


def test_events_are_stored_once(fleet_db: FleetDB) -> None:
    ev = {
        "device_id": "k1",
        "seq": 1,
        "type": "enrollment.finished",
        "ts": time.time(),
        "data": "{}",
        "verified": "ok",
    }
    with fleet_db.tx() as conn:
        assert fleet_db.insert_event(conn, event_id="e1", **ev)
        assert not fleet_db.insert_event(conn, event_id="e1", **ev)  # at-least-once re-send
    assert [e["event_id"] for e in fleet_db.recent_events("k1")] == ["e1"]
    assert sum(n for _d, n in fleet_db.enrollments_per_day("k1")) == 1


def test_condition_alarms_raise_once_clear_and_ack(fleet_db: FleetDB) -> None:
    now = time.time()
    with fleet_db.tx() as conn:
        fleet_db.upsert_device(conn, "gone", now, state="lost", last_seen=now - 120)
        fleet_db.upsert_device(conn, "fresh", now, state="online", last_seen=now - 5)
        fleet_db.upsert_device(conn, "silent", now, state="online", last_seen=now - 100)
        fleet_db.upsert_device(
            conn, "sick", now, state="online", last_seen=now, health="card:error", outbox_depth=500
        )
    ev = AlarmEvaluator(fleet_db, lost_after_s=60, outbox_limit=100)
    other = AlarmEvaluator(fleet_db, lost_after_s=60, outbox_limit=100)  # a second instance
    assert ev.evaluate(now) == 4
    assert other.evaluate(now) == 0 and ev.evaluate(now) == 0  # raised once, not per pass
    open_ = {(a["device_id"], a["kind"]) for a in fleet_db.list_alarms()}
    assert open_ == {
        ("gone", "lost"),
        ("silent", "lost"),
        ("sick", "unhealthy"),
        ("sick", "outbox_growing"),
    }
    lost = next(a for a in fleet_db.list_alarms() if a["device_id"] == "gone")
    assert "last seen" in lost["detail"]
    acked = fleet_db.ack_alarm(lost["id"], "olga", now)
    assert acked is not None and acked["acked_by"] == "olga" and acked["open_key"] is not None
    assert ev.evaluate(now) == 0  # acknowledged, still lost: not raised again
    with fleet_db.tx() as conn:  # it comes back
        fleet_db.upsert_device(conn, "gone", now + 1, state="online", last_seen=now + 1)
    ev.evaluate(now + 1)
    assert ("gone", "lost") not in {(a["device_id"], a["kind"]) for a in fleet_db.list_alarms()}
    assert fleet_db.ack_alarm(999_999, "olga", now) is None


def test_one_shot_alarm_closes_on_ack(fleet_db: FleetDB) -> None:
    with fleet_db.tx() as conn:
        assert fleet_db.raise_alarm(conn, "k1", "package_rejected", "p1: bad seal", 1.0)
        assert not fleet_db.raise_alarm(conn, "k1", "package_rejected", "p2: bad seal", 2.0)
    alarm = fleet_db.list_alarms()[0]
    fleet_db.ack_alarm(alarm["id"], "olga", 3.0)
    assert fleet_db.list_alarms() == []
    with fleet_db.tx() as conn:  # the next rejection raises a new one
        assert fleet_db.raise_alarm(conn, "k1", "package_rejected", "p3", 4.0)


def test_audit_log(fleet_db: FleetDB) -> None:
    fleet_db.audit("olga", "command", "k1", cmd="ping")
    (row,) = fleet_db.audit_log()
    assert (row["actor"], row["action"], row["target"], row["detail"]) == (
        "olga",
        "command",
        "k1",
        {"cmd": "ping"},
    )


def test_unsupported_database_is_refused() -> None:
    from appliance.errors import ApplianceError

    with pytest.raises(ApplianceError) as err:
        FleetDB("mysql://x@localhost/db")
    assert err.value.code == "config_invalid"
