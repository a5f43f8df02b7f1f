"""The durable store: one SQLite database (WAL) in the state directory.

Tables: ``outbox`` (store-and-forward events), ``commands`` (ids of executed commands with
their replies: at-most-once execution), ``config_history``, ``audit``, ``kv``; later layers add
theirs through :data:`MIGRATIONS`. The schema version is ``PRAGMA user_version``; migrations run
in order, each in its own transaction, at open.

sqlite-utils (which pulls in numpy, click and dateutil: ~17 MB of RSS) is imported only when a
migration must run or ``Store.db`` is used, so an ordinary boot of a kiosk with a current schema
never loads it.

Durability: with ``synchronous=FULL`` in WAL mode a commit is on stable storage when ``commit``
returns (https://sqlite.org/pragma.html#pragma_synchronous), so an event that :meth:`Outbox.put`
reported stored survives ``kill -9`` and power loss. sqlite-utils creates the schema; the hot
paths use the same connection's ``execute`` because ``Table.insert`` opens a transaction per call
and is ~40 % slower (measured with 1 KB rows, one row per transaction, on a 2-core machine).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import StoreError
from .protocol.codes import ErrorCode

if TYPE_CHECKING:
    import sqlite_utils

log = logging.getLogger(__name__)

DB_NAME = "appliance.db"
# kv key of the outbox's PUBACK watermark (Outbox.published_through)
PUBLISHED_KEY = "outbox.published_through"


def _m1_core(db: sqlite_utils.Database) -> None:
    # AUTOINCREMENT: a sequence number is never reused, even after the newest rows are
    # deleted, so the controller's gap detection stays correct across drains and restarts.
    db.execute(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, "
        "type TEXT NOT NULL, topic TEXT NOT NULL, data TEXT NOT NULL, qos INTEGER NOT NULL, "
        "retain INTEGER NOT NULL, created REAL NOT NULL)"
    )
    db.table("commands").create(
        {
            "id": str,
            "name": str,
            "state": str,
            "received": float,
            "finished": float,
            "reply": str,
            "actor": str,
            "outcome": str,
        },
        pk="id",
        not_null={"name", "state", "received"},
    )
    db.table("commands").create_index(["received"])
    db.table("config_history").create(
        {
            "version": int,
            "ts": float,
            "source": str,
            "status": str,
            "reason": str,
            "document": str,
        },
        pk="version",
    )
    db.table("audit").create(
        {
            "id": int,
            "ts": float,
            "actor": str,
            "action": str,
            "outcome": str,
            "details": str,
        },
        pk="id",
    )
    db.table("kv").create({"key": str, "value": str}, pk="key")


def _m2_trust(db: sqlite_utils.Database) -> None:
    # Schema step 2 once created the replay state of signed commands. The trust layer now
    # creates its own tables when the daemon binds it to this store
    # (appliance/trust/envelope.py, ensure_replay_schema: CREATE ... IF NOT EXISTS), so the
    # store imports no feature; the step stays, empty, to keep the numbering of shipped stores.
    del db


def _m3_enrollment(db: sqlite_utils.Database) -> None:
    # Enrollment sessions, their records (hashes and sealed-file digests, never biometric
    # bytes) and the upload queue (docs/enrollment.md).
    db.execute(
        "CREATE TABLE enrollment_sessions (id TEXT PRIMARY KEY, citizen_ref TEXT NOT NULL, "
        "policy TEXT NOT NULL, plan TEXT NOT NULL, issuance INTEGER NOT NULL, "
        "started_at REAL NOT NULL, updated REAL NOT NULL, chain_head TEXT NOT NULL, "
        "state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '')"
    )
    db.execute("CREATE INDEX enrollment_sessions_state ON enrollment_sessions (state)")
    db.execute(
        "CREATE TABLE enrollment_records (session_id TEXT NOT NULL, seq INTEGER NOT NULL, "
        "record_id TEXT, kind TEXT NOT NULL, position INTEGER NOT NULL, status TEXT NOT NULL, "
        "reason TEXT, detail TEXT, quality INTEGER, met INTEGER, attempts INTEGER, "
        "sha256 TEXT, hash TEXT, sealed_sha256 TEXT, sealed_size INTEGER, captured_at REAL, "
        "timings TEXT, PRIMARY KEY (session_id, seq))"
    )
    db.execute(
        "CREATE TABLE enrollment_uploads (package_id TEXT PRIMARY KEY, session_id TEXT NOT NULL, "
        "path TEXT NOT NULL, total_bytes INTEGER NOT NULL, state TEXT NOT NULL, "
        "created REAL NOT NULL, records TEXT NOT NULL, chunks INTEGER, "
        "acked TEXT NOT NULL DEFAULT '[]', acked_chunks INTEGER NOT NULL DEFAULT 0, "
        "reason TEXT NOT NULL DEFAULT '')"
    )


def _m4_signed_outbox(db: sqlite_utils.Database) -> None:
    # Events rendered and signed when they are stored (Outbox.signer): the drain only sends.
    db.execute("ALTER TABLE outbox ADD COLUMN payload BLOB")
    db.execute("ALTER TABLE outbox ADD COLUMN sig TEXT")


def _m5_outbox_depth(db: sqlite_utils.Database) -> None:
    # The outbox's depth, maintained by triggers in the same transaction as every insert and
    # delete (by any process and any code path): reading it is one row, where ``count(*)``
    # walks a whole index (2.4 ms at 100k rows, under the store lock, on every event write).
    db.execute(
        "CREATE TABLE outbox_depth (id INTEGER PRIMARY KEY CHECK (id = 0), n INTEGER NOT NULL)"
    )
    db.execute("INSERT INTO outbox_depth (id, n) SELECT 0, count(*) FROM outbox")
    db.execute(
        "CREATE TRIGGER outbox_depth_insert AFTER INSERT ON outbox "
        "BEGIN UPDATE outbox_depth SET n = n + 1 WHERE id = 0; END"
    )
    db.execute(
        "CREATE TRIGGER outbox_depth_delete AFTER DELETE ON outbox "
        "BEGIN UPDATE outbox_depth SET n = n - 1 WHERE id = 0; END"
    )


# Each entry moves the schema from version i to i + 1. Append only; never edit a shipped one.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _m1_core,
    _m2_trust,
    _m3_enrollment,
    _m4_signed_outbox,
    _m5_outbox_depth,
]

# Space given back (Store.reclaim): when the outbox is empty, from this many free pages (256
# KiB with SQLite's default 4 KiB page); while rows wait, from RECLAIM_MIN_FREE_PAGES (4 MiB)
# if the free pages are also >= 4x the used ones (a drain well under way).
RECLAIM_EMPTY_FREE_PAGES = 64
RECLAIM_MIN_FREE_PAGES = 1024
# The WAL file is truncated to this size after a checkpoint (PRAGMA journal_size_limit):
# without it a WAL grown by a burst keeps its size forever.
WAL_SIZE_LIMIT = 4 * 1024 * 1024


def register_migration(fn: Callable[[sqlite_utils.Database], None]) -> None:
    """Add a later layer's migration (called at import time of that layer, in a fixed order)."""
    if fn not in MIGRATIONS:
        MIGRATIONS.append(fn)


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    id: str
    type: str
    topic: str
    data: str
    qos: int
    retain: bool
    created: float
    payload: bytes | None = None  # the rendered message, when signed at store time
    sig: str | None = None  # its device signature header


