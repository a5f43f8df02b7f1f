"""Resumable upload of enrollment packages over MQTT, and purge on the signed receipt.

The queue is the ``enrollment_uploads`` table; acknowledged chunk indices are recorded there as
they arrive, so after a broker outage or a daemon restart only the missing chunks travel again
(docs/enrollment.md, "Upload"). The ``.pkg`` file and the sealed records stay until a receipt
signed by an ``ingest`` certificate confirms every record; then they are shredded.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ApplianceError
from ..protocol.topics import Topics
from ..store import Store
from ..trust.sealed import SealedStore
from . import package as pk

log = logging.getLogger(__name__)


class Uploader:
    def __init__(
        self,
        *,
        store: Store,
        topics: Topics,
        publish: Callable[..., bool],
        connected: Callable[[], int],
        sealed: SealedStore | None,
        roots: list[bytes],
        revoked: list[str],
        emit: Callable[..., object],
        chunk_bytes: int,
        window: int,
        chunk_timeout_s: float,
        now: Callable[[], float] = time.time,
    ) -> None:
        # the kiosk's trusted time (timekeeping.Clock.now): judges the receipts' certificates
        self._now = now
        self.store = store
        self.topics = topics
        self._publish = publish
        self._connected = connected  # 0 when offline, else the connection count (an epoch)
        self.sealed = sealed
        self.roots = roots
        self.revoked = revoked
        self.emit = emit
        self.chunk_bytes = chunk_bytes
        self.window = window
        self.chunk_timeout_s = chunk_timeout_s
        self._inbox: collections.deque[tuple[str, bytes]] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._sent: dict[str, dict[int, tuple[float, int]]] = {}  # package -> index -> (t, epoch)
        self._announced: dict[str, float] = {}  # package -> when its first chunk was re-sent
        self._thread = threading.Thread(target=self._run, name="uploader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def kick(self) -> None:
        self._wake.set()

    def on_message(self, topic: str, payload: bytes) -> None:
        """From the network thread. A receipt is applied here, before this returns: paho sends
        the PUBACK only after the callback, so a crash mid-purge leaves the receipt unacknowledged
        and the broker delivers it again (a half-applied receipt is finished by the repeat).
        Chunk acknowledgements are queued for the uploader thread: losing one only costs a
        re-sent chunk."""
        if topic == self.topics.upload_receipt:
            try:
                self._on_receipt(payload)
            except ApplianceError as exc:
                log.error("uploader: receipt not applied: %s", exc.message)
            return
        self._inbox.append((topic, payload))
        self._wake.set()

    # -- loop ------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                while self._inbox:
                    _topic, payload = self._inbox.popleft()
                    self._on_ack(payload)
                if self._connected():
                    self._send_pending()
                    self._reannounce()
            except ApplianceError as exc:
                log.error("uploader: %s", exc.message)
            except Exception:
                log.exception("uploader failed; retrying")

    def _pending(self) -> list[tuple[str, str, int, list[int], str]]:
        with self.store.lock:
            rows = self.store.conn.execute(
                "SELECT package_id, path, total_bytes, acked, state FROM enrollment_uploads "
                "WHERE state IN ('pending', 'uploading') ORDER BY created"
            ).fetchall()
        return [(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

    def _send_pending(self) -> None:
        epoch = self._connected()
        for package_id, path, _total, acked, _state in self._pending():
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                self._fail(package_id, f"package file unreadable: {exc}")
                continue
            chunks = pk.split(data, self.chunk_bytes)
            count = len(chunks)
            done = set(acked)
            if len(done) >= count:
                continue
            sent = self._sent.setdefault(package_id, {})
            now = time.monotonic()
            in_flight = sum(
                1
                for i, (t, e) in sent.items()
                if i not in done and e == epoch and now - t < self.chunk_timeout_s
            )
            package_sha = hashlib.sha256(data).hexdigest()
            for index, chunk in enumerate(chunks):
                if in_flight >= self.window:
                    break
                if index in done:
                    continue
                last = sent.get(index)
                if last is not None and last[1] == epoch and now - last[0] < self.chunk_timeout_s:
                    continue  # in flight on this connection, not yet timed out
                header = {
                    "package_id": package_id,
                    "index": index,
                    "count": count,
                    "total_bytes": len(data),
                    "sha256": hashlib.sha256(chunk).hexdigest(),
                    "package_sha256": package_sha,
                }
                if not self._publish(
                    self.topics.upload(package_id), pk.encode_chunk(header, chunk), qos=1
                ):
                    return  # offline; resume later from what is acknowledged
                sent[index] = (now, epoch)
                in_flight += 1
            with self.store.transaction() as c:
                c.execute(
                    "UPDATE enrollment_uploads SET state='uploading', chunks=? "
                    "WHERE package_id=? AND state='pending'",
                    (count, package_id),
                )

    def _reannounce(self) -> None:
        """A package the centre has whole (every chunk acknowledged, or ``complete``) but whose
        receipt never came (lost in a crash, or the verdict lost) is announced again: its first
        chunk is re-sent, and the receiver answers a finished package with its verdict and
        receipt again (docs/enrollment.md). Once per ``4 x chunk_timeout_s``, and at start."""
        now = time.monotonic()
        with self.store.lock:
            rows = self.store.conn.execute(
                "SELECT package_id, path, chunks, acked_chunks, state FROM enrollment_uploads "
                "WHERE state IN ('uploading', 'uploaded')"
            ).fetchall()
        for package_id, path, chunks, acked, state in rows:
            whole = state == "uploaded" or (chunks is not None and acked >= chunks)
            if not whole:
                continue
            last = self._announced.get(package_id)
            if last is not None and now - last < 4 * self.chunk_timeout_s:
                continue
            self._announced[package_id] = now
            try:
                data = Path(path).read_bytes()
            except OSError:
                continue
            first = pk.split(data, self.chunk_bytes)[0]
            header = {
                "package_id": package_id,
                "index": 0,
                "count": len(pk.split(data, self.chunk_bytes)),
                "total_bytes": len(data),
                "sha256": hashlib.sha256(first).hexdigest(),
                "package_sha256": hashlib.sha256(data).hexdigest(),
            }
            if last is not None:
                log.info("uploader: no receipt yet for %s; announcing it again", package_id)
            self._publish(self.topics.upload(package_id), pk.encode_chunk(header, first), qos=1)

    # -- acknowledgements -----------------------------------------------------------------------

    def _on_ack(self, payload: bytes) -> None:
        try:
            msg = json.loads(payload)
            package_id = str(msg["package_id"])
        except (ValueError, KeyError, TypeError, RecursionError):
            log.warning("uploader: unreadable upload acknowledgement ignored")
            return
        status = msg.get("status")
        with self.store.transaction() as c:
            row = c.execute(
                "SELECT acked, chunks, state FROM enrollment_uploads WHERE package_id=?",
                (package_id,),
            ).fetchone()
            if row is None:
                return
            acked = set(json.loads(row[0]))
            received = msg.get("received") or []
            if isinstance(received, list):
                acked.update(int(i) for i in received if isinstance(i, int))
            state = row[2]
            if status == "complete" and state in ("pending", "uploading"):
                state = "uploaded"
            elif status == "rejected":
                state = "rejected"
            c.execute(
                "UPDATE enrollment_uploads SET acked=?, acked_chunks=?, state=?, reason=? "
                "WHERE package_id=?",
                (
                    json.dumps(sorted(acked)),
                    len(acked),
                    state,
                    str(msg.get("reason", ""))[:500],
                    package_id,
                ),
            )
        if status == "complete":
            self.emit("enrollment.uploaded", {"package_id": package_id})
            self._sent.pop(package_id, None)
        elif status == "rejected":
            self.emit(
                "enrollment.rejected", {"package_id": package_id, "reason": msg.get("reason", "")}
            )
            self._sent.pop(package_id, None)
        self._wake.set()

    def _on_receipt(self, payload: bytes) -> None:
        if self.sealed is None:
            return
        try:
            result = self.sealed.apply_ack(
                payload, self.roots, now=self._now(), revoked=self.revoked
            )
        except ApplianceError as exc:
            log.warning("uploader: receipt refused: %s: %s", exc.code, exc.message)
            self.store.audit("fleet", "enrollment.receipt", exc.code)
            return
        shredded = set(result.shredded)
        with self.store.lock:
            rows = self.store.conn.execute(
                "SELECT package_id, path, records FROM enrollment_uploads WHERE state != 'purged'"
            ).fetchall()
        for package_id, path, records_json in rows:
            ids = {rid for rid, _sha in json.loads(records_json)}
            if ids and ids <= shredded | self._gone(ids):
                Path(path).unlink(missing_ok=True)
                with self.store.transaction() as c:
                    c.execute(
                        "UPDATE enrollment_uploads SET state='purged' WHERE package_id=?",
                        (package_id,),
                    )
                self.store.audit(
                    result.issuer,
                    "enrollment.receipt",
                    "purged",
                    package_id=package_id,
                    records=len(ids),
                )
                self.emit("enrollment.purged", {"package_id": package_id, "records": len(ids)})
                self._sent.pop(package_id, None)

    def _gone(self, ids: set[str]) -> set[str]:
        """Records of a package already shredded by an earlier (partial or repeated) receipt."""
        assert self.sealed is not None
        return {i for i in ids if not (self.sealed.directory / f"{i}.sealed").exists()}

    def _fail(self, package_id: str, reason: str) -> None:
        with self.store.transaction() as c:
            c.execute(
                "UPDATE enrollment_uploads SET state='failed', reason=? WHERE package_id=?",
                (reason, package_id),
            )
        self.emit("enrollment.upload_failed", {"package_id": package_id, "reason": reason})

    def describe(self) -> dict[str, Any]:
        with self.store.lock:
            rows = self.store.conn.execute(
                "SELECT state, count(*) FROM enrollment_uploads GROUP BY state"
            ).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}
