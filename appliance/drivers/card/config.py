"""Chip encoder configuration (the ``[hardware.card]`` table)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Bring the encoder up at start")
    backend: Literal["pcsc"] = Field("pcsc", description="pcsc: any PC/SC reader via pcscd")
    reader: str = Field(
        "", description="Substring of the reader name to use; empty = the first reader found"
    )
    card_profile: str = Field("cccd-applet", description="Card profile in firmware_profiles/cards/")
    profile_dir: Path | None = Field(
        None,
        description="Directory holding card profiles; empty = the firmware_profiles/cards/ "
        "directory of this installation",
    )
    trust_bundle: Path | None = Field(
        None,
        description="CSCA certificates for Passive Authentication: a PEM file or a directory "
        "of .pem/.crt/.der files. Without it card.encode refuses every package and card.read "
        "reports Passive Authentication as not performed",
    )
    extended_apdu: bool = Field(
        True,
        description="The reader supports extended-length APDUs; they are used only when the "
        "card profile allows them too",
    )
    card_wait_s: float = Field(
        5.0,
        gt=0,
        le=120,
        description="How long card.read and card.encode wait for a card to be presented",
    )
