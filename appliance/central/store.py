"""The central service's store on disk: upload chunks, verified packages, plaintext records.

Layout (directories 0700, files 0600, every write atomic: temporary file, fsync, rename,
fsync of the directory)::

    <root>/<device>/<package_id>/
        upload.json          the upload's identity from its first chunk: count, total_bytes,
                             package_sha256, first_seen
        chunks/<index>.part  each chunk as received (checked against its own SHA-256)
        package.pkg          the assembled container (verified, or kept for a technician when
                             rejected)
        manifest.json        the verified manifest (pretty-printed copy of the signed bytes'
                             content; the signed bytes themselves stay in package.pkg)
        records/NN-<kind>-<position>.iso
                             the verified plaintext ISO/IEC 19794 records (central only)
        result.json          the commit point: status complete | rejected, reason, receipt

A chunk is stored once: its file exists only after the atomic rename, so a receiver killed at
any point finds either the whole chunk or none, and a re-sent chunk is a no-op. ``result.json``
is written last; until it exists the package is not finished, and a restarted receiver
assembles and verifies it again (:meth:`PackageStore.pending`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import StoreError, TrustError
from ..protocol.codes import ErrorCode
from ..protocol.package import ChunkHeader
from ..trust.certs import NAME_RE
from ..trust.keys import atomic_write
from .package import valid_package_id
from .verify import VerifiedPackage

log = logging.getLogger(__name__)

UPLOAD = "upload.json"
RESULT = "result.json"
CHUNKS = "chunks"
RECORDS = "records"
PACKAGE = "package.pkg"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ChunkOutcome:
    """What storing one chunk did.

    ``state``: ``stored`` (kept, or already held), ``finished`` (the package already has a
    result; ``result`` holds it), ``conflict`` (a finished package id re-used with other
    content; nothing stored).
    """

    state: Literal["stored", "finished", "conflict"]
    new: bool = False
    received: int = 0
    count: int = 0
    result: dict[str, Any] | None = None

    @property
    def upload_complete(self) -> bool:
        return self.state == "stored" and self.received == self.count


def _mkdir(path: Path) -> Path:
    """Create ``path`` and any missing parent with mode 0700 (``mkdir(parents=True)`` would
    give the parents the umask's default)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for q in reversed(missing):
        with contextlib.suppress(FileExistsError):
            q.mkdir(mode=0o700)
    return path


def _write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=1, ensure_ascii=False).encode("utf-8"), mode=0o600)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path} is unreadable: {exc}", code=ErrorCode.STORE_CORRUPT) from None


