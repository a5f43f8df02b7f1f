"""Portrait capture as a service: the camera's auto-capture loop with guidance, for the MQTT
``camera.capture`` adapter, the enrollment session and the kiosk's local screen alike.

The result carries the ISO/IEC 19794-5 record itself (a wipeable ``bytearray``): nothing is left
behind in a module-level holder for someone else to pick up.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import Busy
from .base import Job

if TYPE_CHECKING:
    from ..drivers.camera.interface import Camera, Frame
    from ..drivers.camera.quality import QualityReport
    from ..drivers.camera.records import Portrait

# A capture may ask for this long at most (camera.capture's timeout_s limit).
MAX_CAPTURE_S = 120.0
# Left of the job's deadline for encoding the record and sending the reply.
REPLY_MARGIN_S = 1.0


@dataclass(frozen=True)
class Guidance:
    """What the screen tells the citizen about one analysed frame; no pixels."""

    frame: int
    score: int
    passed: bool
    failing: tuple[str, ...]
    hints: tuple[str, ...]
    reasons: dict[str, str]
    # The detected face's box in frame pixels (x, y, width, height; the camera's view, not
    # mirrored), None when no single face was found; the frame's (width, height).
    face: tuple[int, int, int, int] | None = None
    frame_size: tuple[int, int] | None = None

    @classmethod
    def from_report(cls, report: QualityReport, frame_index: int) -> Guidance:
        from ..drivers.camera.autocapture import guidance_payload

        p = guidance_payload(report, frame_index)
        return cls(
            frame=int(p["frame"]),
            score=int(p["score"]),
            passed=bool(p["passed"]),
            failing=tuple(p["failing"]),
            hints=tuple(p["hints"]),
            reasons=dict(p["reasons"]),
            face=_face_box(report),
            frame_size=(int(report.frame_size[0]), int(report.frame_size[1]))
            if report.frame_size[0] > 0
            else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``camera.guidance`` event's data (docs/protocol.md), with ``face``
        (``{x, y, w, h}``) and ``frame_size`` (``[width, height]``) when a face was found."""
        return {
            "frame": self.frame,
            "score": self.score,
            "passed": self.passed,
            "failing": list(self.failing),
            "hints": list(self.hints),
            "reasons": dict(self.reasons),
            **(
                {}
                if self.face is None or self.frame_size is None
                else {
                    "face": dict(zip(("x", "y", "w", "h"), self.face, strict=True)),
                    "frame_size": list(self.frame_size),
                }
            ),
        }


def _face_box(report: QualityReport) -> tuple[int, int, int, int] | None:
    """The face detector's square box, clipped to the frame (pixels)."""
    if report.face is None:
        return None
    x, y, side = report.face.box
    w, h = report.frame_size
    x0, y0 = max(0, round(x)), max(0, round(y))
    x1, y1 = min(w, round(x + side)), min(h, round(y + side))
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1 - x0, y1 - y0)


# A live view: every frame the capture reads, with its guidance when it was analysed (None
# for the frames between two analyses, PortraitCapture.live_analysis_interval_s).
OnFrame = Callable[["Frame", "Guidance | None"], None]


@dataclass(eq=False)
class PortraitResult:
    """One captured portrait: the 19794-5 record (wipe it once sealed) and its summary."""

    record_id: str
    record: bytearray  # ISO/IEC 19794-5 face record
    jpeg: bytearray  # the token image as JPEG (what a screen may show the citizen)
    jpeg2000: bytearray | None
    width: int
    height: int
    score: int
    met: bool
    min_quality: int
    frames: int
    quality: dict[str, Any]  # the best frame's components (no eye coordinates)
    timings: dict[str, float]
    created: float = field(default_factory=time.time)

    @property
    def elapsed_s(self) -> float:
        return self.timings["elapsed_s"]

    def describe(self) -> dict[str, Any]:
        """Metadata safe for a reply or a log: sizes, score and a digest, never the pixels."""
        return {
            "record_id": self.record_id,
            "score": self.score,
            "met": self.met,
            "token": {"width": self.width, "height": self.height},
            "formats": {
                "jpeg": len(self.jpeg),
                "jpeg2000": None if self.jpeg2000 is None else len(self.jpeg2000),
            },
            "record": {
                "format": "ISO/IEC 19794-5:2005",
                "bytes": len(self.record),
                "sha256": hashlib.sha256(self.record).hexdigest().upper(),
            },
            "created": round(self.created, 3),
        }

    def to_portrait(self) -> Portrait:
        """An immutable copy for the camera adapter's in-memory portrait store."""
        from ..drivers.camera.records import Portrait

        return Portrait(
            record_id=self.record_id,
            record=bytes(self.record),
            jpeg=bytes(self.jpeg),
            jpeg2000=None if self.jpeg2000 is None else bytes(self.jpeg2000),
            width=self.width,
            height=self.height,
            score=self.score,
            met=self.met,
            created=self.created,
        )

    def wipe(self) -> None:
        """Zero every image byte this result holds."""
        for buf in (self.record, self.jpeg, self.jpeg2000):
            if buf is not None:
                buf[:] = bytes(len(buf))

    def __repr__(self) -> str:  # keep bytes out of any accidental log line
        return f"PortraitResult(record_id={self.record_id!r}, score={self.score})"


