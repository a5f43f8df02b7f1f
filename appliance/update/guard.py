"""The update journal and the start guard: standard library only, runnable on its own.

This file is copied to ``<root>/guard.py`` by the version that performs a switch, and the
systemd unit runs it before every start of the daemon::

    ExecStartPre=/usr/bin/python3 /opt/appliance/guard.py --root /opt/appliance \\
        --state-dir /var/lib/appliance

It imports nothing from the ``appliance`` package on purpose: a new release whose code
crashes on import must not be able to prevent its own rollback. It is the part of the update
that survives a ``kill -9`` or a power cut at any step (docs/updates.md, "Journal").

Layout under ``root`` (``/opt/appliance``)::

    releases/<version>/      one virtual environment per installed release
    current -> releases/<v>  the environment the unit starts (``current/bin/appliance``)
    guard.py                 this file

The journal is ``<state-dir>/update/journal.json``, written atomically (temporary file,
fsync, rename, fsync of the directory). Its ``state`` walks::

    downloading -> verifying -> installing -> installed -> switching -> switched -> trial
        -> committed
        -> rolling_back -> rolled_back
    (any step before switching) -> failed

At every start the guard moves the journal on from the states only a start can judge:

* ``switching``: the link was being flipped; finish the flip (``rename`` is atomic, so the link
  names either environment), then as ``switched``;
* ``switched``: this start is the new version's trial: ``trial`` with ``attempts = 1``;
* ``trial``: a start during a trial means the trial's daemon died (a crash on start, a hang
  killed by the watchdog, a power cut) before its verdict: roll back, without trying again;
* ``rolling_back``: finish the rollback (flip the link back to ``from``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

JOURNAL_DIR = "update"
#: The store's file (appliance/store.py's DB_NAME; not imported: this file stands alone).
STORE = "appliance.db"
#: Its copy taken just before a switch (see :func:`snapshot_store`).
STORE_BEFORE = "store-before-switch.db"
SELFTEST_TIMEOUT_S = 45.0  # inside the unit's TimeoutStartSec=60
JOURNAL = "journal.json"
RELEASES = "releases"
CURRENT = "current"

#: Steps before the switch (the running version is untouched; resumed or abandoned).
BEFORE_SWITCH = ("downloading", "verifying", "installing", "installed")
#: Final states: nothing left to do.
FINAL = ("committed", "rolled_back", "failed")
STATES = (*BEFORE_SWITCH, "switching", "switched", "trial", "rolling_back", *FINAL)


def journal_path(state_dir: Path) -> Path:
    return Path(state_dir) / JOURNAL_DIR / JOURNAL


def read_journal(state_dir: Path) -> dict[str, Any] | None:
    """The journal, or None when no update was ever started (or the file is unreadable: a torn
    write cannot happen with the atomic rename, so that is a foreign file and is ignored)."""
    try:
        data = json.loads(journal_path(state_dir).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("state") in STATES else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_journal(state_dir: Path, journal: dict[str, Any]) -> None:
    """Replace the journal atomically and durably; appends the state to ``history``."""
    if journal.get("state") not in STATES:
        raise ValueError(f"unknown update state {journal.get('state')!r}")
    d = Path(state_dir) / JOURNAL_DIR
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    journal = dict(journal)
    history = list(journal.get("history", []))
    if not history or history[-1][0] != journal["state"]:
        history.append([journal["state"], round(time.time(), 3)])
    journal["history"] = history[-50:]
    journal["updated_at"] = time.time()
    tmp = d / (JOURNAL + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(journal, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, d / JOURNAL)
    _fsync_dir(d)


def set_state(
    state_dir: Path, journal: dict[str, Any], state: str, **fields: Any
) -> dict[str, Any]:
    new = {**journal, **fields, "state": state}
    write_journal(state_dir, new)
    return read_journal(state_dir) or new


def current_target(root: Path) -> str | None:
    """The release directory name ``current`` points to (``releases/<version>``)."""
    try:
        return os.readlink(Path(root) / CURRENT)
    except OSError:
        return None


def point_current(root: Path, target: str) -> None:
    """Atomically make ``current`` point to ``target`` (relative, ``releases/<version>``): a
    new link under a temporary name renamed over the old one (rename(2) is atomic, so a
    power cut leaves either link, never none)."""
    root = Path(root)
    if current_target(root) == target:
        return
    tmp = root / (CURRENT + ".new")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, root / CURRENT)
    _fsync_dir(root)


def schema_version(db: Path) -> int | None:
    """``PRAGMA user_version`` of a SQLite file, read-only; None if there is none."""
    if not db.exists():
        return None
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def snapshot_store(state_dir: Path) -> int | None:
    """Before a switch: a consistent copy of the store (SQLite online backup) and its schema
    version, so that a rollback can give the previous version a store it can open."""
    src = Path(state_dir) / STORE
    if not src.exists():
        return None
    dst = Path(state_dir) / JOURNAL_DIR / STORE_BEFORE
    dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = dst.with_suffix(".part")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    a, b = sqlite3.connect(src), sqlite3.connect(tmp)
    os.chmod(tmp, 0o600)  # the store's own mode: it holds the outbox
    try:
        a.backup(b)
        version = int(b.execute("PRAGMA user_version").fetchone()[0])
    finally:
        a.close()
        b.close()
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)
    return version


def restore_store(state_dir: Path, j: dict[str, Any]) -> dict[str, Any]:
    """After a rollback, before the previous version starts: if the new version migrated the
    store past the schema the previous one knows (the store refuses a newer schema), set the
    migrated file aside (nothing is deleted: the outbox rows of the trial stay there for a
    technician) and put the pre-switch copy in its place."""
    if j.get("store_checked") or j.get("schema_before") is None:
        return j
    state_dir = Path(state_dir)
    db, copy = state_dir / STORE, state_dir / JOURNAL_DIR / STORE_BEFORE
    now = schema_version(db)
    fields: dict[str, Any] = {"store_checked": True}
    if now is not None and now > int(j["schema_before"]) and copy.exists():
        aside = state_dir / JOURNAL_DIR / f"store-after-{j.get('version')}-{int(time.time())}.db"
        for suffix in ("", "-wal", "-shm"):
            f = Path(str(db) + suffix)
            if f.exists():
                os.replace(f, Path(str(aside) + suffix))
        os.replace(copy, db)
        _fsync_dir(state_dir)
        fields["store_restored"] = str(aside)
    return set_state(state_dir, j, j["state"], **fields)


def run_selftest(root: Path, entry: str, args: list[str]) -> tuple[bool, str]:
    """The new release's own self-test, from its environment, before its daemon starts (so
    it has the devices to itself)."""
    exe = Path(root) / CURRENT / "bin" / entry
    try:
        proc = subprocess.run(
            [str(exe), *args], capture_output=True, text=True, timeout=SELFTEST_TIMEOUT_S,
            check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"update_selftest_failed: the selftest of the new version did not run: {exc}"
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip()[-300:]
        return False, (
            f"update_selftest_failed: selftest of the new version failed ({proc.returncode}): "
            f"{tail}"
        )
    return True, "selftest passed"


def guard(
    root: Path,
    state_dir: Path,
    *,
    selftest: list[str] | None = None,
    entry: str = "appliance",
) -> dict[str, Any] | None:
    """Move the journal on at a start (module docstring); return it (None: no update).
    ``selftest``: arguments of ``<current>/bin/<entry>`` run at the trial's start; a failure
    rolls back before the new daemon starts."""
    j = read_journal(state_dir)
    if j is None:
        return None
    state = j["state"]
    if state == "switching":
        point_current(root, j["to"])
        j = set_state(state_dir, j, "switched", attempts=0)
        state = "switched"
    if state == "switched":
        j = set_state(state_dir, j, "trial", attempts=1, trial_started=time.time())
        if selftest is not None:
            ok, why = run_selftest(root, entry, selftest)
            if not ok:
                return restore_store(state_dir, rollback(root, state_dir, j, why))
            j = set_state(state_dir, j, "trial", selftest=why)
        return j
    if state == "trial":
        j = rollback(
            root,
            state_dir,
            j,
            "the new version stopped during its trial before a verdict (crash on start, "
            "watchdog or power cut)",
        )
        return restore_store(state_dir, j)
    if state == "rolling_back":
        j = rollback(root, state_dir, j, j.get("reason", "rollback resumed"))
    if j["state"] == "rolled_back":
        return restore_store(state_dir, j)
    return j


def rollback(root: Path, state_dir: Path, j: dict[str, Any], reason: str) -> dict[str, Any]:
    """Point ``current`` back at the previous environment; journal ``rolled_back``."""
    j = set_state(state_dir, j, "rolling_back", reason=reason)
    if j.get("from"):
        point_current(root, j["from"])
    return set_state(state_dir, j, "rolled_back", reason=reason, reported=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="guard.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, required=True, help="installation root (/opt/appliance)")
    p.add_argument("--state-dir", type=Path, required=True, help="/var/lib/appliance")
    p.add_argument("--entry", default="appliance", help="console script of a release")
    p.add_argument(
        "--selftest",
        metavar="ARGS",
        help="arguments of '<root>/current/bin/<entry>' run as the new release's self-test "
        "at its trial's start (e.g. 'selftest --config /etc/appliance/appliance.toml')",
    )
    args = p.parse_args(argv)
    selftest = shlex.split(args.selftest) if args.selftest else None
    j = guard(args.root, args.state_dir, selftest=selftest, entry=args.entry)
    if j is not None:
        print(
            f"update guard: {j['state']} ({j.get('from')} -> {j.get('to')})"
            + (f": {j['reason']}" if j.get("reason") else ""),
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
