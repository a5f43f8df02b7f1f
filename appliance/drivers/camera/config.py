"""Camera configuration (the ``[hardware.camera]`` table)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CameraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Bring the camera up at start")
    backend: Literal["sim", "opencv", "picamera2"] = Field(
        "sim", description="sim: generated scene; opencv: USB/V4L2 webcam; picamera2: Pi camera"
    )
    device: str = Field("0", description="opencv: V4L2 index or path, e.g. 0 or /dev/video0")
    width: int = Field(640, ge=160, le=4096, description="Capture width in pixels")
    height: int = Field(480, ge=120, le=3072, description="Capture height in pixels")
