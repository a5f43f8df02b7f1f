"""The SQLite store: migrations, outbox order, at-most-once log, durability under kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import store as store_mod
from appliance.errors import StoreError
from appliance.store import Store


def test_schema_is_created_and_versioned(tmp_path: Path) -> None:
    s = Store(tmp_path)
    assert s.schema_version == len(store_mod.MIGRATIONS)
    assert {"outbox", "commands", "config_history", "audit", "kv"} <= set(s.db.table_names())
    assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert oct(os.stat(s.path).st_mode & 0o777) == "0o600"
    s.close()
    s = Store(tmp_path)  # re-open: no migration runs twice
    assert s.schema_version == len(store_mod.MIGRATIONS)
    s.close()


def test_a_migration_another_process_just_ran_is_not_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes opening a new store at once (the daemon starting while a local tool
    writes) both read schema 0 before either takes the write lock; the second must not run the
    migrations the first committed meanwhile ("table outbox already exists")."""
    Store(tmp_path).close()  # the other process won the race: the store is complete
    real = Store.schema_version
    reads = {"n": 0}

    def stale_first(self: Store) -> int:
        reads["n"] += 1
        return 0 if reads["n"] == 1 else real.fget(self)  # type: ignore[misc]

    monkeypatch.setattr(Store, "schema_version", property(stale_first))
    s = Store(tmp_path)  # read 0 before the lock, as the loser of the race did
    monkeypatch.undo()
    assert s.schema_version == len(store_mod.MIGRATIONS)
    assert s.integrity_check() == "ok"
    s.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Store(tmp_path).close()
    conn = sqlite3.connect(tmp_path / store_mod.DB_NAME)
    conn.execute("PRAGMA user_version=999")
    conn.close()
    with pytest.raises(StoreError, match="newer than this software"):
        Store(tmp_path)


def test_corrupt_database_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / store_mod.DB_NAME).write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open store"):
        Store(tmp_path)


def test_outbox_keeps_order_and_never_reuses_seq(tmp_path: Path) -> None:
    s = Store(tmp_path)
    ids = s.outbox.put_many([("t", "x/t", {"n": n}) for n in range(5)])
    assert [seq for seq, _ in ids] == [1, 2, 3, 4, 5]
    assert [r.seq for r in s.outbox.pending(0)] == [1, 2, 3, 4, 5]
    assert [r.seq for r in s.outbox.pending(3)] == [4, 5]
    s.outbox.ack([4, 5])
    ((seq, _),) = s.outbox.put_many([("t", "x/t", {"n": 6})])
    assert seq == 6, "AUTOINCREMENT: a deleted seq is never handed out again"
    assert s.outbox.depth() == 4
    s.close()


def test_puback_watermark_survives_a_reopen_and_only_rises(tmp_path: Path) -> None:
    s = Store(tmp_path)
    assert s.outbox.published_through() == 0
    s.outbox.set_published_through(42)
    s.outbox.set_published_through(7)  # a late, lower flush never moves it back
    s.close()
    s = Store(tmp_path)
    try:
        assert s.outbox.published_through() == 42
        s.outbox.set_published_through(100)
        assert s.outbox.published_through() == 100
    finally:
        s.close()


def test_outbox_cap_refuses_instead_of_dropping(tmp_path: Path) -> None:
    s = Store(tmp_path)
    s.outbox.set_cap(3)
    s.outbox.put_many([("t", "x", {}), ("t", "x", {}), ("t", "x", {})])
    with pytest.raises(StoreError) as exc:
        s.outbox.put("t", "x", {})
    assert exc.value.code == "outbox_full"
    assert s.outbox.depth() == 3
    s.close()


def test_command_log_claims_once_and_keeps_first_reply(tmp_path: Path) -> None:
    s = Store(tmp_path)
    assert s.commands.begin("c1", "ping")[0] is True
    assert s.commands.begin("c1", "ping") == (False, None, "running")
    assert s.commands.finish("c1", '{"ok":true}', "ok") is True
    assert s.commands.finish("c1", '{"ok":false}', "timeout") is False  # first reply wins
    assert s.commands.begin("c1", "ping") == (False, '{"ok":true}', "done")
    assert [r["outcome"] for r in s.audit_tail(10)] == ["repeat", "ok", "repeat", "accepted"]
    s.close()


WRITER = """
import sys
from pathlib import Path
from appliance.store import Store
s = Store(Path(sys.argv[1]))
n = 0
while True:
    seq, eid = s.outbox.put("t", "x/t", {"n": n})
    print(seq, eid, flush=True)   # reported stored
    n += 1
"""


def test_a_lookup_repeated_in_one_transaction_sees_the_writes_between(tmp_path: Path) -> None:
    """CommandLog.lookup answers a repeat inside the same transaction from memory, but never
    across a write of the command log or across transactions."""
    s = Store(tmp_path)
    statements: list[str] = []
    s.conn.set_trace_callback(statements.append)

    def selects() -> int:
        return sum(st.startswith("SELECT name, state, reply FROM commands") for st in statements)

    with s.transaction(durable=False):
        assert s.commands.lookup("c1") is None
        assert s.commands.lookup("c1") is None
        assert selects() == 1
        assert s.commands.begin("c1", "note")[0] is True
        assert s.commands.lookup("c1") == ("note", "running", None)  # the claim, not the memo
        assert selects() == 2
    with s.transaction():
        assert s.commands.finish("c1", '{"ok": true}')
        assert s.commands.lookup("c1") == ("note", "done", '{"ok": true}')
    assert s.commands.lookup("c1") == ("note", "done", '{"ok": true}')  # outside: read again
    assert selects() == 4
    # Rolled back: the next transaction does not reuse what the failed one read.
    with pytest.raises(RuntimeError), s.transaction():
        assert s.commands.lookup("c2") is None
        raise RuntimeError("abort")
    s.conn.execute(
        "INSERT INTO commands (id, name, state, received) VALUES ('c2', 'note', 'running', 0)"
    )
    with s.transaction():
        assert s.commands.lookup("c2") == ("note", "running", None)
    s.close()


def test_events_reported_stored_survive_kill9(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    reported = []
    for line in proc.stdout:
        reported.append(line.split())
        if len(reported) == 500:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    s = Store(tmp_path)
    assert s.integrity_check() == "ok"
    have = {(str(r.seq), r.id) for r in s.outbox.pending(0, 100000)}
    assert {tuple(r) for r in reported} <= have
    s.close()
