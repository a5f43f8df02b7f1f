"""Sealed biometric records: sealed at capture, stored sealed, shredded on a signed receipt.

At the moment of capture every biometric record (portrait JPEG, finger image, ISO 19794 record)
is sealed with libsodium's SealedBox to the central enrollment service's X25519 public key. The
kiosk never holds a key that can open it: SealedBox encrypts with a fresh ephemeral key pair
whose private half is discarded inside :func:`seal`. So a stolen kiosk disk yields ciphertext
only, and the plaintext exists only in process memory between capture and sealing.

Sealed blobs wait on disk (files 0600 in a given directory, atomic writes) until the central
service acknowledges receipt with a signed acknowledgement; the kiosk then overwrites and
deletes them ("crypto-shredding": the ciphertext is destroyed, and no key that could decrypt it
ever existed on the kiosk). Overwriting before unlinking is best effort on flash media with wear
levelling; the guarantee rests on the sealing, not on the overwrite.

Sealed file format (``<record id>.sealed``)::

    b"APSEAL1\\n" | 4-byte big-endian header length | header JSON | SealedBox ciphertext

Header: ``{"id", "kind", "created_at", "sha256", "size"}`` where ``sha256`` is the hex digest
of the ciphertext (the value an acknowledgement names).

Acknowledgement (UTF-8 JSON, signed by a key whose fleet certificate has the ``ingest`` role)::

    {"typ": "appliance.sealed-ack.v1", "cert": "<certificate token>",
     "body": "<base64 body bytes>", "sig": "<base64 signature, context appliance/sealed-ack/v1>"}

    body = {"device": "kiosk-001", "issued_at": 1800000000, "issuer": "<key id>",
            "records": [{"id": "rec-1", "sha256": "<hex of the ciphertext>"}, ...]}

A record is shredded only if the acknowledgement names its id *and* the SHA-256 of the exact
ciphertext stored, so an acknowledgement of some other upload never destroys data the centre
did not receive. Replaying an acknowledgement is harmless (the records are already gone).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import struct
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from ..errors import TrustError
from ..protocol.codes import ErrorCode
from . import keys
from .certs import OperatorKey
from .keys import CTX_ACK, b64decode, b64encode, load_json
from .signeddoc import sign_document, verify_document

log = logging.getLogger(__name__)

FILE_MAGIC = b"APSEAL1\n"
SUFFIX = ".sealed"
ACK_TYPE = "appliance.sealed-ack.v1"
ACK_ROLES = frozenset({"ingest"})
RECORD_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
X25519_PUB_PREFIX = "x25519-pub:"
X25519_SEED_PREFIX = "x25519-key:"
ENROLLMENT_KEY_FILE = "enrollment.key"
ENROLLMENT_PUB_FILE = "enrollment.pub"
MAX_HEADER = 4096
MAX_ACK_BYTES = 1024 * 1024


def _bad(code: str, message: str, **details: Any) -> TrustError:
    return TrustError(message, code=code, details=details)


# --- keys --------------------------------------------------------------------------------------


def parse_enrollment_public_key(text: str) -> bytes:
    """``x25519-pub:<base64>`` (or bare base64) to 32 raw bytes."""
    body = text.strip()
    if body.startswith(X25519_PUB_PREFIX):
        body = body[len(X25519_PUB_PREFIX) :]
    raw = b64decode(body, what="enrollment public key", code=ErrorCode.KEY_MALFORMED)
    if len(raw) != 32:
        raise _bad(ErrorCode.KEY_MALFORMED, "enrollment public key must be 32 bytes")
    return raw


def load_enrollment_public_key(path: Path) -> bytes:
    """Load the central enrollment public key installed with the trust bundle."""
    try:
        return parse_enrollment_public_key(Path(path).read_text(encoding="ascii"))
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad(
            ErrorCode.KEY_MISSING, f"cannot read enrollment public key {path}: {exc}"
        ) from None


class EnrollmentKeyPair:
    """The central service's X25519 key pair (central side; kiosks only get the public key)."""

    def __init__(self, private_key: PrivateKey) -> None:
        self._key = private_key
        self.public_key: bytes = bytes(private_key.public_key)

    def __repr__(self) -> str:
        return f"EnrollmentKeyPair(public={keys.key_id(self.public_key)})"

    @classmethod
    def generate(cls) -> EnrollmentKeyPair:
        return cls(PrivateKey.generate())

    def save(self, directory: Path, *, overwrite: bool = False) -> None:
        directory = Path(directory)
        keys.write_private_file(
            directory / ENROLLMENT_KEY_FILE,
            f"{X25519_SEED_PREFIX}{b64encode(bytes(self._key))}\n".encode("ascii"),
            overwrite=overwrite,
        )
        keys.write_public_file(
            directory / ENROLLMENT_PUB_FILE,
            f"{X25519_PUB_PREFIX}{b64encode(self.public_key)}\n".encode("ascii"),
        )

    @classmethod
    def load(cls, directory: Path) -> EnrollmentKeyPair:
        path = Path(directory) / ENROLLMENT_KEY_FILE
        text = keys.read_private_file(path).decode("ascii", "replace").strip()
        if not text.startswith(X25519_SEED_PREFIX):
            raise _bad(ErrorCode.KEY_MALFORMED, f"{path} is not an x25519 key file")
        raw = b64decode(
            text[len(X25519_SEED_PREFIX) :], what=str(path), code=ErrorCode.KEY_MALFORMED
        )
        if len(raw) != 32:
            raise _bad(ErrorCode.KEY_MALFORMED, f"{path} must hold 32 bytes")
        return cls(PrivateKey(raw))

    def unseal(self, sealed: bytes) -> bytes:
        """Open a SealedBox ciphertext (central side; also used by tests)."""
        try:
            return bytes(SealedBox(self._key).decrypt(sealed))
        except (CryptoError, ValueError, TypeError):
            raise _bad(
                ErrorCode.BAD_SIGNATURE, "sealed record does not open with this key"
            ) from None

    def unseal_file(self, path: Path) -> tuple[dict[str, Any], bytes]:
        """Read a ``.sealed`` file and open it: ``(header, plaintext)``."""
        header, blob = read_sealed_file(Path(path))
        return header, self.unseal(blob)


