"""The ingest's writer on SQLite and PostgreSQL, without a broker: heartbeats in soft
transactions (``synchronous_commit = off`` on PostgreSQL), everything else durable and in order,
and the batch deadline counted from the oldest message's arrival."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from appliance.fleet.conn import BrokerOptions
from appliance.fleet.tools import Verification
from appliance.fleet.watch import Seen
from appliance.fleetsvc.db import FleetDB
from appliance.fleetsvc.ingest import ServiceIngest
from tests.helpers import wait_for

UNKNOWN = Verification("unknown", "no approved key")


class RecordingDB(FleetDB):
    """The real database; each transaction's ``soft`` flag and, on PostgreSQL, the
    ``synchronous_commit`` in force inside it."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.txs: list[tuple[bool, str]] = []

    @contextmanager
    def tx(self, *, soft: bool = False) -> Iterator[Connection]:
        with super().tx(soft=soft) as conn:
            setting = "-"
            if self.dialect == "postgresql":
                setting = str(conn.execute(sa.text("SHOW synchronous_commit")).scalar())
            self.txs.append((soft, setting))
            yield conn


def _beat(dev: str, ts: float) -> tuple[float, str, Any]:
    body = {"device": dev, "ts": ts, "outbox_depth": 0, "devices": {"camera": "ok"}}
    seen = Seen("telemetry", dev, "telemetry", f"p/{dev}/telemetry", body, UNKNOWN, ts)
    return (ts, "seen", seen)


def _will(dev: str, ts: float) -> tuple[float, str, Any]:
    body = {"online": False, "device": dev, "reason": "lost"}
    seen = Seen("status", dev, "status", f"p/{dev}/status", body, UNKNOWN, ts)
    return (ts, "seen", seen)


def _event(dev: str, ts: float) -> tuple[float, str, Any]:
    body = {"id": f"e-{dev}", "seq": 1, "ts": ts, "data": {}}
    seen = Seen("event", dev, "enrollment.done", f"p/{dev}/events/x", body, UNKNOWN, ts)
    return (ts, "seen", seen)


def _ingest(db: FleetDB, **kw: Any) -> ServiceIngest:
    return ServiceIngest(db, BrokerOptions(host="127.0.0.1", port=1, prefix="p"), {}, **kw)


def test_heartbeats_soft_the_rest_durable_and_in_order(db_url: str) -> None:
    db = RecordingDB(db_url)
    db.migrate()
    try:
        now = time.time()
        ing = _ingest(db)
        db.txs.clear()
        ing.write(
            [
                _beat("k1", now),
                _beat("k2", now),
                _beat("k3", now),  # k3: a heartbeat, then its Last Will: lost, as they came
                _will("k3", now + 0.01),
                _event("k4", now),
            ]
        )
        # one durable transaction (k3, k4), then one soft (k1, k2's heartbeats)
        if db.dialect == "postgresql":
            assert db.txs == [(False, "on"), (True, "off")]
            with db.tx() as conn:  # SET LOCAL: the next transaction is durable again
                assert conn.execute(sa.text("SHOW synchronous_commit")).scalar() == "on"
        else:
            assert [soft for soft, _s in db.txs] == [False, True]
        assert ing.counters.batch_sizes == [3, 2]
        for dev in ("k1", "k2"):
            row = db.device(dev)
            assert row is not None and row["state"] == "online" and row["last_seen"] == now
        k3 = db.device("k3")
        assert k3 is not None and k3["state"] == "lost"
        assert [e["event_id"] for e in db.recent_events("k4")] == ["e-k4"]
        assert len(ing.counters.heartbeat_latency) == 3
    finally:
        db.close()


def test_a_message_that_waited_is_not_held_another_flush_period(fleet_db: FleetDB) -> None:
    """The batch's deadline counts from the oldest message's arrival: one that already waited
    (behind a slow commit) is written at once, not ``flush_s`` later."""
    ing = _ingest(fleet_db, flush_s=60.0)
    now = time.time()
    ing.q.put(_beat("k1", now - 120))
    ing._writer.start()
    try:
        # the old code waited the full 60 s for more messages before writing
        wait_for(lambda: ing.counters.batches == 1, 20, "the waited heartbeat written")
        row = fleet_db.device("k1")
        assert row is not None and row["state"] == "online"
    finally:
        ing._stop.set()
        ing.q.put(_beat("k2", now - 120))  # wakes the writer, written at once, then it ends
        ing._writer.join(20)
    assert not ing._writer.is_alive()
