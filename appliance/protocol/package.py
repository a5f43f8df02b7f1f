"""The enrollment package's wire formats as models (docs/enrollment.md "The package",
"Upload"): the signed manifest and the upload chunk header, with the limits and names both ends
keep to. The kiosk builds them (appliance/enrollment/), the centre parses them
(appliance/central/package.py); JSON Schemas ``message.package-manifest.json`` and
``message.upload-chunk-header.json`` are generated from them.

Container (``<package_id>.pkg``)::

    b"APPKG1\\n"
    u32 BE manifest length,  manifest (UTF-8 JSON, :class:`Manifest`)
    u32 BE signature length, signature ("ed25519;<device key id>;<base64>")
    then per record, in manifest order: u32 BE length, the sealed record file

Upload chunk: ``u16 BE header length``, header JSON (:class:`ChunkHeader`), the chunk bytes.

The one codec of both ends lives here too (:func:`encode_container`, :func:`decode_container`,
:func:`encode_chunk`, :func:`decode_chunk`). Its decoders raise :class:`PackageFormatError`, a
plain ``ValueError`` carrying an :class:`~appliance.protocol.codes.ErrorCode`, never the project's
error tree (``appliance.errors`` imports this package); each caller wraps it into its own error
(the centre: ``TrustError``, docs/enrollment.md "Verification"; the kiosk: ``ProtocolError``).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .codes import ErrorCode

MAGIC = b"APPKG1\n"
MANIFEST_TYPE = "appliance.enrollment-package.v1"
MAX_MANIFEST = 1024 * 1024
MAX_SIGNATURE = 1024
MAX_RECORDS = 64
MAX_PACKAGE_BYTES = 64 * 1024 * 1024
MAX_CHUNK_HEADER = 4096
MAX_CHUNKS = 65536

#: A package id is a topic segment and a file name: no separators, no wildcards, no dot-dot;
#: ``ack`` and ``receipt`` are the centre's own topics under ``upload/``.
PACKAGE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
RESERVED_IDS = frozenset({"ack", "receipt"})
CITIZEN_REF_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
RECORD_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
HEX64 = r"^[0-9A-Fa-f]{64}$"


class _Model(BaseModel):
    # Unknown fields are tolerated (a newer kiosk may add metadata); every field the centre
    # relies on is typed and checked.
    model_config = ConfigDict(extra="allow", frozen=True)


class RecordEntry(_Model):
    """One captured record as the manifest lists it."""

    seq: int = Field(..., ge=1, le=MAX_RECORDS)
    record_id: str = Field(..., pattern=RECORD_ID_RE.pattern)
    kind: Literal["face", "finger"]
    position: int = Field(..., ge=0, le=10)
    format: str
    quality: int | None = None
    met: bool | None = None
    attempts: int | None = None
    captured_at: float | None = None
    timings: dict[str, Any] = Field(default_factory=dict)
    sha256: str = Field(..., pattern=HEX64)
    hash: str = Field(..., pattern=HEX64)
    sealed_sha256: str = Field(..., pattern=HEX64)
    sealed_size: int = Field(..., ge=0)


class ExceptionEntry(_Model):
    """A finger not captured, with its reason (missing, bandaged, unreadable, other)."""

    position: int = Field(..., ge=1, le=10)
    reason: str = Field(..., min_length=1, max_length=64)
    detail: str | None = ""
    attempts: int | None = 0


class OfficerEntry(_Model):
    """The officer who ran an attended enrollment at the kiosk."""

    officer_id: str = Field(..., pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    name: str = Field("", max_length=120)


class StationEntry(_Model):
    """How the enrollment was run at the kiosk: ``attended`` names the officer."""

    mode: Literal["attended", "self_service"]
    officer: OfficerEntry | None = None

    @model_validator(mode="after")
    def _officer_when_attended(self) -> StationEntry:
        if self.mode == "attended" and self.officer is None:
            raise ValueError("an attended enrollment names its officer")
        return self


class Manifest(_Model):
    """The signed description of a package (docs/enrollment.md "Manifest")."""

    typ: Literal["appliance.enrollment-package.v1"]
    package_id: str = Field(..., pattern=PACKAGE_ID_RE.pattern)
    session_id: str = Field(..., min_length=1, max_length=128)
    device: str = Field(..., min_length=1, max_length=64)
    software: str = ""
    citizen_ref: str = Field(..., pattern=CITIZEN_REF_RE.pattern)
    policy: Any = None
    issuance: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    records: list[RecordEntry] = Field(..., max_length=MAX_RECORDS)
    exceptions: list[ExceptionEntry] = Field(default_factory=list)
    chain_head: str = Field(..., pattern=HEX64)
    station: StationEntry | None = None


class ChunkHeader(BaseModel):
    """The header of one upload chunk."""

    model_config = ConfigDict(extra="allow", frozen=True)

    package_id: str = Field(..., pattern=PACKAGE_ID_RE.pattern)
    index: int = Field(..., ge=0, lt=MAX_CHUNKS)
    count: int = Field(..., ge=1, le=MAX_CHUNKS)
    total_bytes: int = Field(..., ge=1, le=MAX_PACKAGE_BYTES)
    sha256: str = Field(..., pattern=HEX64)
    package_sha256: str = Field(..., pattern=HEX64)


# --- the codec ------------------------------------------------------------------------------------


class PackageFormatError(ValueError):
    """Bytes that are not a well-formed container or chunk; ``code`` is ``package_malformed`` or
    ``chunk_malformed``, ``details`` names what was wrong (e.g. ``length``)."""

    def __init__(self, code: ErrorCode, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


def _malformed(message: str, **details: Any) -> PackageFormatError:
    return PackageFormatError(ErrorCode.PACKAGE_MALFORMED, message, **details)


@dataclass(frozen=True)
class Container:
    """A decoded container: the exact manifest bytes (what the signature covers, parse them with
    :class:`Manifest` only after it held), the signature header, the sealed record files."""

    manifest_bytes: bytes
    signature: str
    sealed_files: tuple[bytes, ...]


def encode_container(manifest_bytes: bytes, signature: str, sealed: Sequence[bytes]) -> bytes:
    """The container bytes, records in manifest order."""
    sig = signature.encode("ascii")
    parts = [MAGIC, struct.pack(">I", len(manifest_bytes)), manifest_bytes]
    parts += [struct.pack(">I", len(sig)), sig]
    for blob in sealed:
        parts += [struct.pack(">I", len(blob)), blob]
    return b"".join(parts)


def decode_container(data: bytes) -> Container:
    """Split a container (not its contents); every length is bounded, trailing bytes are an
    error; :class:`PackageFormatError` ``package_malformed`` on any defect."""
    if len(data) > MAX_PACKAGE_BYTES:
        raise _malformed(f"package larger than {MAX_PACKAGE_BYTES} bytes")
    if not data.startswith(MAGIC):
        raise _malformed("not an enrollment package (no APPKG1 magic)")
    pos = len(MAGIC)

    def take(limit: int, what: str) -> bytes:
        nonlocal pos
        if pos + 4 > len(data):
            raise _malformed(f"package truncated before the {what} length")
        (n,) = struct.unpack_from(">I", data, pos)
        pos += 4
        if n > limit or pos + n > len(data):
            raise _malformed(f"{what} length {n} is impossible", length=n)
        chunk = data[pos : pos + n]
        pos += n
        return chunk

    manifest = take(MAX_MANIFEST, "manifest")
    sig_raw = take(MAX_SIGNATURE, "signature")
    try:
        signature = sig_raw.decode("ascii")
    except UnicodeDecodeError:
        raise _malformed("signature is not ASCII") from None
    files: list[bytes] = []
    while pos < len(data):
        if len(files) >= MAX_RECORDS:
            raise _malformed(f"more than {MAX_RECORDS} records")
        files.append(take(MAX_PACKAGE_BYTES, f"record {len(files) + 1}"))
    return Container(manifest, signature, tuple(files))


def encode_chunk(header: dict[str, Any], payload: bytes) -> bytes:
    """One upload chunk message: ``u16 BE header length``, header JSON, the bytes."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack(">H", len(head)) + head + payload


def decode_chunk(payload: bytes) -> tuple[ChunkHeader, bytes]:
    """Split a chunk message and check its header, index range and own SHA-256;
    :class:`PackageFormatError` ``chunk_malformed`` on any defect."""
    code = ErrorCode.CHUNK_MALFORMED
    if len(payload) < 2:
        raise PackageFormatError(code, "chunk shorter than its header length")
    (hlen,) = struct.unpack_from(">H", payload, 0)
    if hlen > MAX_CHUNK_HEADER or 2 + hlen > len(payload):
        raise PackageFormatError(code, f"chunk header length {hlen} is impossible")
    try:
        header = ChunkHeader.model_validate(json.loads(payload[2 : 2 + hlen]))
    except (ValueError, RecursionError) as exc:  # ValidationError is a ValueError
        raise PackageFormatError(code, f"chunk header invalid: {str(exc)[:200]}") from None
    if header.index >= header.count:
        raise PackageFormatError(code, f"chunk index {header.index} not below {header.count}")
    data = payload[2 + hlen :]
    if hashlib.sha256(data).hexdigest() != header.sha256.lower():
        raise PackageFormatError(code, f"chunk {header.index} does not match its SHA-256")
    return header, data
