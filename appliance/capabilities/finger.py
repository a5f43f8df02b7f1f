"""Finger capture as a service: wait, read, score, retry, keep the best; refuse a finger that
matches one it is told to refuse (the same citizen's other fingers, the officer's own).

Used by the MQTT ``fingerprint.capture`` adapter, the enrollment session and the kiosk's local
screen. The 1:1 comparison runs on the sensor itself (ZhianTec Match, 0x03: the probe in char
buffer 1, each reference in char buffer 2), so templates never need a matcher on the host.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..errors import CommandError, DeviceTimeout
from ..protocol.codes import ErrorCode
from .base import Job

if TYPE_CHECKING:
    from ..drivers.fingerprint.interface import FingerprintScanner
    from ..drivers.fingerprint.quality import QualityReport

log = logging.getLogger(__name__)

# Longest capture a request may ask for.
MAX_CAPTURE_S = 120.0

# Error codes of a refused finger (docs/protocol.md, "Error codes").
DUPLICATE_FINGER = ErrorCode.DUPLICATE_FINGER
OFFICER_FINGER = ErrorCode.OFFICER_FINGER

Owner = Literal["citizen", "officer"]


@dataclass(eq=False)
class ReferenceTemplate:
    """A finger the capture must not accept again: its sensor template (a biometric: memory
    only, never logged; :meth:`wipe` it when done), its position, and whose it is."""

    template: bytearray
    position: int | None = None
    owner: Owner = "citizen"

    def wipe(self) -> None:
        self.template[:] = bytes(len(self.template))

    def __repr__(self) -> str:  # no template bytes in a log line
        return f"ReferenceTemplate(owner={self.owner!r}, position={self.position})"


@dataclass(eq=False)
class FingerResult:
    """One captured finger: the ISO/IEC 19794-4 record (wipe it once sealed), its score and
    how it was obtained, and the sensor's template of it (for the duplicate check)."""

    position: int
    record: bytearray  # ISO/IEC 19794-4 finger image record
    quality: int
    min_quality: int
    met_threshold: bool
    feedback: list[str]
    attempts_used: int
    width: int
    height: int
    compression: str
    processing_ms: float  # last data byte to scored record (no line time)
    timings: dict[str, float] = field(default_factory=dict)
    template: bytearray | None = None

    def reference(self, owner: Owner = "citizen") -> ReferenceTemplate | None:
        """This finger as a reference for later captures (a copy; None without a template)."""
        if self.template is None:
            return None
        return ReferenceTemplate(bytearray(self.template), self.position, owner)

    def wipe(self) -> None:
        """Zero the record and the template."""
        self.record[:] = bytes(len(self.record))
        if self.template is not None:
            self.template[:] = bytes(len(self.template))

    def __repr__(self) -> str:
        return f"FingerResult(position={self.position}, quality={self.quality})"


def _encode(scanner: FingerprintScanner, image: Any, position: int, score: int) -> bytes:
    # numpy, Pillow and the record codec load with the first capture, not at start.
    from ..biometrics.finger_record import Compression, FingerRecord, FingerView, encode

    codec = {"raw": Compression.RAW, "png": Compression.PNG, "wsq": Compression.WSQ}
    return encode(
        FingerRecord(
            views=[FingerView(image=image, position=position, quality=score)],
            compression=codec[scanner.config.record_compression],
        )
    )


