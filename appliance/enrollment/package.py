"""The enrollment package's pure codec: hash chain, manifest, container, chunks (no I/O).

Shared by the kiosk (which builds and sends packages) and the central service (which checks
them). The formats are specified in docs/enrollment.md.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ProtocolError

MAGIC = b"APPKG1\n"
MANIFEST_TYPE = "appliance.enrollment-package.v1"
FACE_FORMAT = "ISO/IEC 19794-5:2005"
FINGER_FORMAT = "ISO/IEC 19794-4:2005"
# hash_0 of the chain: SHA-256 of the empty string (MOSIP SBI 0.9.5, "previousHash").
CHAIN_START = hashlib.sha256(b"").hexdigest().upper()
MAX_CHUNK_HEADER = 4096


def _bad(message: str) -> ProtocolError:
    return ProtocolError(message, device="enrollment", code="bad_package", retryable=False)


def record_digest(record: bytes) -> str:
    """``sha256`` of a plaintext record, uppercase hex."""
    return hashlib.sha256(record).hexdigest().upper()


def chain_next(previous: str, digest: str) -> str:
    """``hash_i = SHA-256(bytes(hash_{i-1}) || bytes(sha256_i))``, uppercase hex."""
    try:
        prev_b, dig_b = bytes.fromhex(previous), bytes.fromhex(digest)
    except ValueError:
        raise _bad("chain values must be hex") from None
    if len(prev_b) != 32 or len(dig_b) != 32:
        raise _bad("chain values must be 32-byte digests")
    return hashlib.sha256(prev_b + dig_b).hexdigest().upper()


def chain_over(digests: Iterable[str]) -> list[str]:
    """Every chain value for the record digests in capture order."""
    out: list[str] = []
    prev = CHAIN_START
    for d in digests:
        prev = chain_next(prev, d)
        out.append(prev)
    return out


@dataclass(frozen=True)
class Container:
    manifest_bytes: bytes
    signature: str
    sealed: list[bytes]

    @property
    def manifest(self) -> dict[str, Any]:
        obj = json.loads(self.manifest_bytes)
        if not isinstance(obj, dict):
            raise _bad("manifest is not an object")
        return obj


def encode_container(manifest_bytes: bytes, signature: str, sealed: Sequence[bytes]) -> bytes:
    sig = signature.encode("ascii")
    parts = [
        MAGIC,
        struct.pack(">I", len(manifest_bytes)),
        manifest_bytes,
        struct.pack(">I", len(sig)),
        sig,
    ]
    for blob in sealed:
        parts += [struct.pack(">I", len(blob)), blob]
    return b"".join(parts)


def decode_container(data: bytes) -> Container:
    """Parse the framing (not the contents); ProtocolError ``bad_package`` on any defect."""
    if not data.startswith(MAGIC):
        raise _bad("not an enrollment package (bad magic)")
    pos = len(MAGIC)

    def take() -> bytes:
        nonlocal pos
        if pos + 4 > len(data):
            raise _bad("truncated package")
        (n,) = struct.unpack_from(">I", data, pos)
        pos += 4
        if pos + n > len(data):
            raise _bad("truncated package")
        chunk = data[pos : pos + n]
        pos += n
        return chunk

    manifest = take()
    try:
        signature = take().decode("ascii")
    except UnicodeDecodeError:
        raise _bad("signature is not ASCII") from None
    sealed = []
    while pos < len(data):
        sealed.append(take())
    return Container(manifest, signature, sealed)


def encode_chunk(header: dict[str, Any], payload: bytes) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack(">H", len(head)) + head + payload


def decode_chunk(data: bytes) -> tuple[dict[str, Any], bytes]:
    if len(data) < 2:
        raise _bad("chunk too short")
    (n,) = struct.unpack_from(">H", data, 0)
    if n > MAX_CHUNK_HEADER or 2 + n > len(data):
        raise _bad("bad chunk header length")
    try:
        header = json.loads(data[2 : 2 + n])
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _bad("chunk header is not JSON") from None
    if not isinstance(header, dict):
        raise _bad("chunk header is not an object")
    payload = data[2 + n :]
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise _bad("chunk checksum mismatch")
    return header, payload


def split(data: bytes, chunk_bytes: int) -> list[bytes]:
    return [data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes)] or [b""]


def verify_chain(records: Sequence[dict[str, Any]], chain_head: str) -> None:
    """Check the manifest's own chain values against its digests (central side also recomputes
    the digests from the unsealed records)."""
    prev = CHAIN_START
    for i, rec in enumerate(records):
        expected = chain_next(prev, str(rec.get("sha256", "")))
        if rec.get("hash") != expected:
            raise _bad(f"hash chain broken at record {i + 1}")
        prev = expected
    if records and chain_head != prev:
        raise _bad("chain head does not match the last record")
