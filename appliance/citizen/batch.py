"""Directory batches: the citizens expected in an area, for a day offline (docs/citizen-data.md
"Batches").

Before a mobile team leaves, the kiosk downloads a batch the centre prepared
(``appliance fleet directory batch create``): it asks on its lookup request topic with
``{"request_id", "nonce", "batch": "<batch id>"}`` and the directory answers on the lookup
response topic with one signed document per chunk (type :data:`BATCH_TYPE`, context
:data:`BATCH_CONTEXT`, a key with the ``directory`` role, for this device), each repeating the
request id and nonce and carrying ``batch_id, index, count, total, area, created_at,
expires_at`` and up to a few hundred ``records`` (each ``{"citizen": {...}, "enrollment"}``).
A chunk is accepted only if its document checks hold (docs/trust.md), it answers this request,
it agrees with the other chunks, and every record passes the validation (``Stage.DIRECTORY``).

Only a complete, consistent batch replaces the stored one: ``<state>/citizen-batch.json``,
written atomically, mode 0600 in the 0700 state directory. It holds personal data (names,
dates of birth, sex, CCCD and CMND numbers, places of origin and residence, parents' and
spouse's names: what the card will say) and no biometrics and no key. It is not encrypted at
rest: the kiosk has no key that an attacker holding its storage would not also hold; the file
is readable only by the daemon's user, expires (``expires_at``, judged with the kiosk's
trusted time, :mod:`appliance.timekeeping`) and is then deleted.

:meth:`CitizenBatch.find` answers ``citizen.lookup`` when the directory cannot be reached:
the answer says ``source: "batch"`` and carries the batch's signed ``issued_at``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TrustError
from ..protocol.codes import ErrorCode
from ..trust.signeddoc import verify_document
from .validation import CitizenDataInvalid, Stage, validate_citizen

log = logging.getLogger(__name__)

BATCH_TYPE = "appliance.citizen-batch.v1"
BATCH_CONTEXT = b"appliance/citizen-batch/v1"
BATCH_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
BATCH_FILE = "citizen-batch.json"
MAX_CHUNKS = 10_000
_SAME = ("batch_id", "count", "total", "area", "created_at", "expires_at")


def _bad(message: str, code: str = ErrorCode.MALFORMED_ENVELOPE, **details: Any) -> TrustError:
    return TrustError(message, code=code, details=details)


@dataclass
class BatchDownload:
    """The chunks of one fetch, as they arrive."""

    request_id: str
    nonce: str
    batch_id: str
    chunks: dict[int, dict[str, Any]] = field(default_factory=dict)
    issued_at: float = 0.0
    issuer: str = ""
    done: threading.Event = field(default_factory=threading.Event)
    refusals: list[TrustError] = field(default_factory=list)
    status: str = ""

    def add(self, body: dict[str, Any], issuer: str) -> None:
        """One verified chunk body; raises ``TrustError`` if it does not belong."""
        if body.get("request_id") != self.request_id or body.get("nonce") != self.nonce:
            raise _bad("the batch chunk answers another request", code=ErrorCode.WRONG_REQUEST)
        if body.get("batch_id") != self.batch_id:
            raise _bad("the batch chunk is of another batch", code=ErrorCode.WRONG_REQUEST)
        if body.get("status") == "not_found":
            self.status = "not_found"
            self.done.set()
            return
        index, count = body.get("index"), body.get("count")
        if not isinstance(count, int) or not 1 <= count <= MAX_CHUNKS:
            raise _bad(f"batch chunk count {count!r} invalid")
        if not isinstance(index, int) or not 0 <= index < count:
            raise _bad(f"batch chunk index {index!r} invalid")
        if not isinstance(body.get("records"), list):
            raise _bad("batch chunk without its records")
        first = next(iter(self.chunks.values()), None)
        if first is not None:
            for k in _SAME:
                if first.get(k) != body.get(k):
                    raise _bad(f"batch chunks disagree on {k}")
        self._check_records(body["records"], index)
        self.chunks[index] = body
        issued = body.get("issued_at")
        if isinstance(issued, (int, float)):
            self.issued_at = max(self.issued_at, float(issued))
        self.issuer = issuer
        if len(self.chunks) == count:
            total = sum(len(c["records"]) for c in self.chunks.values())
            if total != body.get("total"):
                raise _bad(f"batch holds {total} records, its chunks say {body.get('total')}")
            self.status = "complete"
            self.done.set()

    def _check_records(self, records: list[Any], index: int) -> None:
        for i, item in enumerate(records):
            if not isinstance(item, dict) or not isinstance(item.get("citizen"), dict):
                raise _bad(f"batch chunk {index} record {i} is not {{citizen, enrollment}}")
            try:
                validate_citizen(
                    item["citizen"],
                    stage=Stage.DIRECTORY,
                    where=f"batch {self.batch_id} chunk {index} record {i}",
                )
            except CitizenDataInvalid as exc:
                raise TrustError(
                    exc.message, code=ErrorCode.CITIZEN_INVALID, details=exc.details
                ) from None

    def document(self) -> dict[str, Any]:
        """The stored form of a complete batch."""
        first = self.chunks[0]
        records = [r for i in sorted(self.chunks) for r in self.chunks[i]["records"]]
        return {
            "batch_id": self.batch_id,
            "area": first.get("area"),
            "created_at": first.get("created_at"),
            "expires_at": first.get("expires_at"),
            "issued_at": self.issued_at,
            "issuer": self.issuer,
            "total": len(records),
            "records": records,
        }


class CitizenBatch:
    """The stored batch: at most one, replaced only by a complete, verified download."""

    def __init__(self, state_dir: Path, *, now: Callable[[], float]) -> None:
        self.path = Path(state_dir) / BATCH_FILE
        self._now = now
        self._lock = threading.Lock()
        self._doc: dict[str, Any] | None = None
        self._index: dict[str, dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("citizen batch %s unreadable, ignored: %s", self.path, exc)
            return
        if isinstance(doc, dict) and isinstance(doc.get("records"), list):
            self._set(doc)

    def _set(self, doc: dict[str, Any]) -> None:
        index: dict[str, dict[str, Any]] = {}
        for item in doc["records"]:
            citizen = item.get("citizen") or {}
            for key in ("personal_id", "old_id_number"):
                if citizen.get(key):
                    index[str(citizen[key])] = item
        self._doc, self._index = doc, index

    def store(self, download: BatchDownload) -> dict[str, Any]:
        """Keep a complete download (atomically, 0600); returns its summary."""
        doc = download.document()
        data = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        with self._lock:
            self._set(doc)
        return self.summary() or {}

    def summary(self) -> dict[str, Any] | None:
        """The stored batch without its records, or None (also when expired: then deleted)."""
        with self._lock:
            doc = self._valid()
            if doc is None:
                return None
            return {k: v for k, v in doc.items() if k != "records"}

    def _valid(self) -> dict[str, Any] | None:
        doc = self._doc
        if doc is None:
            return None
        expires = doc.get("expires_at")
        if not isinstance(expires, (int, float)) or self._now() >= expires:
            log.info("citizen batch %s expired: deleted", doc.get("batch_id"))
            self._doc, self._index = None, {}
            with contextlib.suppress(OSError):
                self.path.unlink()
            return None
        return doc

    def find(self, number: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """``(record item, batch summary)`` for a number in the unexpired batch, or None."""
        with self._lock:
            doc = self._valid()
            if doc is None:
                return None
            item = self._index.get(number)
            if item is None:
                return None
            return item, {k: v for k, v in doc.items() if k != "records"}


def verify_chunk(
    payload: bytes,
    roots: Sequence[bytes],
    *,
    device_id: str,
    now: float,
    revoked: Collection[str],
    allow_unsigned: bool,
) -> tuple[dict[str, Any], str]:
    """The verified body and issuer of one batch chunk document."""
    doc = verify_document(
        payload,
        roots,
        typ=BATCH_TYPE,
        context=BATCH_CONTEXT,
        device_id=device_id,
        roles=("directory",),
        now=now,
        revoked=revoked,
        allow_unsigned=allow_unsigned,
        max_bytes=4 * 1024 * 1024,
        what="citizen batch chunk",
    )
    return doc.body, doc.issuer
