"""Card profiles: the applet's command set and limits, from ``firmware_profiles/cards/*.toml``."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ...errors import ConfigError
from ...resources import profiles_dir


def default_profile_dir() -> Path:
    """``firmware_profiles/cards`` of this installation (appliance/resources.py)."""
    return profiles_dir() / "cards"


class CardProfile(BaseModel):
    """One card stock / applet. Every field is documented in the TOML files themselves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9._-]*$", description="Profile name")
    description: str = Field("", description="Human description")
    aid: str = Field(..., description="eMRTD application identifier, hex")
    atr: str = Field(..., description="ATR the emulator presents, hex")
    extended_length: bool = Field(False, description="Applet accepts extended-length APDUs")
    max_read_short: int = Field(224, ge=1, le=256, description="READ BINARY limit, short")
    max_read_extended: int = Field(0, ge=0, le=65536, description="READ BINARY limit, ext.")
    max_update_short: int = Field(255, ge=1, le=255, description="UPDATE BINARY limit, short")
    max_update_extended: int = Field(0, ge=0, le=65535, description="UPDATE BINARY limit, ext.")
    max_file_size: int = Field(32767, ge=1, le=65535, description="Largest EF")
    memory: int = Field(65536, ge=1, description="Total bytes available for files")
    file_overhead: int = Field(0, ge=0, le=4096, description="EEPROM per file beyond its data")
    files: list[str] = Field(..., min_length=1, description="Files in writing order")
    put_data_bac_seed: str = Field("0062", description="PUT DATA P1P2 for the BAC seed")
    lock_p1p2: str = Field("DEAD", description="PUT DATA P1P2 that locks the applet")
    challenge_length: int = Field(8, description="GET CHALLENGE Le")

    @field_validator("aid", "atr", "put_data_bac_seed", "lock_p1p2")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not re.fullmatch(r"(?:[0-9A-Fa-f]{2})+", v):
            raise ValueError("must be an even number of hex digits")
        return v.upper()

    @property
    def aid_bytes(self) -> bytes:
        return bytes.fromhex(self.aid)

    @property
    def atr_bytes(self) -> bytes:
        return bytes.fromhex(self.atr)

    def p1p2(self, which: str) -> tuple[int, int]:
        raw = bytes.fromhex(getattr(self, which))
        return raw[0], raw[1]


def load_profile(name: str, directory: Path | None = None) -> CardProfile:
    """Load ``<directory>/<name>.toml``; a clear ConfigError naming the problem otherwise."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
        raise ConfigError(
            f"bad card profile name {name!r}",
            [("hardware.card.card_profile", "letters, digits, . _ - only")],
        )
    path = (directory or default_profile_dir()) / f"{name}.toml"
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"card profile {name!r} not found at {path}",
            [("hardware.card.card_profile", f"no file {path}")],
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"card profile {path} is not valid TOML: {exc}",
            [("hardware.card.card_profile", str(exc))],
        ) from exc
    try:
        profile = CardProfile.model_validate(raw)
    except ValidationError as exc:
        problems = [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()]
        raise ConfigError(f"card profile {path} is invalid", problems) from exc
    if profile.name != name:
        raise ConfigError(
            f"card profile {path} names itself {profile.name!r}",
            [("name", "must match the file name")],
        )
    return profile
