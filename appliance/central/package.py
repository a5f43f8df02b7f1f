"""The centre's strict decoders of the enrollment package and its upload (docs/enrollment.md);
no I/O. The container and chunk codec is the wire contract's (appliance/protocol/package.py), the
chain function the kiosk's (appliance/enrollment/package.py); what this module adds is what a
receiver of untrusted bytes needs: the manifest parsed only into its model, the sealed files, and
the refusal codes as ``TrustError``.

Container (``<package_id>.pkg``, docs/enrollment.md "The package")::

    b"APPKG1\\n"
    u32 BE manifest length,  manifest (UTF-8 JSON)
    u32 BE signature length, signature ("ed25519;<device key id>;<base64>", the device key's
           detached signature over the exact manifest bytes, context appliance/device-message/v1)
    then per record, in manifest order: u32 BE length, the sealed record file as SealedStore
           stores it (b"APSEAL1\\n" | u32 BE header length | header JSON | SealedBox ciphertext)

Hash chain (docs/enrollment.md "Records, sealing and the hash chain", MOSIP SBI's chain over raw
digests): ``hash_0 = SHA-256("")``, ``hash_i = SHA-256(hash_{i-1} || SHA-256(record_i))``, written
as uppercase hex, in capture order.

Upload chunk (docs/enrollment.md "Upload"): ``u16 BE header length``, header JSON
``{package_id, index, count, total_bytes, sha256, package_sha256}``, then the chunk bytes.

Every decoder raises :class:`~appliance.errors.TrustError` with a stable code (the reason a
package is ``rejected``): ``package_malformed``, ``chunk_malformed``, ``sealed_malformed``.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..enrollment import package as kiosk_codec
from ..enrollment.package import CHAIN_START
from ..errors import ProtocolError, TrustError
from ..protocol import package as codec
from ..protocol.codes import ErrorCode
from ..protocol.package import (
    MANIFEST_TYPE,
    PACKAGE_ID_RE,
    RESERVED_IDS,
    ChunkHeader,
    Container,
    Manifest,
    PackageFormatError,
    encode_chunk,
)
from ..trust.keys import load_json
from ..trust.sealed import FILE_MAGIC as SEALED_MAGIC
from ..trust.sealed import MAX_HEADER as SEALED_MAX_HEADER

PACKAGE_TYPE = MANIFEST_TYPE
HASH_0 = CHAIN_START


def _bad(code: str, message: str, **details: Any) -> TrustError:
    return TrustError(message, code=code, details=details)


def valid_package_id(package_id: object) -> bool:
    return (
        isinstance(package_id, str)
        and PACKAGE_ID_RE.match(package_id) is not None
        and package_id not in RESERVED_IDS
    )


# --- hash chain ---------------------------------------------------------------------------------


def chain_next(previous_hex: str, record_sha256_hex: str) -> str:
    """``SHA-256(bytes(previous) || bytes(record sha256))`` as uppercase hex (the kiosk's own
    function, appliance.enrollment.package, so both ends compute one chain)."""
    try:
        return kiosk_codec.chain_next(previous_hex, record_sha256_hex)
    except ProtocolError as exc:
        raise _bad(ErrorCode.CHAIN_BROKEN, exc.message) from None


def chain(record_sha256s: Iterable[str]) -> list[str]:
    """The chain values ``hash_1 .. hash_n`` over the records' SHA-256 digests (hex)."""
    out: list[str] = []
    prev = HASH_0
    for digest in record_sha256s:
        prev = chain_next(prev, digest)
        out.append(prev)
    return out


# --- manifest -------------------------------------------------------------------------------------


def parse_manifest(data: bytes) -> Manifest:
    """Parse and validate manifest bytes (call only after the signature over them held)."""
    try:
        obj = load_json(data)
    except (UnicodeDecodeError, ValueError):
        raise _bad(ErrorCode.PACKAGE_MALFORMED, "manifest is not UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise _bad(ErrorCode.PACKAGE_MALFORMED, "manifest must be a JSON object")
    try:
        return Manifest.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _bad(
            ErrorCode.PACKAGE_MALFORMED, f"manifest field {where}: {first['msg']}", field=where
        ) from None


# --- container ------------------------------------------------------------------------------------


def decode_container(data: bytes) -> Container:
    """Split a container (the contract's one decoder, appliance/protocol/package.py); every
    length is checked, trailing bytes are an error; ``TrustError`` ``package_malformed``."""
    try:
        return codec.decode_container(data)
    except PackageFormatError as exc:
        raise _bad(exc.code, exc.message, **exc.details) from None


# --- sealed record files --------------------------------------------------------------------------


@dataclass(frozen=True)
class SealedFile:
    """A sealed record file's header and ciphertext (format of appliance.trust.sealed)."""

    header: dict[str, Any]
    ciphertext: bytes

    @property
    def record_id(self) -> str:
        return str(self.header.get("id"))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.ciphertext).hexdigest()


def decode_sealed_file(data: bytes, *, what: str = "sealed record") -> SealedFile:
    """Parse ``APSEAL1`` bytes; the header's ``sha256`` must be the ciphertext's."""
    if not data.startswith(SEALED_MAGIC) or len(data) < len(SEALED_MAGIC) + 4:
        raise _bad(ErrorCode.SEALED_MALFORMED, f"{what} is not a sealed record file")
    (hlen,) = struct.unpack_from(">I", data, len(SEALED_MAGIC))
    start = len(SEALED_MAGIC) + 4
    if hlen > SEALED_MAX_HEADER or start + hlen > len(data):
        raise _bad(ErrorCode.SEALED_MALFORMED, f"{what} has an impossible header length")
    try:
        header = load_json(data[start : start + hlen])
    except (UnicodeDecodeError, ValueError):
        raise _bad(ErrorCode.SEALED_MALFORMED, f"{what} header is not JSON") from None
    if not isinstance(header, dict):
        raise _bad(ErrorCode.SEALED_MALFORMED, f"{what} header is not an object")
    sealed = SealedFile(header, data[start + hlen :])
    if header.get("sha256") != sealed.sha256:
        raise _bad(
            ErrorCode.SEALED_MISMATCH, f"{what}: ciphertext does not match its header's SHA-256"
        )
    return sealed


def encode_sealed_file(header: dict[str, Any], ciphertext: bytes) -> bytes:
    """The ``APSEAL1`` file bytes (tests build packages with it)."""
    hdr = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return SEALED_MAGIC + struct.pack(">I", len(hdr)) + hdr + ciphertext


# --- upload chunks --------------------------------------------------------------------------------


def decode_chunk(payload: bytes) -> tuple[ChunkHeader, bytes]:
    """Split a chunk message and check its own SHA-256 and index range (the contract's one
    decoder); ``TrustError`` ``chunk_malformed``."""
    try:
        return codec.decode_chunk(payload)
    except PackageFormatError as exc:
        raise _bad(exc.code, exc.message, **exc.details) from None


def split_package(package_id: str, data: bytes, chunk_bytes: int = 32 * 1024) -> list[bytes]:
    """Chunk messages for a whole package, index order (the kiosk's job; tests use it)."""
    if chunk_bytes < 1:
        raise ValueError("chunk_bytes must be positive")
    total = hashlib.sha256(data).hexdigest()
    pieces = [data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes)] or [b""]
    return [
        encode_chunk(
            {
                "package_id": package_id,
                "index": i,
                "count": len(pieces),
                "total_bytes": len(data),
                "sha256": hashlib.sha256(p).hexdigest(),
                "package_sha256": total,
            },
            p,
        )
        for i, p in enumerate(pieces)
    ]