# --- sealing -----------------------------------------------------------------------------------


def seal(plaintext: bytes | bytearray | memoryview, recipient_public_key: bytes) -> bytes:
    """SealedBox ciphertext of ``plaintext`` for the recipient (anonymous sender)."""
    if len(recipient_public_key) != 32:
        raise _bad(ErrorCode.KEY_MALFORMED, "recipient public key must be 32 bytes")
    return bytes(SealedBox(PublicKey(recipient_public_key)).encrypt(bytes(plaintext)))


def _encode_file(header: dict[str, Any], blob: bytes) -> bytes:
    hdr = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return FILE_MAGIC + struct.pack(">I", len(hdr)) + hdr + blob


def read_sealed_file(path: Path) -> tuple[dict[str, Any], bytes]:
    """Parse a sealed file into ``(header, ciphertext)``; checks the recorded SHA-256."""
    data = Path(path).read_bytes()
    if not data.startswith(FILE_MAGIC) or len(data) < len(FILE_MAGIC) + 4:
        raise _bad(ErrorCode.SEALED_CORRUPT, f"{path} is not a sealed record", path=str(path))
    (hlen,) = struct.unpack(">I", data[len(FILE_MAGIC) : len(FILE_MAGIC) + 4])
    start = len(FILE_MAGIC) + 4
    if hlen > MAX_HEADER or start + hlen > len(data):
        raise _bad(ErrorCode.SEALED_CORRUPT, f"{path} has a bad header length", path=str(path))
    try:
        header = load_json(data[start : start + hlen])
    except (UnicodeDecodeError, ValueError):
        raise _bad(ErrorCode.SEALED_CORRUPT, f"{path} header is not JSON", path=str(path)) from None
    blob = data[start + hlen :]
    if not isinstance(header, dict) or header.get("sha256") != hashlib.sha256(blob).hexdigest():
        raise _bad(
            ErrorCode.SEALED_CORRUPT, f"{path} ciphertext does not match its header", path=str(path)
        )
    return header, blob


@dataclass(frozen=True)
class SealedRecord:
    """Metadata of one stored sealed record (no biometric content)."""

    record_id: str
    kind: str
    created_at: float
    sha256: str
    size: int


@dataclass
class AckResult:
    """What an acknowledgement did: ids shredded, ids unknown here, ids whose hash differed."""

    shredded: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    issuer: str = ""

    def to_audit(self) -> dict[str, Any]:
        return {
            "shredded": list(self.shredded),
            "unknown": list(self.unknown),
            "mismatched": list(self.mismatched),
            "issuer": self.issuer,
        }