def render_event(
    row_id: str, seq: int, device: str, type_: str, created: float, data_json: str
) -> bytes:
    """The event message (docs/protocol.md, "Events"). ``data_json`` is already JSON text:
    it is spliced in, not re-encoded."""
    head = json.dumps(
        {"id": row_id, "seq": seq, "device": device, "type": type_, "ts": created},
        separators=(",", ":"),
    )
    return (head[:-1] + ',"data":' + data_json + "}").encode()


def seq_ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, de-duplicated seqs as ``(first, last)`` runs of consecutive numbers."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


class Store:
    """Owner of the SQLite connection. Thread-safe: every access holds ``lock``."""

    def __init__(self, state_dir: Path, *, synchronous: str = "FULL") -> None:
        self.state_dir = state_dir
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StoreError(
                f"cannot create state directory {state_dir}: {exc.strerror}",
                details={"path": str(state_dir)},
            ) from exc
        self.path = state_dir / DB_NAME
        self.lock = threading.RLock()
        self._depth = 0
        # Number of the outermost transaction (raised at each BEGIN): what a memo of a read
        # inside one transaction is keyed on (CommandLog.lookup).
        self._txn = 0
        try:
            self.conn = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=10
            )
            os.chmod(self.path, 0o600)
            self._incremental_vacuum()
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            self.conn.execute(f"PRAGMA synchronous={synchronous}")
            self._synchronous = synchronous.upper()
            self.conn.execute("PRAGMA foreign_keys=ON")
            self._db: sqlite_utils.Database | None = None
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"cannot open store {self.path}: {exc}", details={"path": str(self.path)}
            ) from exc
        self.outbox = Outbox(self)
        self.commands = CommandLog(self)

    # -- schema ---------------------------------------------------------------------------

    @property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils view of the same connection (imported on first use)."""
        if self._db is None:
            import sqlite_utils

            self._db = sqlite_utils.Database(self.conn)
        return self._db

    @property
    def schema_version(self) -> int:
        (v,) = self.conn.execute("PRAGMA user_version").fetchone()
        return int(v)

    def _migrate(self) -> None:
        current = self.schema_version
        if current > len(MIGRATIONS):
            raise StoreError(
                f"store schema version {current} is newer than this software "
                f"({len(MIGRATIONS)}): refusing to run an older daemon on a newer database",
                details={"schema": current, "supported": len(MIGRATIONS)},
            )
        for version in range(current, len(MIGRATIONS)):
            with self.transaction():
                # Re-read under the write lock (BEGIN IMMEDIATE): another process opening the
                # same new store at the same moment (the daemon starting while a local tool
                # writes its first event) may have run this step already.
                if self.schema_version > version:
                    continue
                log.info("store: migrating schema %d -> %d", version, version + 1)
                MIGRATIONS[version](self.db)
                self.conn.execute(f"PRAGMA user_version={version + 1}")

    def _incremental_vacuum(self) -> None:
        """Pages freed by deletes can be given back to the file system (:meth:`reclaim`):
        ``auto_vacuum = INCREMENTAL`` must be set before the first table is created, or be
        followed by one ``VACUUM`` (https://sqlite.org/pragma.html#pragma_auto_vacuum), which
        a store made by an earlier version gets once, at its first open by this one."""
        (mode,) = self.conn.execute("PRAGMA auto_vacuum").fetchone()
        if mode == 2:
            return
        self.conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        (tables,) = self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        if not tables:
            return  # a new store: the setting applies as it is created
        log.info("store: enabling incremental vacuum (one VACUUM of %s)", self.path)
        try:
            self.conn.execute("VACUUM")
        except sqlite3.OperationalError as exc:  # another process holds it: next start
            log.warning("store: VACUUM to enable incremental vacuum failed: %s", exc)

    def reclaim(self, *, force: bool = False) -> int:
        """Give the pages freed by deletes back to the file system when the outbox is empty
        (from ``RECLAIM_EMPTY_FREE_PAGES``) or they are many and four times the used ones
        (``RECLAIM_MIN_FREE_PAGES``): after a drain the file shrinks to about what its live
        rows need instead of staying at its high-water mark. Then the WAL is checkpointed and
        truncated. Returns the pages given back. An interruption loses nothing: only free
        pages move."""
        with self.lock:
            if self._depth:
                return 0  # inside a transaction: after it
            (free,) = self.conn.execute("PRAGMA freelist_count").fetchone()
            if not force:
                if free < RECLAIM_EMPTY_FREE_PAGES:
                    return 0
                if self.outbox.depth():
                    (pages,) = self.conn.execute("PRAGMA page_count").fetchone()
                    if free < RECLAIM_MIN_FREE_PAGES or free < 4 * (pages - free):
                        return 0
            if not free:
                return 0
            try:
                # executescript steps the pragma to its end: execute() stops after one step,
                # which frees one page.
                self.conn.executescript("PRAGMA incremental_vacuum;")
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.OperationalError as exc:  # locked by another process: next time
                log.debug("store: reclaiming free pages failed: %s", exc)
                return 0
        log.info("store: gave %d free pages back to the file system", free)
        return int(free)

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One durable transaction. Re-entrant: a transaction opened inside another (in the
        same thread, which holds ``lock``) joins it, so several steps can share one fsync.

        ``durable=False``: committed without waiting for the disk (``synchronous=NORMAL``: in
        WAL mode the commit is atomic and survives the process being killed, but a power cut
        may lose it, https://sqlite.org/pragma.html#pragma_synchronous); a later durable commit
        or :meth:`sync` makes it durable. The caller decides after the commit, with
        :meth:`sync`, whether it needs that (a read-only command does not)."""
        with self.lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self.conn
                finally:
                    self._depth -= 1
                return
            lazy = not durable and self._synchronous in ("FULL", "EXTRA")
            try:
                if lazy:  # the level cannot change inside a transaction
                    self.conn.execute("PRAGMA synchronous=NORMAL")
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self._restore_synchronous(lazy)
                raise StoreError(f"store unavailable: {exc}", retryable=True) from exc
            self._txn += 1
            self._depth = 1
            try:
                yield self.conn
            except sqlite3.Error as exc:
                # Disk full, I/O error, a locked file: the caller gets our error type.
                self._depth = 0
                self._rollback()
                self._restore_synchronous(lazy)
                raise StoreError(f"store write failed: {exc}", retryable=True) from exc
            except BaseException:
                self._depth = 0
                self._rollback()
                self._restore_synchronous(lazy)
                raise
            self._depth = 0
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(f"store commit failed: {exc}", retryable=True) from exc
            finally:
                self._restore_synchronous(lazy)

    def _restore_synchronous(self, lazy: bool) -> None:
        if lazy:
            try:
                self.conn.execute(f"PRAGMA synchronous={self._synchronous}")
            except sqlite3.Error:
                log.exception("store: restoring synchronous=%s failed", self._synchronous)

    def sync(self) -> None:
        """Make every transaction committed so far durable, ``durable=False`` ones included:
        one fsync of the WAL, which is what a ``synchronous=FULL`` commit does in WAL mode
        (https://sqlite.org/wal.html; a checkpoint syncs the WAL before it copies frames, so
        frames already checkpointed are on disk too). Several commits share one call: group
        commit. A no-op with a store opened with a weaker ``synchronous``."""
        if self._synchronous not in ("FULL", "EXTRA"):
            return
        path = f"{self.path}-wal"
        if not os.path.exists(path):
            path = str(self.path)  # not in WAL mode after all: the commits are in the file
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StoreError(
                f"store sync failed: {exc.strerror}", retryable=True, details={"path": path}
            ) from exc

    def _rollback(self) -> None:
        try:
            self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.debug("rollback after a failed transaction failed", exc_info=True)

    # -- small things -----------------------------------------------------------------------

    def audit(self, actor: str, action: str, outcome: str, **details: Any) -> None:
        """Append an audit row (who asked what, and what the daemon decided)."""
        with self.transaction() as c:
            c.execute(
                "INSERT INTO audit (ts, actor, action, outcome, details) VALUES (?,?,?,?,?)",
                (time.time(), actor, action, outcome, json.dumps(details, default=str)),
            )

    def audit_tail(self, n: int = 20) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.conn.execute(
                "SELECT ts, actor, action, outcome, details FROM audit ORDER BY id DESC LIMIT ?",
                (n,),
            ).fetchall()
        return [
            {
                "ts": r[0],
                "actor": r[1],
                "action": r[2],
                "outcome": r[3],
                "details": json.loads(r[4]),
            }
            for r in rows
        ]

    def kv_get(self, key: str) -> str | None:
        with self.lock:
            row = self.conn.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def kv_set(self, key: str, value: str) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value))

    def record_config(
        self, source: str, status: str, document: dict[str, Any], reason: str = ""
    ) -> int:
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO config_history (ts, source, status, reason, document) "
                "VALUES (?,?,?,?,?)",
                (time.time(), source, status, reason, json.dumps(document)),
            )
            return int(cur.lastrowid or 0)

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                total += p.stat().st_size
        return total

    def integrity_check(self) -> str:
        with self.lock:
            (res,) = self.conn.execute("PRAGMA integrity_check").fetchone()
        return str(res)

    def close(self) -> None:
        with self.lock:
            self.conn.close()