class PortraitCapture:
    """Auto-capture of an ICAO portrait on one camera; one capture at a time."""

    #: With a live view attached (``on_frame``), at most one frame is analysed per this many
    #: seconds and the view gets every frame the camera delivers: the preview runs at the
    #: camera's rate, not at the analysis' (issue 15: >= 10 frames/s on one core while
    #: guidance runs). Without a live view every frame is analysed, as before.
    live_analysis_interval_s = 0.2

    def __init__(self, camera: Camera) -> None:
        self.camera = camera
        self.config = camera.config
        self._lock = threading.Lock()

    @property
    def busy(self) -> bool:
        """True while a capture runs."""
        return self._lock.locked()

    def capture(
        self,
        job: Job,
        *,
        min_quality: int | None = None,
        timeout_s: float = 20.0,
        on_frame: OnFrame | None = None,
    ) -> PortraitResult:
        """Watch the stream until a frame reaches ``min_quality`` (default: the
        configuration's ``default_min_quality``) or ``timeout_s`` passes, and return the best
        portrait seen (``met`` says whether it reached the score). Guidance goes to
        ``job.progress("guidance", ...)`` at most every ``guidance_interval_s``; ``on_frame``
        sees every frame read, with its guidance when it was analysed (at most one analysis
        per ``live_analysis_interval_s`` then), ``None`` otherwise. Raises
        :class:`~appliance.errors.Busy` if a capture already runs, ``no_face`` if no usable
        face was ever seen."""
        if not self._lock.acquire(blocking=False):
            raise Busy("a camera capture is already running", details={"device": "camera"})
        try:
            job.check()
            quality_min = self.config.default_min_quality if min_quality is None else min_quality
            # Leave a little of the job's deadline for encoding and the reply.
            budget = min(timeout_s, max(0.0, job.remaining - REPLY_MARGIN_S))

            def frame_seen(frame: Frame, report: QualityReport | None) -> None:
                if on_frame is not None:
                    guidance = None if report is None else Guidance.from_report(report, frame.index)
                    on_frame(frame, guidance)

            from ..drivers.camera.autocapture import auto_capture  # OpenCV loads on first use

            outcome = auto_capture(
                self.camera,
                timeout_s=budget,
                min_quality=quality_min,
                guidance=lambda payload: job.progress("guidance", payload),
                cancelled=job.cancelled,
                on_frame=frame_seen if on_frame is not None else None,
                analysis_interval_s=self.live_analysis_interval_s if on_frame is not None else 0.0,
            )
        finally:
            self._lock.release()
        portrait = outcome.portrait
        quality = outcome.report.to_dict()
        quality.pop("eyes", None)
        return PortraitResult(
            record_id=portrait.record_id,
            record=bytearray(portrait.record),
            jpeg=bytearray(portrait.jpeg),
            jpeg2000=None if portrait.jpeg2000 is None else bytearray(portrait.jpeg2000),
            width=portrait.width,
            height=portrait.height,
            score=portrait.score,
            met=portrait.met,
            min_quality=quality_min,
            frames=outcome.frames,
            quality=quality,
            timings={"elapsed_s": round(outcome.elapsed_s, 3)},
            created=portrait.created,
        )
