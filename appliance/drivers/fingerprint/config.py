"""Fingerprint sensor configuration (the ``[hardware.fingerprint]`` table)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class FingerprintConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Bring the sensor up at start")
    backend: Literal["serial"] = Field("serial", description="serial: ZhianTec UART protocol")
    port: str = Field(
        "/dev/ttyUSB0",
        description="Device path, pty path, or pyserial URL (socket://host:port, spy://...)",
    )
    model: str = Field("r307", description="Sensor profile in firmware_profiles/sensors/")
    baud: int = Field(57600, description="Line rate; 9600 x N, N = 1..12")
    address: int = Field(0xFFFFFFFF, ge=0, le=0xFFFFFFFF, description="Module address")
    password: int = Field(0, ge=0, le=0xFFFFFFFF, description="Module password (VfyPwd)")
