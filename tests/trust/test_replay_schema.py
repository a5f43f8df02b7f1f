"""The trust layer's replay tables are its own: the store creates none of them, the daemon's
wiring creates them on its store, and an existing store keeps what it has (SQLite files)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from appliance.builtin import register as register_builtins
from appliance.commands import CommandRegistry
from appliance.config import AppConfig
from appliance.daemon import build_verifier
from appliance.store import Store
from appliance.trust.envelope import TRUST_SCHEMA_SQL, ensure_replay_schema

TRUST_TABLES = {"trust_issuer_state", "trust_nonce"}


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_the_store_alone_creates_no_trust_table(tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        assert not TRUST_TABLES & _tables(store.conn)
    finally:
        store.close()


def test_the_daemon_wiring_creates_them_and_again_is_harmless(tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        registry = CommandRegistry()
        register_builtins(registry)
        # No fleet root key: the daemon refuses every command, and still owns the tables.
        build_verifier(AppConfig(), store, registry)
        assert _tables(store.conn) >= TRUST_TABLES
        store.conn.execute("INSERT INTO trust_issuer_state VALUES ('k1', 5, 1900000000, 0)")
        ensure_replay_schema(store.conn, store.lock)
        row = store.conn.execute("SELECT last_counter FROM trust_issuer_state").fetchone()
        assert row == (5,)
    finally:
        store.close()


def test_a_store_made_by_an_earlier_version_keeps_its_replay_state(tmp_path: Path) -> None:
    """Earlier versions created the tables in schema step 2; reopening such a store neither
    fails nor loses the counters and nonces it holds."""
    store = Store(tmp_path)
    for stmt in TRUST_SCHEMA_SQL:
        store.conn.execute(stmt)
    store.conn.execute("INSERT INTO trust_nonce VALUES ('bm9uY2U=', 'k1', 1900000000)")
    version = store.schema_version
    store.close()
    again = Store(tmp_path)
    try:
        assert again.schema_version == version
        ensure_replay_schema(again.conn, again.lock)
        assert again.conn.execute("SELECT count(*) FROM trust_nonce").fetchone() == (1,)
    finally:
        again.close()
