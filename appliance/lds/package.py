"""The issuance package's wire model (see issuance.py for building and verifying one).

Kept apart from the cryptography so the daemon can register ``card.encode`` and validate its
arguments without loading cryptography and asn1crypto until a card is actually written.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Base64Bytes, BaseModel, ConfigDict, Field, field_validator

MAX_FILE_BYTES = 60_000  # a 19794-5 portrait is ~15-20 KB; anything near 64 KiB is a mistake
FileName = Literal["EF.COM", "DG1", "DG2", "DG3", "DG13", "DG14", "DG15", "EF.SOD"]


class IssuancePackage(BaseModel):
    """What ``card.encode`` receives (base64 in JSON)."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = Field(1, description="Package format version")
    package_id: str = Field(
        ...,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="Issuer's identifier of this package (audit and replies)",
    )
    files: dict[FileName, Base64Bytes] = Field(
        ..., description="LDS files by name, full bytes including the outer tag, base64"
    )

    @field_validator("files")
    @classmethod
    def _sizes(cls, v: dict[str, bytes]) -> dict[str, bytes]:
        for name in ("EF.COM", "DG1", "EF.SOD"):
            if name not in v:
                raise ValueError(f"package lacks {name}")
        for name, data in v.items():
            if not data or len(data) > MAX_FILE_BYTES:
                raise ValueError(f"{name} must be 1-{MAX_FILE_BYTES} bytes")
        return v
