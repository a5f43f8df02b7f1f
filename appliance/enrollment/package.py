"""The kiosk's side of the enrollment package (no I/O): the hash chain and the record formats.

The container and chunk codec and the manifest model are the wire contract's
(appliance/protocol/package.py), shared with the central service; they are re-exported here for
the kiosk's modules. The formats are specified in docs/enrollment.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import ProtocolError
from ..protocol.codes import ErrorCode
from ..protocol.package import (
    MAGIC,
    MANIFEST_TYPE,
    MAX_CHUNK_HEADER,
    Container,
    PackageFormatError,
    encode_chunk,
    encode_container,
)
from ..protocol.package import decode_container as _decode_container

__all__ = [
    "CHAIN_START",
    "FACE_FORMAT",
    "FINGER_FORMAT",
    "MAGIC",
    "MANIFEST_TYPE",
    "MAX_CHUNK_HEADER",
    "Container",
    "chain_next",
    "chain_over",
    "decode_container",
    "encode_chunk",
    "encode_container",
    "manifest_of",
    "record_digest",
    "split",
    "verify_chain",
]

FACE_FORMAT = "ISO/IEC 19794-5:2005"
FINGER_FORMAT = "ISO/IEC 19794-4:2005"
# hash_0 of the chain: SHA-256 of the empty string (MOSIP SBI 0.9.5, "previousHash").
CHAIN_START = hashlib.sha256(b"").hexdigest().upper()


def _bad(message: str) -> ProtocolError:
    return ProtocolError(message, device="enrollment", code=ErrorCode.BAD_PACKAGE, retryable=False)


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


def decode_container(data: bytes) -> Container:
    """The contract's decoder for the kiosk's own packages; ``ProtocolError`` ``bad_package``."""
    try:
        return _decode_container(data)
    except PackageFormatError as exc:
        raise _bad(exc.message) from None


def manifest_of(container: Container) -> dict[str, Any]:
    """The manifest of a decoded container as a JSON object; ``ProtocolError`` otherwise."""
    try:
        obj = json.loads(container.manifest_bytes)
    except (ValueError, RecursionError):
        raise _bad("manifest is not UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise _bad("manifest is not an object")
    return obj


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