class Outbox:
    """Store-and-forward queue. ``put`` returns once the event is durable; the agent publishes
    rows in ``seq`` order and deletes them when the broker acknowledged them (QoS 1, ``ack``)
    or, with ``mqtt.delivery = "end_to_end"``, when the fleet's ingest did (``ack_ranges``)."""

    def __init__(self, store: Store) -> None:
        self._s = store
        self._cap = 1_000_000
        self.changed = threading.Condition(threading.Lock())
        # With a signer, each event is rendered and signed by the device key as it is stored
        # (in the same transaction): a stored event is already a signed message, and the
        # drain after an outage only sends. Rows stored without one are signed when sent.
        self.signer: Callable[[bytes], str] | None = None
        self.device_id = ""

    def set_signer(self, device_id: str, signer: Callable[[bytes], str] | None) -> None:
        self.device_id = device_id
        self.signer = signer

    def set_cap(self, cap: int) -> None:
        self._cap = cap

    def put(
        self, type_: str, topic: str, data: dict[str, Any], *, qos: int = 1, retain: bool = False
    ) -> tuple[int, str]:
        """Append one event durably; returns (seq, id)."""
        return self.put_many([(type_, topic, data)], qos=qos, retain=retain)[0]

    def put_many(
        self,
        events: Iterable[tuple[str, str, dict[str, Any]]],
        *,
        qos: int = 1,
        retain: bool = False,
    ) -> list[tuple[int, str]]:
        """Append several events in one transaction (one fsync)."""
        out: list[tuple[int, str]] = []
        now = time.time()
        with self._s.transaction() as c:
            (depth,) = c.execute("SELECT n FROM outbox_depth WHERE id = 0").fetchone()
            rows = list(events)
            if depth + len(rows) > self._cap:
                raise StoreError(
                    f"outbox full ({depth} rows, cap {self._cap}); event refused",
                    code=ErrorCode.OUTBOX_FULL,
                    retryable=True,
                    details={"depth": depth},
                )
            for type_, topic, data in rows:
                eid = uuid.uuid4().hex
                data_json = json.dumps(data, separators=(",", ":"))
                cur = c.execute(
                    "INSERT INTO outbox (id, type, topic, data, qos, retain, created) "
                    "VALUES (?,?,?,?,?,?,?)",
                    (eid, type_, topic, data_json, qos, int(retain), now),
                )
                seq = int(cur.lastrowid or 0)
                if self.signer is not None:
                    payload = render_event(eid, seq, self.device_id, type_, now, data_json)
                    c.execute(
                        "UPDATE outbox SET payload=?, sig=? WHERE seq=?",
                        (payload, self.signer(payload), seq),
                    )
                out.append((seq, eid))
        with self.changed:
            self.changed.notify_all()
        return out

    def pending(self, after_seq: int = 0, limit: int = 500) -> list[OutboxRow]:
        with self._s.lock:
            rows = self._s.conn.execute(
                "SELECT seq, id, type, topic, data, qos, retain, created, payload, sig "
                "FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [
            OutboxRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7], r[8], r[9])
            for r in rows
        ]

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged rows, one statement per run of consecutive seqs (the drain
        acknowledges in order, so a batch is usually one range). Returns the seqs given."""
        ranges = seq_ranges(seqs)
        if not ranges:
            return 0
        with self._s.transaction() as c:
            c.executemany("DELETE FROM outbox WHERE seq BETWEEN ? AND ?", ranges)
        self._s.reclaim()
        return sum(last - first + 1 for first, last in ranges)

    def ack_ranges(self, ranges: Iterable[tuple[int, int, str]]) -> int:
        """Delete the rows of end-to-end acknowledged ranges (``first, last, id of last``); a
        range is applied only if the row ``last`` exists and carries that id (so a stale or
        foreign acknowledgement deletes nothing). Returns the rows deleted."""
        deleted = 0
        with self._s.transaction() as c:
            for first, last, eid in ranges:
                row = c.execute("SELECT id FROM outbox WHERE seq = ?", (last,)).fetchone()
                if row is None or row[0] != eid:
                    continue
                cur = c.execute("DELETE FROM outbox WHERE seq BETWEEN ? AND ?", (first, last))
                deleted += cur.rowcount
        if deleted:
            self._s.reclaim()
        return deleted

    def published_through(self) -> int:
        """End-to-end delivery: every row with a lower or equal seq was acknowledged by the
        broker (PUBACK) at some time; 0 when none was recorded."""
        v = self._s.kv_get(PUBLISHED_KEY)
        return int(v) if v else 0

    def set_published_through(self, seq: int) -> None:
        """Record the PUBACK watermark (only ever raised)."""
        with self._s.transaction() as c:
            c.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                "value = max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                (PUBLISHED_KEY, str(seq)),
            )

    def oldest_seq(self) -> int:
        """The oldest row's seq, 0 when the outbox is empty."""
        with self._s.lock:
            (n,) = self._s.conn.execute("SELECT min(seq) FROM outbox").fetchone()
        return int(n or 0)

    def depth(self) -> int:
        with self._s.lock:
            (n,) = self._s.conn.execute("SELECT n FROM outbox_depth WHERE id = 0").fetchone()
        return int(n)

    def last_seq(self) -> int:
        with self._s.lock:
            row = self._s.conn.execute(
                "SELECT seq FROM sqlite_sequence WHERE name='outbox'"
            ).fetchone()
        return int(row[0]) if row else 0


