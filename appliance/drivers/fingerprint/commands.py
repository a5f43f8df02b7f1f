"""Fingerprint commands: ``fingerprint.capture`` and ``fingerprint.status``.

Replies and progress events carry scores, feedback codes and record ids, never image bytes:
the ISO/IEC 19794-4 record stays in the sensor's in-memory record store until sealed.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from ...commands import CommandContext, CommandRegistry, NoArgs
from ...errors import DeviceError, DeviceTimeout
from .interface import FingerprintScanner

if TYPE_CHECKING:
    from .quality import QualityReport

log = logging.getLogger(__name__)

# Longest capture a request may ask for; the command's own timeout adds a margin to it.
MAX_CAPTURE_S = 120.0


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


def _record(
    device: FingerprintScanner, image: Any, position: int, report: QualityReport
) -> tuple[str, str]:
    # numpy, Pillow and the record codec load with the first capture, not at start.
    from ...biometrics.finger_record import Compression, FingerRecord, FingerView, encode

    compression = device.config.record_compression
    codec = {"raw": Compression.RAW, "png": Compression.PNG, "wsq": Compression.WSQ}
    data = encode(
        FingerRecord(
            views=[FingerView(image=image, position=position, quality=report.score)],
            compression=codec[compression],
        )
    )
    record_id = device.records.put(
        data, position=position, quality=report.score, compression=compression
    )
    return record_id, compression


def register(registry: CommandRegistry, device: FingerprintScanner) -> None:
    """Add the fingerprint commands to ``registry``."""

    def capture(ctx: CommandContext, args: CaptureArgs) -> dict[str, Any]:
        """Capture one finger: wait, read, score; retry up to ``attempts``; keep the best."""
        min_quality = (
            args.min_quality if args.min_quality is not None else device.config.quality.min_quality
        )
        deadline = min(time.monotonic() + args.timeout_s, ctx.deadline)
        with device.exclusive():
            best: tuple[QualityReport, Any] | None = None
            used = 0
            processing_ms = 0.0
            for attempt in range(1, args.attempts + 1):
                ctx.progress(
                    "waiting_for_finger",
                    attempt=attempt,
                    attempts=args.attempts,
                    position=args.position,
                )
                try:
                    captured = device.capture(deadline, ctx.cancelled)
                except DeviceTimeout:
                    if best is None:
                        raise
                    break  # out of time: return the best so far, saying it fell short
                used = attempt
                ctx.progress("captured", attempt=attempt)
                from .quality import assess

                report = assess(captured.image, device.config.quality)
                processing_ms = (time.monotonic() - captured.received_at) * 1000
                accepted = report.score >= min_quality
                ctx.progress(
                    "quality",
                    attempt=attempt,
                    score=report.score,
                    feedback=report.feedback,
                    accepted=accepted,
                )
                if best is None or report.score > best[0].score:
                    best = (report, captured.image)
                if accepted or attempt == args.attempts:
                    break
                ctx.progress(
                    "retry",
                    attempt=attempt,
                    score=report.score,
                    feedback=report.feedback,
                    reason="below_min_quality",
                )
                # Ask for the finger to be lifted so the next capture is a new impression.
                device.wait_finger_removed(deadline, ctx.cancelled)
        assert best is not None
        report, image = best
        t0 = time.monotonic()
        record_id, compression = _record(device, image, args.position, report)
        processing_ms += (time.monotonic() - t0) * 1000
        log.info(
            "finger %d captured: quality %d after %d attempt(s), record %s",
            args.position,
            report.score,
            used,
            record_id,
        )
        result = CaptureResult(
            record_id=record_id,
            position=args.position,
            quality=report.score,
            min_quality=min_quality,
            met_threshold=report.score >= min_quality,
            feedback=report.feedback,
            attempts_used=used,
            width=int(image.shape[1]),
            height=int(image.shape[0]),
            compression=compression,
            processing_ms=round(processing_ms, 2),
        )
        return result.model_dump()

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
        capture,
        args=CaptureArgs,
        timeout_s=MAX_CAPTURE_S + 15.0,
        result=CaptureResult,
        role="operator",
    )
    registry.add("fingerprint.status", status, timeout_s=10.0, role="operator")
