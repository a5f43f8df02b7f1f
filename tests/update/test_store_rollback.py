"""A rollback leaves the previous version a store it can open: the store refuses a schema
newer than its code knows, so when the new release migrated it during its trial, the guard
puts the pre-switch copy back and sets the migrated file aside (nothing deleted)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from appliance.errors import StoreError
from appliance.store import DB_NAME, Store
from appliance.update import guard as g


def _layout(tmp: Path) -> tuple[Path, Path]:
    root, state = tmp / "opt", tmp / "state"
    for v in ("0.1.0", "0.2.0"):
        (root / g.RELEASES / v).mkdir(parents=True)
    g.point_current(root, "releases/0.1.0")
    s = Store(state)
    s.kv_set("before", "1")
    s.close()
    schema = g.snapshot_store(state)
    assert schema == Store(state).schema_version
    j = {"from": "releases/0.1.0", "to": "releases/0.2.0", "version": "0.2.0",
         "schema_before": schema}  # fmt: skip
    g.write_journal(state, {**j, "state": "switching"})
    assert g.guard(root, state)["state"] == "trial"  # type: ignore[index]
    assert g.current_target(root) == "releases/0.2.0"
    return root, state


def _new_version_writes(state: Path, *, migrate: bool) -> None:
    conn = sqlite3.connect(state / DB_NAME)
    if migrate:  # an additive migration of the new release
        (v,) = conn.execute("PRAGMA user_version").fetchone()
        conn.execute("ALTER TABLE kv ADD COLUMN note TEXT")
        conn.execute(f"PRAGMA user_version={v + 1}")
    conn.execute("INSERT INTO kv (key, value) VALUES ('during-trial', '1')")
    conn.commit()
    conn.close()


def test_migrated_store_is_restored_on_rollback(tmp_path: Path) -> None:
    root, state = _layout(tmp_path)
    _new_version_writes(state, migrate=True)
    with pytest.raises(StoreError):  # what the previous version would meet without the guard
        Store(state).close()
    j = g.guard(root, state)  # the trial's daemon died: roll back
    assert j is not None and j["state"] == "rolled_back" and j["store_restored"]
    assert g.current_target(root) == "releases/0.1.0"
    s = Store(state)  # the previous version opens its store
    assert s.kv_get("before") == "1" and s.kv_get("during-trial") is None
    s.close()
    aside = sqlite3.connect(j["store_restored"])  # the trial's rows are kept, not deleted
    assert aside.execute("SELECT value FROM kv WHERE key='during-trial'").fetchone() == ("1",)
    aside.close()
    # A later start does not restore again.
    assert g.guard(root, state)["store_checked"] is True  # type: ignore[index]
    assert Store(state).kv_get("before") == "1"


def test_unmigrated_store_is_kept_on_rollback(tmp_path: Path) -> None:
    root, state = _layout(tmp_path)
    _new_version_writes(state, migrate=False)
    j = g.guard(root, state)
    assert j is not None and j["state"] == "rolled_back" and "store_restored" not in j
    s = Store(state)
    assert s.kv_get("during-trial") == "1"  # nothing of the trial is lost
    s.close()
