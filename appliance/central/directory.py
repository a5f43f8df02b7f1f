"""The central citizen directory: the stand-in for the national population database.

It keeps its own store (one SQLite file) of citizen records loaded from the citizens file
format (:func:`appliance.central.citizens.load_citizens`, every entry validated), and answers
kiosks' lookups by 12-digit CCCD number or 9-digit CMND number over MQTT request/response
(protocol: :mod:`appliance.citizen.lookup`; docs/central.md "Citizen directory"):

* subscribes to ``{prefix}/+/lookup/request`` (QoS 1) with the ``directory`` broker identity;
  the shipped ACL lets a kiosk publish there only under its own id, so the device in the topic
  is the asking kiosk;
* answers on ``{prefix}/{device}/lookup/response`` (the only response topic it uses: a request
  naming another MQTT 5 response topic is answered there anyway), with the request's
  correlation data, a document signed by a key with the ``directory`` role: the record
  (re-validated before every answer: the directory never answers an invalid record), or
  ``not_found``, and whether the centre already holds an enrollment of this citizen
  (``pending``: received in full, not yet verified; ``completed``: verified), from its index
  of the central receiver's store (:class:`~appliance.central.store.PackageStore`), which
  :meth:`DirectoryStore.sync_packages` keeps up to date (``appliance fleet directory`` every
  ``--sync-every`` seconds; a receiver in the same process at each verdict through
  :func:`corrections_hook`); a lookup reads the index only;
* records the corrections that verified enrollment packages carry (:meth:`DirectoryStore.
  record_corrections`), for a decision at the centre; nothing a kiosk sends edits a record.

Why a ``directory`` role: a citizen record is what the card will say. Operator keys (one per
officer's tool) sign commands and the ``ingest`` key attests that biometrics arrived; neither
should be able to make a kiosk show a forged identity, so the answers need a key of their own
that lives only with the directory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..citizen.batch import BATCH_CONTEXT, BATCH_ID_RE, BATCH_TYPE
from ..citizen.lookup import (
    ANSWER_CONTEXT,
    ANSWER_TYPE,
    NONCE_RE,
    NUMBER_RE,
    REQUEST_ID_RE,
    CorrectionRequest,
    check_corrections,
    record_to_json,
    response_topic,
)
from ..citizen.validation import CitizenDataInvalid, Stage, validate_citizen
from ..errors import StoreError, TrustError
from ..protocol.codes import ErrorCode
from ..protocol.topics import TopicKind, Topics, parse, validate_segment
from ..trust.certs import NAME_RE, OperatorKey
from ..trust.signeddoc import sign_document
from .citizens import Citizen
from .package import decode_container
from .service import SubscribedService
from .store import PackageStore

log = logging.getLogger(__name__)

DIRECTORY_NAME = "directory"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS citizens (citizen_ref TEXT PRIMARY KEY, "
    "personal_id TEXT NOT NULL UNIQUE, old_id_number TEXT, record TEXT NOT NULL, "
    "loaded_at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS citizens_old_id ON citizens (old_id_number)",
    "CREATE TABLE IF NOT EXISTS corrections (device TEXT NOT NULL, package_id TEXT NOT NULL, "
    "citizen_ref TEXT NOT NULL, field TEXT NOT NULL, original TEXT, requested TEXT, "
    "state TEXT NOT NULL, problems TEXT NOT NULL, received_at REAL NOT NULL, "
    "PRIMARY KEY (device, package_id, field))",
    "CREATE INDEX IF NOT EXISTS corrections_citizen ON corrections (citizen_ref)",
    "CREATE TABLE IF NOT EXISTS enrollments (device TEXT NOT NULL, package_id TEXT NOT NULL, "
    "citizen_ref TEXT NOT NULL, state TEXT NOT NULL, at REAL, PRIMARY KEY (device, package_id))",
    "CREATE INDEX IF NOT EXISTS enrollments_citizen ON enrollments (citizen_ref)",
    "CREATE TABLE IF NOT EXISTS batches (batch_id TEXT PRIMARY KEY, area TEXT NOT NULL, "
    "created_at REAL NOT NULL, expires_at REAL NOT NULL, total INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS batch_members (batch_id TEXT NOT NULL, seq INTEGER NOT NULL, "
    "citizen_ref TEXT NOT NULL, PRIMARY KEY (batch_id, seq))",
)
BATCH_CHUNK_RECORDS = 200


def load_directory_key(home: Path) -> OperatorKey:
    """``<home>/directory.key`` and its certificate, which must carry the ``directory`` role."""
    key_path = Path(home) / f"{DIRECTORY_NAME}.key"
    if not key_path.exists():
        raise TrustError(
            f"no directory signing key {key_path}: issue one with 'appliance fleet keys "
            f"issue-operator --generate-key {home} --name {DIRECTORY_NAME} --role directory'",
            code=ErrorCode.KEY_MISSING,
        )
    key = OperatorKey.load(key_path, Path(home) / f"{DIRECTORY_NAME}.cert")
    if "directory" not in key.certificate.roles:
        raise TrustError(
            f"{key_path}'s certificate lacks the directory role: kiosks would refuse its answers",
            code=ErrorCode.FORBIDDEN_ROLE,
        )
    return key


class DirectoryStore:
    """Citizen records and correction requests in one SQLite file (WAL, synchronous=FULL)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        # sync_packages: packages with a verdict already indexed, complete uploads without one
        # by citizen, and the citizen each such upload names (read once)
        self._scan_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._scanned: set[tuple[str, str]] = set()
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._pending_refs: dict[tuple[str, str], str] = {}
        self.conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        with contextlib.suppress(OSError):
            self.path.chmod(0o600)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        for statement in _SCHEMA:
            self.conn.execute(statement)

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    # -- records -----------------------------------------------------------------------------

    def load(self, citizens: dict[str, Citizen]) -> int:
        """Add or replace records (already validated by ``load_citizens``); one transaction.
        A number already held by another reference is refused (``citizen_conflict``)."""
        now = time.time()
        rows = []
        for ref, c in citizens.items():
            record = validate_citizen(
                {**c.model_dump(exclude_none=True), "citizen_ref": ref},
                stage=Stage.DIRECTORY,
                where=ref,
            )
            rows.append(
                (
                    ref,
                    record.personal_id,
                    record.old_id_number,
                    json.dumps(record_to_json(record), ensure_ascii=False),
                    now,
                )
            )
        try:
            with self._tx() as conn:
                conn.executemany(
                    "INSERT OR REPLACE INTO citizens (citizen_ref, personal_id, old_id_number, "
                    "record, loaded_at) VALUES (?,?,?,?,?)",
                    rows,
                )
        except sqlite3.IntegrityError as exc:
            raise StoreError(
                f"citizens: a personal_id is held by two references ({exc})",
                code=ErrorCode.CITIZEN_CONFLICT,
            ) from None
        return len(rows)

    def find(self, number: str) -> dict[str, Any] | None:
        """The stored record (JSON form) for a 12-digit or 9-digit number, or None."""
        column = "personal_id" if len(number) == 12 else "old_id_number"
        with self._lock:
            row = self.conn.execute(
                f"SELECT record FROM citizens WHERE {column}=?",  # noqa: S608 - fixed names
                (number,),
            ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def count(self) -> int:
        with self._lock:
            (n,) = self.conn.execute("SELECT COUNT(*) FROM citizens").fetchone()
        return int(n)

    # -- corrections -------------------------------------------------------------------------

    def record_corrections(self, device: str, package_id: str, manifest: dict[str, Any]) -> int:
        """Keep the corrections of a verified package, each checked against the directory's
        record (``state`` ``pending`` for a decision, or ``invalid`` with its problems).
        Idempotent per (device, package, field). Returns how many were new."""
        raw = manifest.get("corrections") or []
        ref = str(manifest.get("citizen_ref", ""))
        if not isinstance(raw, list) or not raw:
            return 0
        record = self._by_ref(ref)
        now = time.time()
        rows = []
        for item in raw:
            try:
                corr = CorrectionRequest.model_validate(item)
            except ValueError as exc:
                log.warning("%s/%s: correction %r malformed: %s", device, package_id, item, exc)
                continue
            if record is None:
                problems = [{"field": "citizen_ref", "rule": "required", "message": "unknown"}]
            else:
                problems = [p.to_dict() for p in check_corrections(record, [corr])]
            rows.append(
                (
                    device,
                    package_id,
                    ref,
                    corr.field,
                    corr.original,
                    corr.requested,
                    "invalid" if problems else "pending",
                    json.dumps(problems, ensure_ascii=False),
                    now,
                )
            )
        with self._tx() as c:
            before = c.total_changes
            c.executemany(
                "INSERT OR IGNORE INTO corrections (device, package_id, citizen_ref, field, "
                "original, requested, state, problems, received_at) VALUES (?,?,?,?,?,?,?,?,?)",
                rows,
            )
            return c.total_changes - before

    def sync_packages(self, packages: PackageStore) -> int:
        """Bring the index of what the centre holds up to date with the receiver's store: the
        ``enrollments`` table (verified packages) and the uploads that have every chunk but no
        verdict yet; record the corrections of newly verified packages. Returns how many
        correction requests were new. Incremental: a package with a verdict is read once per
        process, later calls only list the directory names. Lookups read the index only."""
        new = 0
        with self._scan_lock:  # one scan at a time; lookups meanwhile read the last index
            rows = []
            verified = []
            pending: dict[str, list[dict[str, Any]]] = {}
            for device, package_id in packages.package_ids():
                key = (device, package_id)
                if key in self._scanned:
                    continue
                try:
                    res = packages.result(device, package_id)
                except StoreError as exc:
                    log.error("%s/%s: %s", device, package_id, exc.message)
                    continue
                if res is None:
                    ref = self._pending_ref(packages, device, package_id)
                    if ref:
                        pending.setdefault(ref, []).append(
                            {"device": device, "package_id": package_id, "state": "pending"}
                        )
                    continue
                if res.get("status") == "complete":
                    ref = str(res.get("summary", {}).get("citizen_ref", ""))
                    rows.append((device, package_id, ref, "completed", res.get("verified_at")))
                    verified.append(res)
                self._scanned.add(key)
                self._pending_refs.pop(key, None)
            if rows:
                with self._tx() as c:
                    c.executemany(
                        "INSERT OR IGNORE INTO enrollments (device, package_id, citizen_ref, "
                        "state, at) VALUES (?,?,?,?,?)",
                        rows,
                    )
            for res in verified:
                new += _record_from(self, packages, res)
            with self._state_lock:
                self._pending = pending
        return new

    def _pending_ref(self, packages: PackageStore, device: str, package_id: str) -> str | None:
        """The citizen a complete upload without a verdict names (its manifest read unverified,
        once), or None while chunks are missing or it cannot be read."""
        key = (device, package_id)
        if key in self._pending_refs:
            return self._pending_refs[key]
        try:
            info = packages.upload_info(device, package_id)
            if info is None or len(packages.received(device, package_id)) != int(info["count"]):
                return None
            manifest = json.loads(
                decode_container(packages.assemble(device, package_id)).manifest_bytes
            )
        except (TrustError, StoreError, ValueError, OSError, KeyError, TypeError):
            return None
        ref = str(manifest.get("citizen_ref", "")) if isinstance(manifest, dict) else ""
        self._pending_refs[key] = ref
        return ref

    def enrollment_state(self, citizen_ref: str) -> tuple[str, list[dict[str, Any]]]:
        """What the centre holds for ``citizen_ref``, as of the last :meth:`sync_packages`:
        ``completed`` (a package verified), ``pending`` (an upload with every chunk, no verdict
        yet, e.g. held for a device not yet approved), else ``none``. Rejected packages do not
        count; an upload still missing chunks cannot be attributed. Returns the state and the
        packages behind it."""
        if not citizen_ref:
            return "none", []
        with self._lock:
            rows = self.conn.execute(
                "SELECT device, package_id, state, at FROM enrollments WHERE citizen_ref=? "
                "ORDER BY at",
                (citizen_ref,),
            ).fetchall()
        if rows:
            return "completed", [
                {"device": r[0], "package_id": r[1], "state": r[2], "at": r[3]} for r in rows
            ]
        with self._state_lock:
            waiting = list(self._pending.get(citizen_ref, []))
        return ("pending" if waiting else "none"), waiting

    def corrections(self, citizen_ref: str | None = None) -> list[dict[str, Any]]:
        sql = (
            "SELECT device, package_id, citizen_ref, field, original, requested, state, "
            "problems, received_at FROM corrections"
        )
        args: tuple[str, ...] = ()
        if citizen_ref is not None:
            sql += " WHERE citizen_ref=?"
            args = (citizen_ref,)
        with self._lock:
            rows = self.conn.execute(sql + " ORDER BY received_at, field", args).fetchall()
        keys = ("device", "package_id", "citizen_ref", "field", "original", "requested", "state")
        return [
            {
                **dict(zip(keys, r[:7], strict=True)),
                "problems": json.loads(r[7]),
                "received_at": r[8],
            }
            for r in rows
        ]

    # -- batches (docs/citizen-data.md "Batches") ---------------------------------------------

    def create_batch(
        self,
        batch_id: str,
        *,
        provinces: Sequence[str] = (),
        residence: str | None = None,
        numbers: Sequence[str] = (),
        valid_s: float,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Select the citizens of an area - ``provinces`` (the number's first three digits,
        the province of birth registration), a ``residence`` text (a commune's name in the
        permanent residence) and/or a list of ``numbers`` - into batch ``batch_id``, valid
        ``valid_s`` seconds. ``progress(done, total)`` as members are written. Refuses an id
        in use (``batch_exists``), an empty selection (``batch_empty``) and numbers the
        directory does not hold (``citizen_unknown``, listing them)."""
        if not BATCH_ID_RE.match(batch_id):
            raise StoreError(
                f"batch id {batch_id!r}: 1-64 letters, digits, _ . -", code=ErrorCode.INVALID_ARGS
            )
        clauses: list[str] = []
        args: list[Any] = []
        for p in provinces:
            clauses.append("personal_id LIKE ?")
            args.append(f"{p}%")
        if residence:
            clauses.append("json_extract(record, '$.permanent_residence') LIKE ?")
            args.append(f"%{residence}%")
        with self._lock:
            refs: list[str] = []
            if clauses:
                rows = self.conn.execute(
                    "SELECT citizen_ref FROM citizens WHERE "  # noqa: S608 - fixed clauses
                    + " OR ".join(clauses)
                    + " ORDER BY personal_id",
                    args,
                ).fetchall()
                refs += [r[0] for r in rows]
            unknown = []
            for n in numbers:
                column = "personal_id" if len(n) == 12 else "old_id_number"
                row = self.conn.execute(
                    f"SELECT citizen_ref FROM citizens WHERE {column}=?",  # noqa: S608
                    (n,),
                ).fetchone()
                if row is None:
                    unknown.append(n)
                else:
                    refs.append(row[0])
        if unknown:
            raise StoreError(
                f"{len(unknown)} number(s) not in the directory: {', '.join(unknown[:10])}",
                code=ErrorCode.CITIZEN_UNKNOWN,
                details={"numbers": unknown},
            )
        refs = list(dict.fromkeys(refs))
        if not refs:
            raise StoreError("the selection holds no citizen", code=ErrorCode.BATCH_EMPTY)
        now = time.time()
        area = {"provinces": list(provinces), "residence": residence, "numbers": len(numbers)}
        try:
            with self._tx() as c:
                c.execute(
                    "INSERT INTO batches (batch_id, area, created_at, expires_at, total) "
                    "VALUES (?,?,?,?,?)",
                    (batch_id, json.dumps(area, ensure_ascii=False), now, now + valid_s, len(refs)),
                )
                step = 1000
                for i in range(0, len(refs), step):
                    c.executemany(
                        "INSERT INTO batch_members (batch_id, seq, citizen_ref) VALUES (?,?,?)",
                        [(batch_id, i + k, r) for k, r in enumerate(refs[i : i + step])],
                    )
                    if progress is not None:
                        progress(min(i + step, len(refs)), len(refs))
        except sqlite3.IntegrityError:
            raise StoreError(
                f"batch {batch_id!r} exists already", code=ErrorCode.BATCH_EXISTS
            ) from None
        return self.batch_info(batch_id) or {}

    def batch_info(self, batch_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self.conn.execute(
                "SELECT batch_id, area, created_at, expires_at, total FROM batches "
                "WHERE batch_id=?",
                (batch_id,),
            ).fetchone()
        return None if row is None else _batch_row(row)

    def batches(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self.conn.execute(
                "SELECT batch_id, area, created_at, expires_at, total FROM batches "
                "ORDER BY created_at"
            ).fetchall()
        return [_batch_row(r) for r in rows]

    def batch_records(self, batch_id: str) -> list[dict[str, Any]]:
        """The batch's citizens as they are now (records as lookups answer them)."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT c.record FROM batch_members m JOIN citizens c "
                "ON c.citizen_ref = m.citizen_ref WHERE m.batch_id=? ORDER BY m.seq",
                (batch_id,),
            ).fetchall()
        return [dict(json.loads(r[0])) for r in rows]

    def find_ref(self, citizen_ref: str) -> dict[str, Any] | None:
        """The stored record (JSON form) of a reference, or None."""
        return self._by_ref(citizen_ref)

    def _by_ref(self, citizen_ref: str) -> dict[str, Any] | None:
        with self._lock:
            row = self.conn.execute(
                "SELECT record FROM citizens WHERE citizen_ref=?", (citizen_ref,)
            ).fetchone()
        return None if row is None else dict(json.loads(row[0]))


def _batch_row(row: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "batch_id": row[0],
        "area": json.loads(row[1]),
        "created_at": row[2],
        "expires_at": row[3],
        "total": row[4],
    }


def corrections_hook(
    store: DirectoryStore, packages: PackageStore
) -> Callable[[dict[str, Any]], None]:
    """A receiver's ``on_result``: the corrections of every verified package go to the
    directory's ``corrections`` table (a rejected package brings none)."""

    def on_result(result: dict[str, Any]) -> None:
        if result.get("status") == "complete":
            store.sync_packages(packages)

    return on_result


def _record_from(store: DirectoryStore, packages: PackageStore, result: dict[str, Any]) -> int:
    device, package_id = str(result["device"]), str(result["package_id"])
    try:
        path = packages.package_dir(device, package_id) / "manifest.json"
        manifest = json.loads(path.read_text(encoding="utf-8"))
        n = store.record_corrections(device, package_id, manifest)
    except (OSError, ValueError, StoreError, TrustError, sqlite3.Error) as exc:
        log.error("corrections of %s/%s not recorded: %s", device, package_id, exc)
        return 0
    if n:
        log.info("%d correction request(s) of %s/%s recorded", n, device, package_id)
    return n


Publish = Callable[[str, bytes, bytes | None], bool]


class DirectoryCore:
    """The directory's logic without the network: :meth:`handle` a request, it publishes the
    signed answer with ``publish(topic, payload, correlation_data)``."""

    def __init__(
        self,
        store: DirectoryStore,
        key: OperatorKey,
        publish: Publish,
        *,
        prefix: str = "kiosk",
        today: Callable[[], dt.date] | None = None,
    ) -> None:
        validate_segment(prefix, "topic prefix")
        self.store = store
        self.key = key
        self.publish = publish
        self.prefix = prefix
        self._today = today
        self.stats = {"found": 0, "not_found": 0, "invalid_request": 0, "record_invalid": 0}
        self.stats["dropped"] = 0

    def filter(self) -> str:
        return Topics.anyone(self.prefix).lookup_request

    def handle(
        self,
        topic: str,
        payload: bytes,
        *,
        response_topic_: str | None = None,
        correlation_data: bytes | None = None,
    ) -> bytes | None:
        """One request; returns the answer published (None: dropped, nothing to bind to)."""
        parsed = parse(self.prefix, topic)
        if parsed is None or parsed.kind is not TopicKind.LOOKUP_REQUEST:
            return None
        device = parsed.device
        if not NAME_RE.match(device):
            self.stats["dropped"] += 1
            return None
        try:
            req = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            req = None
        rid = req.get("request_id") if isinstance(req, dict) else None
        nonce = req.get("nonce") if isinstance(req, dict) else None
        if not isinstance(rid, str) or not REQUEST_ID_RE.match(rid):
            # Without a request id the answer could not be bound to anything.
            self.stats["dropped"] += 1
            log.warning("lookup request from %s without a valid request_id dropped", device)
            return None
        answer_topic = response_topic(self.prefix, device)
        if response_topic_ is not None and response_topic_ != answer_topic:
            log.warning(
                "lookup %s from %s asked for response topic %r: answered on %s",
                rid,
                device,
                response_topic_,
                answer_topic,
            )
        if isinstance(req, dict) and "batch" in req:
            docs = self.batch_documents(device, req, rid, nonce)
            for d in docs:
                try:
                    self.publish(answer_topic, d, correlation_data)
                except Exception:
                    log.exception("batch chunk to %s not published", device)
            return docs[-1] if docs else None
        fields = self.answer(req, rid, nonce)
        doc = sign_document(self.key, ANSWER_TYPE, ANSWER_CONTEXT, device, fields)
        self.stats[fields["status"]] += 1
        try:
            self.publish(answer_topic, doc, correlation_data)
        except Exception:
            log.exception("lookup answer to %s not published", device)
        return doc

    def batch_documents(
        self, device: str, req: dict[str, Any], rid: str, nonce: object
    ) -> list[bytes]:
        """The signed chunks of the batch a kiosk asks for (``{"request_id", "nonce",
        "batch"}``): each record re-validated (an invalid one is left out and logged) with the
        centre's enrollment state for it; ``status: not_found`` for an unknown or expired
        batch."""
        batch_id = req.get("batch")
        base: dict[str, Any] = {"request_id": rid, "nonce": nonce, "batch_id": batch_id}
        info = self.store.batch_info(batch_id) if isinstance(batch_id, str) else None
        if info is None or info["expires_at"] <= time.time() or not isinstance(nonce, str):
            self.stats["batch_not_found"] = self.stats.get("batch_not_found", 0) + 1
            fields = {**base, "status": "not_found"}
            return [sign_document(self.key, BATCH_TYPE, BATCH_CONTEXT, device, fields)]
        today = self._today() if self._today is not None else None
        items = []
        for stored in self.store.batch_records(str(batch_id)):
            try:
                record = record_to_json(
                    validate_citizen(stored, stage=Stage.DIRECTORY, today=today)
                )
            except CitizenDataInvalid as exc:
                log.error(
                    "batch %s: record %s invalid, left out: %s",
                    batch_id,
                    stored.get("citizen_ref"),
                    exc,
                )
                continue
            state, _packages = self.store.enrollment_state(record.get("citizen_ref", ""))
            items.append({"citizen": record, "enrollment": state})
        n = BATCH_CHUNK_RECORDS
        chunks = [items[i : i + n] for i in range(0, len(items), n)] or [[]]
        shared = {
            **base,
            "status": "found",
            "area": info["area"],
            "created_at": info["created_at"],
            "expires_at": info["expires_at"],
            "count": len(chunks),
            "total": len(items),
        }
        self.stats["batches"] = self.stats.get("batches", 0) + 1
        return [
            sign_document(
                self.key,
                BATCH_TYPE,
                BATCH_CONTEXT,
                device,
                {**shared, "index": i, "records": chunk},
            )
            for i, chunk in enumerate(chunks)
        ]

    def answer(self, req: Any, rid: str, nonce: object) -> dict[str, Any]:
        """The answer's fields (the signed body adds device, issued_at, issuer)."""
        number = req.get("number")
        base: dict[str, Any] = {"request_id": rid, "nonce": nonce, "number": number}
        problems = []
        if not isinstance(nonce, str) or not NONCE_RE.match(nonce):
            problems.append({"field": "nonce", "rule": "type", "message": "32 hex digits"})
        if not isinstance(number, str) or not NUMBER_RE.match(number):
            problems.append(
                {"field": "number", "rule": "id_format", "message": "must be 12 or 9 digits"}
            )
        extra = set(req) - {"request_id", "nonce", "number"}
        problems += [
            {"field": k, "rule": "unknown_field", "message": "not a request field"}
            for k in sorted(extra)
        ]
        if problems:
            return {**base, "status": "invalid_request", "enrollment": "none", "problems": problems}
        assert isinstance(number, str)
        stored = self.store.find(number)
        if stored is None:
            return {**base, "status": "not_found", "enrollment": "none"}
        try:
            today = self._today() if self._today is not None else None
            record = record_to_json(validate_citizen(stored, stage=Stage.DIRECTORY, today=today))
        except CitizenDataInvalid as exc:
            log.error(
                "directory record %s invalid, not answered: %s", stored.get("citizen_ref"), exc
            )
            return {
                **base,
                "status": "record_invalid",
                "enrollment": "none",
                "problems": exc.details["problems"],
            }
        state, packages = self.store.enrollment_state(record.get("citizen_ref", ""))
        return {
            **base,
            "status": "found",
            "citizen": record,
            "enrollment": state,
            "enrollments": packages,
        }


class Directory(SubscribedService):
    """:class:`DirectoryCore` on a paho MQTT 5 client (identity ``directory`` under the ACL)."""

    name = "directory"

    def __init__(
        self,
        core: DirectoryCore,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        client_id: str = "central-directory",
        tls: dict[str, Any] | None = None,
        insecure: bool = False,
    ) -> None:
        super().__init__(host=host, port=port, client_id=client_id, tls=tls, insecure=insecure)
        self.core = core
        core.publish = self._publish

    def _filter(self) -> str:
        return self.core.filter()

    def start(self, timeout: float = 10.0) -> Directory:
        self._connect(timeout, clean_start=True)
        log.info("directory on %s:%d serving %s", self.host, self.port, self.core.filter())
        return self

    def stop(self) -> None:
        self._close()

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        try:
            self.core.handle(
                msg.topic,
                bytes(msg.payload),
                response_topic_=getattr(props, "ResponseTopic", None) or None,
                correlation_data=getattr(props, "CorrelationData", None),
            )
        except Exception:
            log.exception("directory: request on %s not handled", msg.topic)

    def _publish(self, topic: str, payload: bytes, correlation_data: bytes | None) -> bool:
        props = None
        if correlation_data is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.CorrelationData = correlation_data
        info = self.client.publish(topic, payload, qos=1, properties=props)
        return info.rc == paho.MQTT_ERR_SUCCESS
