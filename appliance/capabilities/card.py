"""Chip card issuance as a service: check an issuance package, write and lock a blank chip,
verify it by read-back; read a chip with BAC. Used by the MQTT ``card.*`` adapters and, next,
the kiosk's local screen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .base import Job

if TYPE_CHECKING:
    from ..drivers.card.interface import CardEncoder
    from ..lds.package import IssuancePackage


@dataclass(frozen=True)
class EncodeResult:
    """A card issued and verified: the outcome summary (no portrait, a masked number)."""

    outcome: str
    package_id: str
    document_number: str  # masked
    files: dict[str, dict[str, Any]]  # name -> size and SHA-256
    apdus: int
    duration_ms: float
    reply: dict[str, Any]  # the whole summary, as card.encode replies it

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> EncodeResult:
        return cls(
            outcome=str(reply["outcome"]),
            package_id=str(reply["package_id"]),
            document_number=str(reply["document_number"]),
            files=dict(reply["files"]),
            apdus=int(reply["apdus"]),
            duration_ms=float(reply["duration_ms"]),
            reply=reply,
        )


class CardIssuer:
    """The chip encoder's work, with a :class:`Job` for deadline, cancellation and progress."""

    def __init__(self, encoder: CardEncoder) -> None:
        self.encoder = encoder

    def status(self) -> dict[str, Any]:
        """Reader, card presence, ATR, card profile and trust bundle (no card I/O)."""
        return self.encoder.status()

    def encode(self, job: Job, args: IssuancePackage) -> EncodeResult:
        """Check ``args`` (refused before any card I/O), write and lock a blank chip, verify
        it by read-back. Progress: the encoder's steps, each with no data."""
        job.check()
        reply = self.encoder.encode(
            args, cancelled=job.cancelled, progress=lambda step: job.progress(step, {})
        )
        return EncodeResult.from_reply(reply)

    def read_back(
        self, job: Job, *, document_number: str, birth: str, expiry: str
    ) -> dict[str, Any]:
        """Read the chip in the reader with BAC (the three MRZ fields): Passive
        Authentication, DG1 and DG13 decoded, DG2 by hash and size."""
        job.check()
        return self.encoder.read(
            document_number,
            birth,
            expiry,
            cancelled=job.cancelled,
            progress=lambda step: job.progress(step, {}),
        )
