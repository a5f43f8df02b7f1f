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
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
