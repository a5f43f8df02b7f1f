"""Fingerprint commands: ``fingerprint.capture`` and ``fingerprint.status``, thin adapters over
:class:`~appliance.capabilities.FingerCapture` (the retry and quality loop).

Replies and progress events carry scores, feedback codes and record ids, never image bytes:
the ISO/IEC 19794-4 record stays in the sensor's in-memory record store until sealed.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ...capabilities.base import Job
from ...capabilities.finger import MAX_CAPTURE_S, FingerCapture
from ...commands import CommandContext, CommandRegistry, NoArgs
from ...errors import DeviceError
from .interface import FingerprintScanner

__all__ = ["MAX_CAPTURE_S", "CaptureArgs", "CaptureResult", "register"]

log = logging.getLogger(__name__)


class CaptureArgs(BaseModel):
    """Arguments of ``fingerprint.capture``."""

    model_config = ConfigDict(extra="forbid")

    position: int = Field(
        description="ISO/IEC 19794-4 finger position: 0 unknown, 1..5 right thumb..little, "
        "6..10 left thumb..little",
        ge=0,
        le=10,
    )
    timeout_s: float = Field(
        40.0, gt=0, le=MAX_CAPTURE_S, description="Give up waiting for a finger after this"
    )
    min_quality: int | None = Field(
        None, ge=0, le=100, description="Accept at or above this score; default from config"
    )
    attempts: int = Field(3, ge=1, le=10, description="Captures tried before the best is kept")


class CaptureResult(BaseModel):
    """Reply of ``fingerprint.capture``."""

    record_id: str
    position: int
    quality: int
    min_quality: int
    met_threshold: bool
    feedback: list[str]
    attempts_used: int
    width: int
    height: int
    compression: str
    processing_ms: float = Field(description="Last data byte to scored record (no line time)")


def register(
    registry: CommandRegistry,
    device: FingerprintScanner,
    *,
    capture: FingerCapture | None = None,
) -> None:
    """Add the fingerprint commands to ``registry`` (adapters over ``capture``, the finger
    service shared with the enrollment session; one is made if omitted)."""
    service = capture if capture is not None else FingerCapture(device)

    def capture_cmd(ctx: CommandContext, args: CaptureArgs) -> dict[str, Any]:
        """Capture one finger: wait, read, score; retry up to ``attempts``; keep the best."""
        result = service.capture(
            Job.from_context(ctx),
            position=args.position,
            min_quality=args.min_quality,
            attempts=args.attempts,
            timeout_s=args.timeout_s,
            template=False,  # nothing to compare it with: no extraction on the line
        )
        try:
            record_id = device.records.put(
                bytes(result.record),
                position=result.position,
                quality=result.quality,
                compression=result.compression,
            )
        finally:
            result.wipe()
        log.info("finger %d held as record %s", result.position, record_id)
        return CaptureResult(
            record_id=record_id,
            position=result.position,
            quality=result.quality,
            min_quality=result.min_quality,
            met_threshold=result.met_threshold,
            feedback=result.feedback,
            attempts_used=result.attempts_used,
            width=result.width,
            height=result.height,
            compression=result.compression,
            processing_ms=result.processing_ms,
        ).model_dump()

    def status(ctx: CommandContext, args: NoArgs) -> dict[str, Any]:
        """Sensor health, link settings, templates stored and finger records held."""
        health = device.health()
        templates: int | None = None
        error: dict[str, Any] | None = None
        if health.state == "ok" and not device.busy:
            try:
                templates = device.template_num()
            except DeviceError as exc:
                error = exc.to_dict()
        return {
            "health": health.model_dump(),
            "sensor": device.info(),
            "templates": templates,
            "records_held": len(device.records),
            "error": error,
        }

    registry.add(
        "fingerprint.capture",
        capture_cmd,
        args=CaptureArgs,
        timeout_s=MAX_CAPTURE_S + 15.0,
        result=CaptureResult,
        role="operator",
    )
    registry.add("fingerprint.status", status, timeout_s=10.0, role="operator")
