"""Sensor firmware profiles: ``firmware_profiles/sensors/<model>.toml`` as typed models.

A profile tells the driver and the emulator what one sensor model does: its UART rates,
packet sizes, image geometry, library size, the instructions it answers and its quirks.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ...errors import ConfigError
from ...resources import profiles_dir
from .frames import PACKET_SIZES, Instruction, baud_from_n


def default_profile_dir() -> Path:
    """``firmware_profiles/sensors`` of this installation (appliance/resources.py)."""
    return profiles_dir() / "sensors"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UartProfile(_Strict):
    default_baud_n: int = Field(6, ge=1, le=12, description="Factory baud multiplier N")
    allowed_baud_n: list[int] = Field(description="Multipliers SetSysPara(4, N) accepts")
    default_packet_size_code: int = Field(2, ge=0, le=3, description="Factory packet size code")
    allowed_packet_size_codes: list[int] = Field(description="Codes SetSysPara(6, c) accepts")


class ImageProfile(_Strict):
    width: int = Field(256, gt=0, description="Image buffer width in pixels (even)")
    height: int = Field(288, gt=0, description="Image buffer height in pixels")
    ppi: int = Field(500, gt=0, description="Optical resolution, pixels per inch")


class LibraryProfile(_Strict):
    library_size: int = Field(gt=0, le=65535, description="Template pages in flash")
    char_file_bytes: int = Field(gt=0, description="Img2Tz character file size")
    template_bytes: int = Field(gt=0, description="RegModel template size")
    default_security_level: int = Field(3, ge=1, le=5, description="Factory security level")


class TimingProfile(_Strict):
    capture_ms: int = Field(500, ge=0, description="GenImg duration with a finger present")
    search_ms: int = Field(1000, ge=0, description="Full-library search duration")


class InstructionProfile(_Strict):
    supported: list[str] = Field(description="Instruction names the firmware answers")


class QuirkProfile(_Strict):
    downchar_max_packet_size: int = Field(
        0, ge=0, description="Largest packet DownChar tolerates; 0 = no limit"
    )
    downchar_fails_above: int = Field(
        0, ge=0, description="Emulator: DownChar packets above this size fail; 0 = never"
    )
    power_up_handshake: bool = Field(False, description="Sends 0x55 after power-up")
    soft_reset_handshake: bool = Field(False, description="Sends 0x55 after SoftReset's ack")
    aura_led: bool = Field(False, description="Has the R503 ring LED (AuraLedConfig)")
    ignores_baud_change: bool = Field(
        False,
        description="Emulator: acknowledges SetSysPara(4, N) but keeps its rate (a module "
        "that does not follow; the driver must fall back)",
    )


class SensorProfile(_Strict):
    """One sensor model's facts."""

    model: str = Field(description="Profile name")
    description: str = Field("", description="Free text")
    system_id: int = Field(0, ge=0, le=0xFFFF, description="ReadSysPara system id word")
    uart: UartProfile
    image: ImageProfile
    library: LibraryProfile
    timing: TimingProfile = TimingProfile()
    instructions: InstructionProfile
    quirks: QuirkProfile = QuirkProfile()

    @model_validator(mode="after")
    def _check(self) -> SensorProfile:
        names = {i.name for i in Instruction}
        unknown = [s for s in self.instructions.supported if s not in names]
        if unknown:
            raise ValueError(f"unknown instruction names {unknown}")
        bad_n = [n for n in self.uart.allowed_baud_n if not 1 <= n <= 12]
        if bad_n or self.uart.default_baud_n not in self.uart.allowed_baud_n:
            raise ValueError("allowed_baud_n must be within 1..12 and include default_baud_n")
        codes = self.uart.allowed_packet_size_codes
        if any(not 0 <= c <= 3 for c in codes) or self.uart.default_packet_size_code not in codes:
            raise ValueError("allowed_packet_size_codes must be within 0..3 and hold the default")
        q = self.quirks.downchar_max_packet_size
        if q and q not in PACKET_SIZES:
            raise ValueError(f"downchar_max_packet_size {q} is not one of {PACKET_SIZES}")
        if self.image.width % 2:
            raise ValueError("image width must be even (two pixels per byte on the wire)")
        return self

    def supports(self, instruction: Instruction) -> bool:
        return instruction.name in self.instructions.supported

    @property
    def max_baud(self) -> int:
        return baud_from_n(max(self.uart.allowed_baud_n))

    @property
    def default_baud(self) -> int:
        return baud_from_n(self.uart.default_baud_n)

    @property
    def image_wire_bytes(self) -> int:
        return self.image.width * self.image.height // 2


def load_profile(model: str, profile_dir: Path | None = None) -> SensorProfile:
    """Load ``<profile_dir>/<model>.toml`` or, if ``model`` names a ``.toml`` file, that file.

    Raises :class:`ConfigError` naming the file and the first bad field.
    """
    if model.endswith(".toml"):
        path = Path(model)
    else:
        if not model.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(
                f"bad sensor model name {model!r}",
                [("hardware.fingerprint.model", "letters, digits, '-' and '_' only")],
            )
        path = (profile_dir or default_profile_dir()) / f"{model}.toml"
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        known = sorted(p.stem for p in (profile_dir or default_profile_dir()).glob("*.toml"))
        raise ConfigError(
            f"unknown sensor model {model!r}: no profile {str(path)!r}; known: {known}",
            [("hardware.fingerprint.model", f"unknown model {model!r}; known: {known}")],
        ) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"cannot read sensor profile {str(path)!r}: {exc}",
            [("hardware.fingerprint.model", str(exc))],
        ) from None
    try:
        return SensorProfile.model_validate(raw)
    except ValidationError as exc:
        problems = [
            (".".join(str(p) for p in err["loc"]) or "profile", err["msg"]) for err in exc.errors()
        ]
        first = f"{problems[0][0]}: {problems[0][1]}"
        raise ConfigError(f"invalid sensor profile {str(path)!r}: {first}", problems) from None
