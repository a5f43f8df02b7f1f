"""The central enrollment receiver: chunks in, verified packages and signed receipts out.

Protocol (docs/enrollment.md "Upload"):

* subscribes to ``{prefix}/+/upload/+`` (QoS 1; optionally through an MQTT 5 shared
  subscription ``$share/{group}/...`` so several receivers split the fleet);
* stores every chunk idempotently (:class:`~appliance.central.store.PackageStore`) before the
  MQTT PUBACK leaves (the store runs inside the message callback, paho acknowledges after it
  returns) and acknowledges it on ``{prefix}/{device}/upload/ack`` with
  ``{"package_id", "received": [index]}``; duplicates are acknowledged again, never stored twice;
* when every chunk is in, assembles and verifies the package (:func:`verify_package`) on a
  worker thread, keeps it with its plaintext records, and publishes
  ``{"package_id", "status": "complete"}`` and the signed receipt
  (``{prefix}/{device}/upload/receipt``, :func:`~appliance.trust.sealed.build_ack` with an
  ``ingest`` certificate) - or ``{"package_id", "status": "rejected", "code", "reason"}``;
* survives its own restart: the MQTT session is persistent (the broker queues chunks while the
  receiver is away), uploads with every chunk but no verdict are verified at start, and verdicts
  whose announcement was not confirmed by a PUBACK are announced again. A kiosk that re-sends a
  chunk of a finished package gets the verdict (and the receipt) again, at most every
  ``reannounce_s`` seconds per package.

A package from a device without an approved key is *held*, not judged: the receiver answers
``{"status": "held", "code": "unknown_device"}`` (informational; the kiosk keeps waiting), keeps
the chunks, and verifies the package once the device is approved (:meth:`ReceiverCore.
retry_pending`, every ``retry_s`` seconds, and at every start).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..errors import ApplianceError, TrustError
from ..protocol.codes import ErrorCode
from ..protocol.messages import UploadAck
from ..protocol.topics import TopicKind, Topics, parse, shared, validate_segment
from ..trust.certs import OperatorKey
from ..trust.sealed import EnrollmentKeyPair, build_ack
from .package import decode_chunk, valid_package_id
from .service import SubscribedService
from .store import PackageStore
from .verify import verify_package

log = logging.getLogger(__name__)

DeviceKeys = Callable[[str], bytes | None]
Publish = Callable[[str, bytes], bool]


def registry_device_keys(home: Path) -> DeviceKeys:
    """Device id -> its approved Ed25519 key from the fleet home's ``devices/`` (read on every
    lookup, so a device approved while the receiver runs is known at once)."""
    from ..fleet.registry import FleetRegistry

    reg = FleetRegistry(home)

    def lookup(device: str) -> bytes | None:
        try:
            rec = reg.device(device)
        except TrustError as exc:
            log.error("device registry: %s", exc.message)
            return None
        return None if rec is None else rec.public_key_bytes

    return lookup


class ReceiverCore:
    """The receiver's logic without the network: feed it messages, it calls ``publish``.

    ``publish(topic, payload) -> bool`` returns True once the broker confirmed (PUBACK).
    With ``background=False`` verification runs inline (unit tests); otherwise on one worker
    thread started by :meth:`start_worker`.
    """

    def __init__(
        self,
        store: PackageStore,
        enrollment_key: EnrollmentKeyPair,
        ingest_key: OperatorKey,
        device_keys: DeviceKeys,
        publish: Publish,
        *,
        prefix: str = "kiosk",
        reannounce_s: float = 2.0,
        retry_s: float = 30.0,
        background: bool = True,
        on_result: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        validate_segment(prefix, "topic prefix")
        self.store = store
        self.enrollment_key = enrollment_key
        self.ingest_key = ingest_key
        self.device_keys = device_keys
        self.publish = publish
        self.prefix = prefix
        self.reannounce_s = reannounce_s
        self.retry_s = retry_s
        self.background = background
        self.on_result = on_result
        self._jobs: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._busy: set[tuple[str, str]] = set()
        self._announced: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._worker: threading.Thread | None = None
        self.stats = {"chunks": 0, "duplicates": 0, "malformed": 0, "complete": 0, "rejected": 0}

    # -- topics ------------------------------------------------------------------------------------

    def filter(self) -> str:
        return Topics.anyone(self.prefix).uploads

    def _topic(self, device: str, leaf: str) -> str:
        return Topics(self.prefix, device).upload(leaf)

    def _send(self, device: str, leaf: str, obj: dict[str, Any] | bytes) -> bool:
        payload = obj if isinstance(obj, bytes) else json.dumps(obj).encode("utf-8")
        try:
            return self.publish(self._topic(device, leaf), payload)
        except Exception:  # a broken link must not kill the worker; the verdict is re-sent
            log.exception("publish on %s failed", self._topic(device, leaf))
            return False

    # -- messages --------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> None:
        """One message on ``{prefix}/{device}/upload/{package_id}``."""
        parsed = parse(self.prefix, topic)
        if parsed is None or parsed.kind is not TopicKind.UPLOAD or parsed.arg is None:
            return  # not a chunk: our own acks and receipts, or another topic
        device, leaf = parsed.device, parsed.arg
        if not valid_package_id(leaf):
            self.stats["malformed"] += 1
            log.warning("upload from %s on an invalid package id topic", device)
            return
        try:
            header, data = decode_chunk(payload)
            if header.package_id != leaf:
                raise TrustError("chunk names another package", code=ErrorCode.CHUNK_MALFORMED)
            outcome = self.store.put_chunk(device, header, data)
        except TrustError as exc:
            # A damaged chunk is not acknowledged: the kiosk sends it again.
            self.stats["malformed"] += 1
            log.warning("chunk from %s for %s refused: %s", device, leaf, exc.message)
            return
        except ApplianceError as exc:
            log.error("chunk from %s for %s not stored: %s", device, leaf, exc.message)
            return
        key = (device, leaf)
        if outcome.state == "conflict":
            log.warning("%s re-used package id %s for other content", device, leaf)
            self._send(
                device,
                "ack",
                UploadAck(
                    package_id=leaf,
                    status="rejected",
                    code=ErrorCode.PACKAGE_ID_REUSED,
                    reason="this package id was already received with other content",
                ).to_json(),
            )
            return
        self._send(device, "ack", UploadAck(package_id=leaf, received=[header.index]).to_json())
        if outcome.state == "finished":
            self.stats["duplicates"] += 1
            now = time.monotonic()
            with self._lock:
                last = self._announced.get(key, -1e9)
                due = now - last >= self.reannounce_s
                if due:
                    self._announced[key] = now
            if due and outcome.result is not None:
                self._announce(outcome.result)
            return
        self.stats["chunks"] += 1
        if not outcome.new:
            self.stats["duplicates"] += 1
        if outcome.upload_complete:
            self.submit(device, leaf)

    # -- verification ------------------------------------------------------------------------------

    def submit(self, device: str, package_id: str) -> None:
        """Verify an upload whose chunks are all here (once at a time per package)."""
        key = (device, package_id)
        with self._lock:
            if key in self._busy:
                return
            self._busy.add(key)
        if self.background:
            self._jobs.put(key)
        else:
            self._run(key)

    def _run(self, key: tuple[str, str]) -> None:
        try:
            self.verify_upload(*key)
        except Exception:
            log.exception("verification of %s/%s failed unexpectedly", *key)
        finally:
            with self._cv:
                self._busy.discard(key)
                self._cv.notify_all()

    def verify_upload(self, device: str, package_id: str) -> dict[str, Any] | None:
        """Assemble, verify, store and announce one upload; returns the stored result."""
        info = self.store.upload_info(device, package_id) or {}
        package_sha256 = str(info.get("package_sha256", ""))
        data: bytes | None = None
        t0 = time.perf_counter()
        try:
            data = self.store.assemble(device, package_id)
            public_key = self.device_keys(device)
            if public_key is None:
                # Not a verdict: the package waits (its chunks stay) and is verified as soon
                # as the device is approved (retry_pending). "held" is informational; the
                # kiosk keeps waiting for complete/rejected.
                reason = f"{device} has no approved device key (approve the device)"
                log.error("package %s held: %s", package_id, reason)
                self._send(
                    device,
                    "ack",
                    UploadAck(
                        package_id=package_id,
                        status="held",
                        code=ErrorCode.UNKNOWN_DEVICE,
                        reason=reason,
                    ).to_json(),
                )
                return None
            verified = verify_package(
                data,
                device_id=device,
                device_public_key=public_key,
                enrollment_key=self.enrollment_key,
                package_id=package_id,
            )
        except TrustError as exc:
            self.stats["rejected"] += 1
            log.warning("package %s from %s rejected: %s (%s)", package_id, device, exc.code, exc)
            result = self.store.finish_rejected(
                device,
                package_id,
                code=exc.code,
                reason=exc.message,
                package_sha256=package_sha256,
                data=data,
            )
        else:
            self.stats["complete"] += 1
            result = self.store.finish_complete(
                device, package_id, data, verified, package_sha256=package_sha256
            )
            result["verify_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        with self._lock:
            now = time.monotonic()
            if len(self._announced) > 10_000:  # a long-running receiver: forget old packages
                cutoff = now - 3600
                self._announced = {k: t for k, t in self._announced.items() if t > cutoff}
            self._announced[(device, package_id)] = now
        self._announce(result)
        if self.on_result is not None:
            self.on_result(result)
        return result

    def _announce(self, result: dict[str, Any]) -> None:
        device, package_id = result["device"], result["package_id"]
        if result["status"] == "complete":
            ok = self._send(
                device, "ack", UploadAck(package_id=package_id, status="complete").to_json()
            )
            receipt = build_ack(
                self.ingest_key, device, [(r["id"], r["sha256"]) for r in result["receipt"]]
            )
            ok = self._send(device, "receipt", receipt) and ok
        else:
            ok = self._send(
                device,
                "ack",
                UploadAck(
                    package_id=package_id,
                    status="rejected",
                    code=result.get("code"),
                    reason=result.get("reason"),
                ).to_json(),
            )
        if ok and not result.get("announced_at"):
            self.store.mark_announced(device, package_id)

    # -- lifecycle ---------------------------------------------------------------------------------

    def resume(self) -> tuple[int, int]:
        """After a (re)start: verify complete uploads without a verdict, and announce verdicts
        that were never confirmed. Returns ``(verifications, announcements)`` queued."""
        pending = self.store.pending()
        for device, package_id in pending:
            log.info("resuming verification of %s/%s", device, package_id)
            self.submit(device, package_id)
        unannounced = [r for r in self.store.results() if not r.get("announced_at")]
        for res in unannounced:
            log.info("announcing the verdict on %s/%s again", res["device"], res["package_id"])
            self._announce(res)
        return len(pending), len(unannounced)

    def retry_pending(self) -> int:
        """Submit every complete upload still without a verdict (e.g. held for a device that
        has been approved since). Returns how many were submitted."""
        pending = self.store.pending()
        for device, package_id in pending:
            self.submit(device, package_id)
        return len(pending)

    def start_worker(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._loop, name="central-verify", daemon=True)
            self._worker.start()

    def stop_worker(self, timeout: float = 30.0) -> None:
        if self._worker is not None:
            self._jobs.put(None)
            self._worker.join(timeout)
            self._worker = None

    def _loop(self) -> None:
        last_retry = time.monotonic()
        while True:
            try:
                key = self._jobs.get(timeout=max(0.1, self.retry_s))
            except queue.Empty:
                key = ("", "")
            if key is None:
                return
            if key != ("", ""):
                self._run(key)
            if time.monotonic() - last_retry >= self.retry_s:
                last_retry = time.monotonic()
                try:
                    self.retry_pending()
                except Exception:
                    log.exception("retrying held uploads failed")

    def idle(self, timeout: float) -> bool:
        """Wait until no verification is queued or running."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._busy, timeout)