class FingerCapture:
    """Finger captures on one sensor (the sensor itself refuses a second concurrent session)."""

    def __init__(self, scanner: FingerprintScanner) -> None:
        self.scanner = scanner
        self.config = scanner.config

    def capture(
        self,
        job: Job,
        *,
        position: int,
        min_quality: int | None = None,
        attempts: int = 3,
        timeout_s: float = 40.0,
        refuse_matching: Sequence[ReferenceTemplate] = (),
        template: bool = True,
        wait_lift: bool = False,
    ) -> FingerResult:
        """Capture the finger at ``position`` (ISO/IEC 19794-4: 1..5 right thumb..little,
        6..10 left): wait, read, score; retry up to ``attempts`` below ``min_quality`` (default
        from the configuration); keep the best. Progress steps: ``waiting_for_finger``,
        ``lift`` (the image is in the sensor: the finger may go while it uploads),
        ``captured``, ``quality``, ``retry``. The kept finger is matched 1:1 against
        ``refuse_matching`` on the sensor and refused with ``duplicate_finger`` (a citizen's
        reference) or ``officer_finger`` (an officer's); the caller may simply ask again.
        ``template=False`` skips the extraction when nobody needs the template. With
        ``wait_lift``, a finger still lying on the sensor (the one just captured for the
        previous position) is first waited off, so the capture is a new presentation."""
        job.check()
        quality_min = self.config.quality.min_quality if min_quality is None else min_quality
        deadline = job.within(timeout_s)
        scanner = self.scanner
        want_template = (template or bool(refuse_matching)) and scanner.can_match
        from ..drivers.fingerprint.quality import assess

        with scanner.exclusive():
            if wait_lift:
                scanner.wait_finger_removed(deadline, job.cancelled)
            best: tuple[QualityReport, Any, bytearray | None] | None = None
            used = 0
            processing_ms = 0.0
            for attempt in range(1, attempts + 1):
                job.progress(
                    "waiting_for_finger",
                    {"attempt": attempt, "attempts": attempts, "position": position},
                )

                def lifted(attempt: int = attempt) -> None:
                    job.progress("lift", {"attempt": attempt, "position": position})

                try:
                    captured = scanner.capture(
                        deadline, job.cancelled, on_image=lifted, extract=want_template
                    )
                except DeviceTimeout:
                    if best is None:
                        raise
                    break  # out of time: return the best so far, saying it fell short
                used = attempt
                job.progress("captured", {"attempt": attempt})
                report = assess(captured.image, self.config.quality)
                processing_ms = (time.monotonic() - captured.received_at) * 1000
                accepted = report.score >= quality_min
                job.progress(
                    "quality",
                    {
                        "attempt": attempt,
                        "score": report.score,
                        "feedback": report.feedback,
                        "accepted": accepted,
                    },
                )
                if best is None or report.score > best[0].score:
                    if best is not None and best[2] is not None:
                        best[2][:] = bytes(len(best[2]))
                    best = (report, captured.image, captured.template)
                elif captured.template is not None:
                    captured.template[:] = bytes(len(captured.template))
                if accepted or attempt == attempts:
                    break
                job.progress(
                    "retry",
                    {
                        "attempt": attempt,
                        "score": report.score,
                        "feedback": report.feedback,
                        "reason": "below_min_quality",
                    },
                )
                # Ask for the finger to be lifted so the next capture is a new impression.
                scanner.wait_finger_removed(deadline, job.cancelled)
            assert best is not None
            report, image, finger_template = best
            match_ms = self._refuse(position, finger_template, refuse_matching)
        t0 = time.monotonic()
        record = bytearray(_encode(scanner, image, position, report.score))
        processing_ms += (time.monotonic() - t0) * 1000
        log.info("finger %d captured: quality %d after %d attempt(s)", position, report.score, used)
        timings = {"processing_ms": round(processing_ms, 2)}
        if match_ms is not None:
            timings["match_ms"] = round(match_ms, 2)
        result = FingerResult(
            position=position,
            record=record,
            quality=report.score,
            min_quality=quality_min,
            met_threshold=report.score >= quality_min,
            feedback=report.feedback,
            attempts_used=used,
            width=int(image.shape[1]),
            height=int(image.shape[0]),
            compression=self.config.record_compression,
            processing_ms=round(processing_ms, 2),
            timings=timings,
            template=finger_template,
        )
        if not template and finger_template is not None:
            finger_template[:] = bytes(len(finger_template))
            result.template = None
        return result

    def _refuse(
        self,
        position: int,
        probe: bytearray | None,
        references: Sequence[ReferenceTemplate],
    ) -> float | None:
        """Raise if ``probe`` matches a reference; the time the matching took (None if there
        was nothing to match)."""
        refs = [r for r in references if r.template]
        if not refs:
            return None
        if probe is None:
            # The sensor could not extract this impression (or cannot match at all): there is
            # nothing to compare, and refusing would lock out a citizen with worn fingers.
            log.warning("finger %d: no sensor template, duplicate check not possible", position)
            return None
        t0 = time.monotonic()
        scores = self.scanner.match_templates(probe, [r.template for r in refs])
        elapsed = (time.monotonic() - t0) * 1000
        for ref, score in zip(refs, scores, strict=True):
            if score is None:
                continue
            probe[:] = bytes(len(probe))
            if ref.owner == "officer":
                raise CommandError(
                    f"finger {position} matches a finger of the signed-in officer: the "
                    "citizen's own finger must be presented",
                    code=OFFICER_FINGER,
                    retryable=True,
                    details={"position": position, "officer_position": ref.position},
                )
            raise CommandError(
                f"finger {position} matches finger {ref.position} already captured for this "
                f"citizen: present finger {position}",
                code=DUPLICATE_FINGER,
                retryable=True,
                details={"position": position, "matches_position": ref.position},
            )
        return elapsed
