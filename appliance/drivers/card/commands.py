"""Commands of the chip encoder: ``card.status``, ``card.read``, ``card.encode``.

The handlers are thin adapters over :class:`~appliance.capabilities.CardIssuer`; the daemon wires
:func:`register` into its command registry; the MQTT round trip is the agent's.
Replies never carry the portrait (DG2 is reported by hash and size) and logs never carry a full
personal number.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ...capabilities.base import Job
from ...capabilities.card import CardIssuer
from ...commands import CommandContext, CommandRegistry
from ...lds.mrz import bac_mrz_information
from ...lds.package import IssuancePackage
from .interface import CardEncoder


class ReadArgs(BaseModel):
    """The three MRZ fields BAC needs (what an officer types or an MRZ scanner reads)."""

    model_config = ConfigDict(extra="forbid")

    document_number: str = Field(
        ...,
        min_length=1,
        max_length=22,
        pattern=r"^[A-Za-z0-9<]+$",
        description="Document number as in the MRZ (the 12-digit CCCD number)",
    )
    birth: str = Field(..., pattern=r"^\d{6}$", description="Date of birth, YYMMDD")
    expiry: str = Field(
        ...,
        pattern=r"^(?:\d{6}|<{6})$",
        description="Date of expiry, YYMMDD; <<<<<< for a card without expiry (holder 60+)",
    )

    @model_validator(mode="after")
    def _dates(self) -> ReadArgs:
        self.document_number = self.document_number.upper()
        bac_mrz_information(self.document_number, self.birth, self.expiry)  # ValueError if bad
        return self


def register(
    registry: CommandRegistry, device: CardEncoder, *, issuer: CardIssuer | None = None
) -> None:
    """Register the card commands against ``device`` (adapters over ``issuer``, the card
    service; one is made if omitted)."""
    service = issuer if issuer is not None else CardIssuer(device)

    def card_status(ctx: CommandContext, args: Any) -> dict[str, Any]:
        """Reader, card presence, ATR, card profile and trust bundle of the chip encoder."""
        return service.status()

    def card_read(ctx: CommandContext, args: ReadArgs) -> dict[str, Any]:
        """Read a chip with BAC: Passive Authentication, DG1 and DG13 decoded, DG2 hash."""
        return service.read_back(
            Job.from_context(ctx),
            document_number=args.document_number,
            birth=args.birth,
            expiry=args.expiry,
        )

    def card_encode(ctx: CommandContext, args: IssuancePackage) -> dict[str, Any]:
        """Check an issuance package, write and lock a blank chip, verify it by read-back."""
        return service.encode(Job.from_context(ctx), args).reply

    registry.add("card.status", card_status, timeout_s=5.0, role="operator")
    registry.add("card.read", card_read, args=ReadArgs, timeout_s=30.0, role="operator")
    registry.add("card.encode", card_encode, args=IssuancePackage, timeout_s=60.0, role="operator")
