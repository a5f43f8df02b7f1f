"""The outbox's costs stay flat: a depth counter kept by triggers (not ``count(*)``), acks
deleted in ranges, and the space of a drained outbox given back to the file system."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from appliance import store as store_mod
from appliance.errors import StoreError
from appliance.store import Store, seq_ranges


def _fill(s: Store, n: int) -> None:
    for i in range(0, n, 500):
        s.outbox.put_many(
            [("t", "x/t", {"text": "x" * 200, "n": k}) for k in range(i, min(n, i + 500))]
        )


def test_seq_ranges_are_consecutive_runs() -> None:
    assert seq_ranges([]) == []
    assert seq_ranges([5, 3, 4, 4, 9, 1]) == [(1, 1), (3, 5), (9, 9)]


def test_depth_counter_follows_every_insert_and_delete(tmp_path: Path) -> None:
    s = Store(tmp_path)
    _fill(s, 1200)
    assert s.outbox.depth() == 1200
    rows = s.outbox.pending(0, 1200)
    # gaps inside an ack batch delete only the seqs given
    assert s.outbox.ack([r.seq for r in rows[:10]] + [rows[20].seq]) == 11
    assert s.outbox.depth() == 1189
    assert rows[15].seq in {r.seq for r in s.outbox.pending(0, 1200)}
    last = rows[-1]
    assert s.outbox.ack_ranges([(rows[0].seq, last.seq, last.id)]) == 1189
    assert s.outbox.depth() == 0
    # a write by a plain SQL statement (another tool) is counted too: the triggers keep it
    with s.transaction() as c:
        c.execute(
            "INSERT INTO outbox (id, type, topic, data, qos, retain, created) "
            "VALUES ('x1', 't', 'x/t', '{}', 1, 0, 0)"
        )
    assert s.outbox.depth() == 1
    (n,) = s.conn.execute("SELECT count(*) FROM outbox").fetchone()
    assert n == 1
    s.close()


def test_cap_uses_the_counter(tmp_path: Path) -> None:
    s = Store(tmp_path)
    s.outbox.set_cap(3)
    s.outbox.put_many([("t", "x/t", {}) for _ in range(3)])
    with pytest.raises(StoreError) as err:
        s.outbox.put("t", "x/t", {})
    assert err.value.code == "outbox_full"
    assert s.outbox.depth() == 3
    s.close()


def test_a_drained_outbox_gives_its_space_back(tmp_path: Path) -> None:
    empty_dir = tmp_path / "empty"
    empty = Store(empty_dir)
    empty_size = empty.size_bytes()
    empty.close()
    s = Store(tmp_path / "full")
    _fill(s, 5000)
    full = s.size_bytes()
    assert full > 5 * empty_size
    while rows := s.outbox.pending(0, 200):
        s.outbox.ack(r.seq for r in rows)
    after = s.size_bytes()
    assert after <= 2 * empty_size, (empty_size, full, after)
    assert s.integrity_check() == "ok"
    s.close()


def test_a_store_of_the_previous_version_is_migrated(tmp_path: Path) -> None:
    """A store made before the depth counter and incremental vacuum, with queued events: the
    counter starts at the rows present and the file gets incremental vacuum (one VACUUM)."""
    s = Store(tmp_path)
    _fill(s, 700)
    s.close()
    conn = sqlite3.connect(tmp_path / store_mod.DB_NAME, isolation_level=None)
    conn.execute("DROP TRIGGER outbox_depth_insert")
    conn.execute("DROP TRIGGER outbox_depth_delete")
    conn.execute("DROP TABLE outbox_depth")
    conn.execute("PRAGMA user_version=4")
    conn.execute("PRAGMA auto_vacuum=NONE")
    conn.execute("VACUUM")
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()
    s = Store(tmp_path)
    assert s.schema_version == len(store_mod.MIGRATIONS)
    assert s.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert s.outbox.depth() == 700
    assert [r.seq for r in s.outbox.pending(0, 1000)] == list(range(1, 701))
    s.close()


def test_a_lazy_transaction_keeps_the_store_full_sync(tmp_path: Path) -> None:
    """``durable=False`` commits one transaction with synchronous=NORMAL; the store goes back
    to FULL for the next one (also after a failed one), and sync() makes it durable."""
    s = Store(tmp_path)
    with s.transaction(durable=False) as c:
        c.execute("INSERT INTO kv (key, value) VALUES ('a', '1')")
    assert s.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with pytest.raises(StoreError), s.transaction(durable=False) as c:
        c.execute("INSERT INTO nowhere VALUES (1)")
    assert s.conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    s.sync()
    assert s.kv_get("a") == "1"
    s.close()
