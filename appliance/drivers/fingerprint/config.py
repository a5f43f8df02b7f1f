"""Fingerprint sensor configuration (the ``[hardware.fingerprint]`` table)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class FingerQualityConfig(BaseModel):
    """Thresholds of the NFIQ 2-style quality approximation (see docs/fingerprint.md).

    The feedback thresholds default to NFIQ 2's actionable-feedback values
    (NFIQ 2, ISO/IEC 29794-4: NIST's actionable quality feedback).
    """

    model_config = ConfigDict(extra="forbid")

    min_quality: int = Field(
        40, ge=0, le=100, description="Accept a capture at or above this score (NFIQ 2 scale)"
    )
    empty_mean_grey: float = Field(
        250.0, ge=0, le=255, description="Mean grey above this: image empty or contrast too low"
    )
    uniform_std: float = Field(
        1.0, ge=0, description="Grey standard deviation below this: uniform image"
    )
    min_minutiae: int = Field(5, ge=0, description="Fewer estimated minutiae: feedback raised")
    min_foreground_px: int = Field(
        50_000, ge=0, description="Fewer foreground pixels (at 500 ppi): feedback raised"
    )


class FingerprintConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Bring the sensor up at start")
    backend: Literal["serial"] = Field("serial", description="serial: ZhianTec UART protocol")
    port: str = Field(
        "/dev/ttyUSB0",
        description="Device path, pty path, or pyserial URL (socket://host:port, spy://...)",
    )
    model: str = Field("r307", description="Sensor profile in firmware_profiles/sensors/")
    profile_dir: str | None = Field(
        None, description="Directory of sensor profiles; default: the project's firmware_profiles"
    )
    baud: int = Field(57600, description="Line rate; 9600 x N, N = 1..12")
    address: int = Field(0xFFFFFFFF, ge=0, le=0xFFFFFFFF, description="Module address")
    password: int = Field(0, ge=0, le=0xFFFFFFFF, description="Module password (VfyPwd)")
    negotiate_baud: bool = Field(
        False,
        description="On connect, switch the sensor to the fastest rate its profile allows "
        "(SetSysPara 4) and follow it; the sensor keeps the rate across power cycles, and the "
        "driver finds it again by probing the profile's rates",
    )
    link_state_file: str | None = Field(
        None,
        description="File where the negotiated rate and packet size are remembered, so a "
        "restart finds the sensor at once instead of probing its rates; the daemon sets "
        "<state dir>/fingerprint-link.json. None: not remembered",
    )
    packet_size: Literal[32, 64, 128, 256] | None = Field(
        None, description="Data packet size to set on connect (SetSysPara 6); None: leave as is"
    )
    command_timeout_s: float = Field(
        2.0, gt=0, le=60, description="Deadline for an acknowledge after a command"
    )
    retries: int = Field(
        2, ge=0, le=10, description="Retries of an idempotent command after a garbled reply"
    )
    reconnect_interval_s: float = Field(
        1.0, gt=0, le=60, description="Pause between reconnection attempts while unplugged"
    )
    health_probe_s: float = Field(
        5.0, ge=0, le=3600, description="Idle liveness probe period (ReadSysPara); 0 disables"
    )
    capture_poll_s: float = Field(
        0.05, ge=0, le=5, description="Pause between GenImg polls while waiting for a finger"
    )
    record_compression: Literal["raw", "png", "wsq"] = Field(
        "png", description="Image compression in the ISO 19794-4 records kept in memory"
    )
    record_store_max: int = Field(
        64, ge=1, le=10_000, description="Finger records held in memory before the oldest goes"
    )
    record_ttl_s: float = Field(
        1800.0, gt=0, description="Unsealed finger records are forgotten after this many seconds"
    )
    quality: FingerQualityConfig = Field(
        default_factory=FingerQualityConfig, description="Quality thresholds and feedback"
    )