class CommandLog:
    """At-most-once execution: a command id is recorded *before* its handler runs.

    Only this class writes the ``commands`` table, so :meth:`lookup` keeps its last answer for
    the rest of the transaction it ran in, until this class writes: the trust layer's
    re-delivery check and the dispatcher look up the same id of a signed command in the same
    admission transaction, and the second lookup costs no statement."""

    def __init__(self, store: Store) -> None:
        self._s = store
        # (transaction number, id, answer) of the last lookup inside a transaction.
        self._memo: tuple[int, str, tuple[str, str, str | None] | None] | None = None

    def begin(
        self,
        cid: str,
        name: str,
        actor: str = "anonymous",
        details: dict[str, Any] | None = None,
    ) -> tuple[bool, str | None, str]:
        """Claim ``cid`` and audit the acceptance in the same transaction (one fsync).
        ``details`` (e.g. the trust decision) go into the acceptance's audit row.

        Returns (claimed, stored reply or None, state)."""
        now = time.time()
        with self._s.transaction() as c:
            self._memo = None
            row = c.execute("SELECT state, reply FROM commands WHERE id=?", (cid,)).fetchone()
            if row is not None:
                c.execute(
                    "INSERT INTO audit (ts, actor, action, outcome, details) VALUES (?,?,?,?,?)",
                    (now, actor, name, "repeat", json.dumps({"id": cid, "state": row[0]})),
                )
                return False, row[1], str(row[0])
            c.execute(
                "INSERT INTO commands (id, name, state, received, actor) VALUES (?,?,?,?,?)",
                (cid, name, "running", now, actor),
            )
            c.execute(
                "INSERT INTO audit (ts, actor, action, outcome, details) VALUES (?,?,?,?,?)",
                (now, actor, name, "accepted", json.dumps({"id": cid, **(details or {})})),
            )
        return True, None, "running"

    def finish(self, cid: str, reply: str, outcome: str = "done", *, durable: bool = True) -> bool:
        """Store the reply once, auditing the outcome; False if another path (timeout vs.
        handler) finished first. ``durable=False``: the caller syncs (Store.sync) before it
        sends the reply."""
        now = time.time()
        with self._s.transaction(durable=durable) as c:
            self._memo = None
            cur = c.execute(
                "UPDATE commands SET state='done', reply=?, finished=?, outcome=? "
                "WHERE id=? AND state='running'",
                (reply, now, outcome, cid),
            )
            if cur.rowcount != 1:
                return False
            c.execute(
                "INSERT INTO audit (ts, actor, action, outcome, details) "
                "SELECT ?, actor, name, ?, ? FROM commands WHERE id=?",
                (now, outcome, json.dumps({"id": cid}), cid),
            )
            return True

    def stored_reply(self, cid: str) -> tuple[str | None, str] | None:
        """(reply, state) of a known id, None for a new one."""
        with self._s.lock:
            row = self._s.conn.execute(
                "SELECT reply, state FROM commands WHERE id=?", (cid,)
            ).fetchone()
        return None if row is None else (row[0], str(row[1]))

    def lookup(self, cid: str) -> tuple[str, str, str | None] | None:
        """(command name, state, stored reply or None) of a known id, None for a new one."""
        with self._s.lock:
            memo = self._memo
            if memo is not None and self._s._depth and memo[0] == self._s._txn and memo[1] == cid:
                return memo[2]
            row = self._s.conn.execute(
                "SELECT name, state, reply FROM commands WHERE id=?", (cid,)
            ).fetchone()
            known = None if row is None else (str(row[0]), str(row[1]), row[2])
            self._memo = (self._s._txn, cid, known) if self._s._depth else None
        return known

    def record(
        self,
        cid: str,
        name: str,
        actor: str,
        reply: str,
        outcome: str,
        details: dict[str, Any] | None = None,
    ) -> bool:
        """Record a read-only command and its reply in one transaction; False if the id was
        recorded meanwhile. ``details`` go into the audit row."""
        now = time.time()
        with self._s.transaction() as c:
            self._memo = None
            cur = c.execute(
                "INSERT OR IGNORE INTO commands (id, name, state, received, finished, reply, "
                "actor, outcome) VALUES (?,?,?,?,?,?,?,?)",
                (cid, name, "done", now, now, reply, actor, outcome),
            )
            if cur.rowcount != 1:
                return False
            c.execute(
                "INSERT INTO audit (ts, actor, action, outcome, details) VALUES (?,?,?,?,?)",
                (now, actor, name, outcome, json.dumps({"id": cid, **(details or {})})),
            )
            return True

    def interrupted(self) -> list[tuple[str, str]]:
        """Commands that were running when the daemon last stopped: (id, name)."""
        with self._s.lock:
            rows = self._s.conn.execute(
                "SELECT id, name FROM commands WHERE state='running'"
            ).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def prune(self, older_than_s: float) -> int:
        with self._s.transaction() as c:
            self._memo = None
            cur = c.execute(
                "DELETE FROM commands WHERE state='done' AND received < ?",
                (time.time() - older_than_s,),
            )
            return cur.rowcount