class PackageStore:
    """Chunks, packages and records per device under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = _mkdir(Path(root).expanduser())
        self._lock = threading.RLock()

    # -- paths -------------------------------------------------------------------------------------

    def package_dir(self, device: str, package_id: str) -> Path:
        """The package's directory; refuses names that could escape the root."""
        if not isinstance(device, str) or not NAME_RE.match(device):
            raise TrustError(f"invalid device id {device!r}", code=ErrorCode.INVALID_NAME)
        if not valid_package_id(package_id) or package_id in (".", ".."):
            raise TrustError(f"invalid package id {package_id!r}", code=ErrorCode.INVALID_NAME)
        return self.root / device / package_id

    # -- chunks ------------------------------------------------------------------------------------

    def put_chunk(self, device: str, header: ChunkHeader, data: bytes) -> ChunkOutcome:
        """Store one checked chunk idempotently."""
        d = self.package_dir(device, header.package_id)
        ident = {
            "count": header.count,
            "total_bytes": header.total_bytes,
            "package_sha256": header.package_sha256.lower(),
        }
        with self._lock:
            result = _read_json(d / RESULT)
            if result is not None:
                same = result.get("package_sha256") == ident["package_sha256"]
                return ChunkOutcome("finished" if same else "conflict", result=result)
            upload = _read_json(d / UPLOAD)
            if upload is None or {k: upload.get(k) for k in ident} != ident:
                if upload is not None:
                    # The kiosk rebuilt the package under the same id: the newest one wins,
                    # chunks of the old one are discarded.
                    log.warning(
                        "upload %s/%s restarted with other content; dropping %d old chunks",
                        device,
                        header.package_id,
                        len(self._chunk_files(d)),
                    )
                    shutil.rmtree(d / CHUNKS, ignore_errors=True)
                _mkdir(d / CHUNKS)
                _write_json(d / UPLOAD, {**ident, "first_seen": time.time()})
            path = d / CHUNKS / f"{header.index:06d}.part"
            new = not path.exists()
            if new:
                atomic_write(path, data, mode=0o600)
            received = len(self._chunk_files(d))
        return ChunkOutcome("stored", new=new, received=received, count=header.count)

    @staticmethod
    def _chunk_files(d: Path) -> list[Path]:
        try:
            return sorted(p for p in (d / CHUNKS).iterdir() if p.suffix == ".part")
        except FileNotFoundError:
            return []

    def received(self, device: str, package_id: str) -> list[int]:
        d = self.package_dir(device, package_id)
        return [int(p.stem) for p in self._chunk_files(d)]

    def upload_info(self, device: str, package_id: str) -> dict[str, Any] | None:
        info = _read_json(self.package_dir(device, package_id) / UPLOAD)
        return info if isinstance(info, dict) else None

    def assemble(self, device: str, package_id: str) -> bytes:
        """The whole package from its chunks; checks the count, size and SHA-256."""
        import hashlib

        d = self.package_dir(device, package_id)
        info = self.upload_info(device, package_id)
        if info is None:
            raise StoreError(f"no upload {device}/{package_id}", code=ErrorCode.UPLOAD_UNKNOWN)
        parts = []
        for i in range(int(info["count"])):
            try:
                parts.append((d / CHUNKS / f"{i:06d}.part").read_bytes())
            except FileNotFoundError:
                raise StoreError(
                    f"chunk {i} of {package_id} missing", code=ErrorCode.UPLOAD_INCOMPLETE
                ) from None
        data = b"".join(parts)
        if len(data) != info["total_bytes"]:
            raise TrustError(
                f"chunks add up to {len(data)} bytes, the upload announced {info['total_bytes']}",
                code=ErrorCode.PACKAGE_MALFORMED,
            )
        if hashlib.sha256(data).hexdigest() != info["package_sha256"]:
            raise TrustError(
                "assembled package does not match its package_sha256",
                code=ErrorCode.PACKAGE_MALFORMED,
            )
        return data

    # -- results -----------------------------------------------------------------------------------

    def result(self, device: str, package_id: str) -> dict[str, Any] | None:
        res = _read_json(self.package_dir(device, package_id) / RESULT)
        return res if isinstance(res, dict) else None

    def finish_complete(
        self,
        device: str,
        package_id: str,
        data: bytes,
        verified: VerifiedPackage,
        *,
        package_sha256: str,
    ) -> dict[str, Any]:
        """Keep the verified package and its plaintext records (0600); commit with result.json."""
        d = self.package_dir(device, package_id)
        with self._lock:
            existing = self.result(device, package_id)
            if existing is not None:
                return existing
            atomic_write(d / PACKAGE, data, mode=0o600)
            _write_json(d / MANIFEST, verified.manifest.model_dump(mode="json"))
            rec_dir = _mkdir(d / RECORDS)
            files = []
            for r in verified.records:
                name = f"{r.entry.seq:02d}-{r.entry.kind}-{r.entry.position:02d}.iso"
                atomic_write(rec_dir / name, r.plaintext, mode=0o600)
                files.append(name)
            result = {
                "status": "complete",
                "device": device,
                "package_id": package_id,
                "package_sha256": package_sha256,
                "verified_at": time.time(),
                "receipt": [{"id": i, "sha256": s} for i, s in verified.receipt_records],
                "record_files": files,
                "summary": verified.summary(),
            }
            _write_json(d / RESULT, result)
            shutil.rmtree(d / CHUNKS, ignore_errors=True)
        return result

    def finish_rejected(
        self,
        device: str,
        package_id: str,
        *,
        code: str,
        reason: str,
        package_sha256: str,
        data: bytes | None = None,
    ) -> dict[str, Any]:
        """Record a refusal; the assembled bytes (ciphertext) are kept for a technician."""
        d = self.package_dir(device, package_id)
        with self._lock:
            existing = self.result(device, package_id)
            if existing is not None:
                return existing
            _mkdir(d)
            if data is not None:
                atomic_write(d / PACKAGE, data, mode=0o600)
            result = {
                "status": "rejected",
                "device": device,
                "package_id": package_id,
                "package_sha256": package_sha256,
                "code": code,
                "reason": reason,
                "rejected_at": time.time(),
            }
            _write_json(d / RESULT, result)
            shutil.rmtree(d / CHUNKS, ignore_errors=True)
        return result

    def mark_announced(self, device: str, package_id: str) -> None:
        """Note that the verdict reached the broker (a restarted receiver re-sends it if not)."""
        d = self.package_dir(device, package_id)
        with self._lock:
            res = self.result(device, package_id)
            if res is not None and not res.get("announced_at"):
                res["announced_at"] = time.time()
                _write_json(d / RESULT, res)

    # -- listing -----------------------------------------------------------------------------------

    def _package_dirs(self) -> Iterator[tuple[str, str, Path]]:
        for dev_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if not NAME_RE.match(dev_dir.name):
                continue
            for pkg_dir in sorted(p for p in dev_dir.iterdir() if p.is_dir()):
                if valid_package_id(pkg_dir.name):
                    yield dev_dir.name, pkg_dir.name, pkg_dir

    def package_ids(self) -> list[tuple[str, str]]:
        """Every (device, package id) with a directory in the store (names only, no file read)."""
        return [(device, package_id) for device, package_id, _d in self._package_dirs()]

    def pending(self) -> list[tuple[str, str]]:
        """Uploads whose chunks are all here but that have no result yet (a receiver stopped
        between the last chunk and the verdict)."""
        out = []
        for device, package_id, d in self._package_dirs():
            if (d / RESULT).exists():
                continue
            with contextlib.suppress(StoreError):
                info = self.upload_info(device, package_id)
                if info is not None and len(self._chunk_files(d)) == int(info["count"]):
                    out.append((device, package_id))
        return out

    def results(self, device: str | None = None) -> list[dict[str, Any]]:
        """Every finished package (optionally of one device), oldest first."""
        out = []
        for dev, package_id, _d in self._package_dirs():
            if device is not None and dev != device:
                continue
            with contextlib.suppress(StoreError):
                res = self.result(dev, package_id)
                if res is not None:
                    out.append(res)
        return sorted(out, key=lambda r: r.get("verified_at") or r.get("rejected_at") or 0)

    def find_enrollment(
        self, *, device: str | None = None, package_id: str | None = None, citizen_ref: str | None
    ) -> dict[str, Any] | None:
        """The newest complete package matching the filters, or None."""
        best = None
        for res in self.results(device):
            if res.get("status") != "complete":
                continue
            if package_id is not None and res.get("package_id") != package_id:
                continue
            if citizen_ref is not None and res["summary"].get("citizen_ref") != citizen_ref:
                continue
            best = res
        return best

    def record(self, device: str, package_id: str, name: str) -> bytes:
        """A stored plaintext record by its file name (from ``record_files``)."""
        if "/" in name or name.startswith("."):
            raise TrustError(f"invalid record file name {name!r}", code=ErrorCode.INVALID_NAME)
        return (self.package_dir(device, package_id) / RECORDS / name).read_bytes()

    def portrait(self, device: str, package_id: str) -> bytes:
        """The package's ISO/IEC 19794-5 portrait record."""
        res = self.result(device, package_id)
        if res is None or res.get("status") != "complete":
            raise StoreError(
                f"package {device}/{package_id} is not a verified enrollment",
                code=ErrorCode.ENROLLMENT_UNKNOWN,
            )
        for name in res.get("record_files", []):
            if "-face-" in name:
                return self.record(device, package_id, name)
        raise StoreError(f"package {package_id} holds no portrait", code=ErrorCode.NO_PORTRAIT)
