"""Chip encoder configuration (the ``[hardware.card]`` table)."""

from __future__ import annotations

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