class SealedStore:
    """Sealed records on disk, waiting for the fleet's acknowledgement."""

    def __init__(self, directory: Path, recipient_public_key: bytes, *, device_id: str) -> None:
        if len(recipient_public_key) != 32:
            raise _bad(ErrorCode.KEY_MALFORMED, "enrollment public key must be 32 bytes")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.recipient_public_key = recipient_public_key
        self.device_id = device_id

    def _path(self, record_id: str) -> Path:
        if not isinstance(record_id, str) or not RECORD_ID_RE.match(record_id):
            raise _bad(ErrorCode.INVALID_NAME, f"invalid record id {record_id!r}")
        return self.directory / f"{record_id}{SUFFIX}"

    def put(
        self, record_id: str, plaintext: bytes | bytearray, *, kind: str, overwrite: bool = False
    ) -> SealedRecord:
        """Seal ``plaintext`` and store it (0600, atomic). Plaintext never reaches the disk.

        Pass a ``bytearray`` to have it zeroed once sealed (an immutable ``bytes`` object
        cannot be wiped; drop the last reference to it promptly).
        """
        path = self._path(record_id)
        if path.exists() and not overwrite:
            raise _bad(ErrorCode.RECORD_EXISTS, f"sealed record {record_id!r} already exists")
        try:
            blob = seal(plaintext, self.recipient_public_key)
        finally:
            if isinstance(plaintext, bytearray):
                plaintext[:] = bytes(len(plaintext))
        rec = SealedRecord(
            record_id=record_id,
            kind=str(kind),
            created_at=time.time(),
            sha256=hashlib.sha256(blob).hexdigest(),
            size=len(blob),
        )
        header = {
            "id": rec.record_id,
            "kind": rec.kind,
            "created_at": rec.created_at,
            "sha256": rec.sha256,
            "size": rec.size,
        }
        keys.atomic_write(path, _encode_file(header, blob), mode=0o600)
        log.info("sealed record %s (%s, %d bytes)", record_id, kind, rec.size)
        return rec

    def read(self, record_id: str) -> tuple[SealedRecord, bytes]:
        """The record's metadata and ciphertext (what the uploader sends to the centre)."""
        path = self._path(record_id)
        if not path.exists():
            raise _bad(ErrorCode.RECORD_MISSING, f"no sealed record {record_id!r}")
        header, blob = read_sealed_file(path)
        return self._meta(header), blob

    @staticmethod
    def _meta(header: dict[str, Any]) -> SealedRecord:
        return SealedRecord(
            record_id=str(header.get("id")),
            kind=str(header.get("kind")),
            created_at=float(header.get("created_at", 0.0)),
            sha256=str(header.get("sha256")),
            size=int(header.get("size", 0)),
        )

    def list(self) -> list[SealedRecord]:
        """Stored records, oldest first; corrupt files are logged and skipped."""
        out: list[SealedRecord] = []
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            try:
                header, _blob = read_sealed_file(path)
            except TrustError as exc:
                log.warning("skipping corrupt sealed file %s: %s", path.name, exc.message)
                continue
            out.append(self._meta(header))
        return sorted(out, key=lambda r: r.created_at)

    def _shred(self, path: Path) -> None:
        size = path.stat().st_size
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            os.write(fd, bytes(size))
            os.fsync(fd)
        finally:
            os.close(fd)
        path.unlink()
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def apply_ack(
        self, ack: bytes, roots: Sequence[bytes], *, now: float, revoked: Collection[str] = ()
    ) -> AckResult:
        """Verify a signed acknowledgement and shred the records it confirms.

        Raises ``TrustError`` (codes as in :func:`verify_ack`) if the acknowledgement itself
        is not acceptable; then nothing is deleted.
        """
        verified = verify_ack(ack, roots, device_id=self.device_id, now=now, revoked=revoked)
        result = AckResult(issuer=verified.issuer)
        for record_id, digest in verified.records:
            try:
                path = self._path(record_id)
            except TrustError:
                result.unknown.append(record_id)
                continue
            if not path.exists():
                result.unknown.append(record_id)
                continue
            try:
                header, _blob = read_sealed_file(path)
            except TrustError:
                # No longer a sealed file: a shred of this very record was interrupted (the
                # zeros written, the unlink not done). The centre holds the verified copy it
                # acknowledges, so finishing the shred loses nothing.
                log.info("finishing the interrupted shred of sealed record %s", record_id)
                with contextlib.suppress(FileNotFoundError):
                    self._shred(path)
                result.shredded.append(record_id)
                continue
            if header.get("sha256") != digest:
                result.mismatched.append(record_id)
                continue
            with contextlib.suppress(FileNotFoundError):
                self._shred(path)
            result.shredded.append(record_id)
        log.info(
            "acknowledgement from %s: shredded=%d unknown=%d mismatched=%d",
            verified.issuer,
            len(result.shredded),
            len(result.unknown),
            len(result.mismatched),
        )
        return result