class Receiver(SubscribedService):
    """:class:`ReceiverCore` on a paho MQTT 5 client with a persistent session."""

    name = "receiver"

    def __init__(
        self,
        core: ReceiverCore,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        client_id: str = "central-receiver",
        session_expiry_s: int = 24 * 3600,
        share_group: str | None = None,
        tls: dict[str, Any] | None = None,
        insecure: bool = False,
        publish_timeout_s: float = 10.0,
    ) -> None:
        if share_group is not None:
            validate_segment(share_group, "share group")
        super().__init__(host=host, port=port, client_id=client_id, tls=tls, insecure=insecure)
        self.core = core
        self.share_group = share_group
        self.session_expiry_s = session_expiry_s
        self.publish_timeout_s = publish_timeout_s
        core.publish = self._publish

    def _filter(self) -> str:
        f = self.core.filter()
        return f if self.share_group is None else shared(self.share_group, f)

    def start(self, timeout: float = 10.0) -> Receiver:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.session_expiry_s
        self._connect(timeout, clean_start=False, properties=props)
        self.core.start_worker()
        self.core.resume()
        log.info("receiver on %s:%d subscribed to %s", self.host, self.port, self._filter())
        return self

    def stop(self, *, end_session: bool = False) -> None:
        """Disconnect; the broker keeps the session (queued chunks) unless ``end_session``."""
        self.core.stop_worker()
        props = None
        if end_session:
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
        self._close(props)

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        # Runs on the network thread; the chunk is on disk before paho sends the PUBACK.
        try:
            self.core.handle(msg.topic, bytes(msg.payload))
        except Exception:
            log.exception("receiver: message on %s not handled", msg.topic)

    def _publish(self, topic: str, payload: bytes) -> bool:
        info = self.client.publish(topic, payload, qos=1)
        if threading.current_thread() is getattr(self.client, "_thread", None):
            return False  # on the network thread: cannot wait for our own PUBACK
        try:
            info.wait_for_publish(self.publish_timeout_s)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()