# --- acknowledgements --------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedAck:
    device: str
    issuer: str
    issued_at: int
    records: tuple[tuple[str, str], ...]


def build_ack(
    key: OperatorKey,
    device_id: str,
    records: Iterable[tuple[str, str]],
    *,
    issued_at: int | None = None,
) -> bytes:
    """Central side: acknowledge receipt of ``(record id, ciphertext sha256)`` pairs."""
    fields = {"records": [{"id": rid, "sha256": digest} for rid, digest in records]}
    return sign_document(key, ACK_TYPE, CTX_ACK, device_id, fields, issued_at=issued_at)


def verify_ack(
    ack: bytes,
    roots: Sequence[bytes],
    *,
    device_id: str,
    now: float,
    allowed_roles: Iterable[str] = ACK_ROLES,
    revoked: Collection[str] = (),
) -> VerifiedAck:
    """Check an acknowledgement: chain (``untrusted_issuer``, ``cert_expired``,
    ``cert_revoked``), signature
    (``bad_signature``), role (``forbidden_role``), device (``wrong_target``), and shape
    (``malformed_envelope``). Returns the acknowledged ``(id, sha256)`` pairs."""
    doc = verify_document(
        ack,
        roots,
        typ=ACK_TYPE,
        context=CTX_ACK,
        device_id=device_id,
        roles=allowed_roles,
        now=now,
        revoked=revoked,
        max_bytes=MAX_ACK_BYTES,
        what="acknowledgement",
    )
    items = doc.body.get("records")
    if not isinstance(items, list):
        raise _bad(ErrorCode.MALFORMED_ENVELOPE, "acknowledgement records must be a list")
    pairs: list[tuple[str, str]] = []
    for item in items:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("id"), str)
            or not isinstance(item.get("sha256"), str)
        ):
            raise _bad(ErrorCode.MALFORMED_ENVELOPE, "each acknowledged record needs id and sha256")
        pairs.append((item["id"], item["sha256"]))
    issued = doc.body.get("issued_at")
    return VerifiedAck(
        device=device_id,
        issuer=doc.issuer,
        issued_at=issued if isinstance(issued, int) else 0,
        records=tuple(pairs),
    )


# --- plaintext scan ------------------------------------------------------------------------------

# Signatures long enough to search anywhere in a file without false hits in ciphertext.
_ANYWHERE = {
    "png": b"\x89PNG\r\n\x1a\n",
    "jp2": b"\x00\x00\x00\x0cjP  \r\n\x87\n",
    "iso19794-4": b"FIR\x00010\x00",
    "iso19794-5": b"FAC\x00010\x00",
    "jpeg-jfif": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
}
# Short signatures only checked at the start of a file.
_AT_START = {
    "jpeg": b"\xff\xd8\xff",
    "wsq": b"\xff\xa0\xff",
    "j2k": b"\xff\x4f\xff\x51",
}


def scan_for_plaintext_biometrics(roots: Iterable[Path]) -> list[tuple[Path, str]]:
    """Find files under ``roots`` that contain image or biometric-record magic numbers.

    Detects PNG, JPEG (JFIF anywhere, any JPEG at file start), JPEG 2000, WSQ and ISO/IEC
    19794-4/-5 records. Raw pixel buffers carry no magic and cannot be found this way.
    """
    hits: list[tuple[Path, str]] = []
    for given in roots:
        root = Path(given)
        paths = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in paths:
            try:
                data = path.read_bytes()
            except OSError:
                continue
            for name, magic in _AT_START.items():
                if data.startswith(magic):
                    hits.append((path, name))
            for name, magic in _ANYWHERE.items():
                if magic in data:
                    hits.append((path, name))
    return hits