# --- import from removable media (docs/central.md "Import") ---------------------------------

ImportProgress = Callable[[int, int, str], None]


def import_packages(
    core: ReceiverCore, source: Path, *, progress: ImportProgress | None = None
) -> dict[str, Any]:
    """Import what ``appliance enrollment export`` wrote under ``source``
    (``<device>/export.json`` and ``<device>/<package_id>.pkg``) through the receiver's own
    path: each package is stored as the chunks an upload would bring (so a later upload of
    the same package id and content is a duplicate, stored once) and verified with
    :func:`verify_package` exactly as an uploaded one; the verdict and the signed receipt are
    announced to the kiosk when it can hear them (``publish``; otherwise at the receiver's
    next start, or when the kiosk sends a chunk of it again).

    Returns counts and, per package, ``{device, package_id, outcome, code?}`` with outcome
    ``complete`` / ``rejected`` / ``held`` (device not approved yet) / ``duplicate`` (already
    held with the same content) / ``conflict`` (the id held with other content) / ``damaged``
    (size or SHA-256 differ from the listing, or unreadable)."""
    from .package import split_package

    listings = sorted(Path(source).glob("*/export.json"))
    items: list[tuple[str, dict[str, Any], Path]] = []
    for listing in listings:
        try:
            doc = json.loads(listing.read_text(encoding="utf-8"))
            device = str(doc["device"])
            packages = list(doc["packages"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ApplianceError(
                f"{listing}: not an export listing ({exc})", code=ErrorCode.IMPORT_MALFORMED
            ) from None
        if device != listing.parent.name or not validate_device(device):
            raise ApplianceError(
                f"{listing}: device {device!r} is not its directory's",
                code=ErrorCode.IMPORT_MALFORMED,
            )
        items += [(device, p, listing.parent) for p in packages if isinstance(p, dict)]
    results: list[dict[str, Any]] = []
    for n, (device, entry, folder) in enumerate(items, start=1):
        package_id = str(entry.get("package_id", ""))
        out: dict[str, Any] = {"device": device, "package_id": package_id}
        try:
            if not valid_package_id(package_id):
                raise ValueError("invalid package id")
            data = (folder / f"{package_id}.pkg").read_bytes()
            if len(data) != entry.get("bytes") or _sha256(data) != entry.get("sha256"):
                raise ValueError("size or SHA-256 differs from the listing")
        except (OSError, ValueError) as exc:
            out.update(outcome="damaged", reason=str(exc))
        else:
            out.update(_import_one(core, device, package_id, split_package(package_id, data)))
        results.append(out)
        if progress is not None:
            progress(n, len(items), f"{device}/{package_id}: {out['outcome']}")
    counts: dict[str, int] = {}
    for r in results:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    return {"packages": results, "counts": counts}


def _import_one(
    core: ReceiverCore, device: str, package_id: str, chunks: list[bytes]
) -> dict[str, Any]:
    for chunk in chunks:
        header, part = decode_chunk(chunk)
        outcome = core.store.put_chunk(device, header, part)
        if outcome.state == "finished":
            return {"outcome": "duplicate"}
        if outcome.state == "conflict":
            return {"outcome": "conflict", "code": ErrorCode.PACKAGE_ID_REUSED}
    result = core.verify_upload(device, package_id)
    if result is None:
        return {"outcome": "held", "code": ErrorCode.UNKNOWN_DEVICE}
    if result["status"] == "complete":
        return {"outcome": "complete"}
    return {"outcome": "rejected", "code": result.get("code")}


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def validate_device(device: str) -> bool:
    from ..trust.certs import NAME_RE

    return bool(NAME_RE.match(device))
