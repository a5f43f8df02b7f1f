"""Auto-capture: watch the live stream, guide the citizen, keep the best portrait.

Each frame is scored (:func:`~appliance.drivers.camera.quality.assess`); guidance naming the
failing components goes out at most every ``guidance_interval_s``; the best frame so far is
kept. The capture ends at the first frame whose overall score reaches ``min_quality``, or at
the deadline with the best frame seen, flagged ``met = False`` (MOSIP SBI: the device returns
its best frame even when the requested score was never reached, and says so). The best frame
is warped to the ISO/IEC 19794-5 token geometry, encoded as JPEG (and JPEG 2000 where Pillow
has OpenJPEG) and wrapped in a 19794-5 face record.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
from PIL import Image as PILImage
from PIL import features

from ...biometrics.face_record import (
    LEFT_EYE_CENTRE,
    RIGHT_EYE_CENTRE,
    FaceImage,
    FaceImageType,
    FaceRecord,
    FeaturePoint,
    ImageDataType,
)
from ...errors import CommandError, CommandTimeout, DeviceTimeout
from ...protocol.codes import ErrorCode
from .config import CameraConfig
from .interface import Camera, Frame, Image
from .quality import TOKEN_EYE_DISTANCE, TOKEN_EYE_Y, QualityReport, assess, crop_token
from .records import Portrait, new_record_id

log = logging.getLogger(__name__)

Guidance = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class CaptureOutcome:
    """What a capture produced: the stored portrait and the best frame's report."""

    portrait: Portrait
    report: QualityReport
    frames: int
    elapsed_s: float
    min_quality: int


def jpeg2000_available() -> bool:
    """Whether this Pillow can write JPEG 2000 (it needs OpenJPEG at build time)."""
    return bool(features.check("jpg_2000"))


def encode_jpeg(image_bgr: Image, quality: int) -> bytes:
    rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
    out = io.BytesIO()
    PILImage.fromarray(rgb).save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()


def encode_jpeg2000(image_bgr: Image, rate: float = 20.0) -> bytes:
    """Lossy JPEG 2000 at ``rate``:1 (chip space is scarce; MOSIP allows up to 15-20:1)."""
    rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
    out = io.BytesIO()
    PILImage.fromarray(rgb).save(
        out, format="JPEG2000", irreversible=True, quality_mode="rates", quality_layers=[rate]
    )
    return out.getvalue()


def build_portrait(
    frame_image: Image, report: QualityReport, config: CameraConfig, met: bool
) -> Portrait:
    """Crop to the token image, encode it and wrap it in a 19794-5 record."""
    if report.face is None:
        raise ValueError("a portrait needs a frame with exactly one face")
    token = crop_token(frame_image, report.face)
    height, width = token.shape[:2]
    jpeg = encode_jpeg(token, config.jpeg_quality)
    jp2 = encode_jpeg2000(token) if config.jpeg2000 and jpeg2000_available() else None
    if config.record_image == "jpeg2000" and jp2 is not None:
        data, data_type = jp2, ImageDataType.JPEG2000
    else:
        data, data_type = jpeg, ImageDataType.JPEG
    eye_y = round(TOKEN_EYE_Y * width)
    yaw = report.components.get("yaw")
    pitch = report.components.get("pitch")
    image = FaceImage(
        image=data,
        width=width,
        height=height,
        image_data_type=data_type,
        face_image_type=FaceImageType.TOKEN_FRONTAL,
        quality=max(0, min(100, report.score)),
        # The token warp levelled the eyes, so roll is 0; yaw/pitch are coarse estimates.
        yaw=None if yaw is None or yaw.value is None else round(yaw.value),
        pitch=None if pitch is None or pitch.value is None else round(pitch.value),
        roll=0,
        yaw_uncertainty=None if yaw is None else 4,
        pitch_uncertainty=None if pitch is None else 4,
        roll_uncertainty=2,
        feature_points=(
            # 12.2 the subject's right eye (image left), 12.1 the left eye (image right).
            FeaturePoint(
                *RIGHT_EYE_CENTRE, x=round((0.5 - TOKEN_EYE_DISTANCE / 2) * width), y=eye_y
            ),
            FeaturePoint(
                *LEFT_EYE_CENTRE, x=round((0.5 + TOKEN_EYE_DISTANCE / 2) * width), y=eye_y
            ),
        ),
    )
    record = FaceRecord(images=(image,)).encode()
    return Portrait(
        record_id=new_record_id(),
        record=record,
        jpeg=jpeg,
        jpeg2000=jp2,
        width=width,
        height=height,
        score=report.score,
        met=met,
    )


def guidance_payload(report: QualityReport, frame_index: int) -> dict[str, Any]:
    """What the kiosk screen needs to tell the citizen what to fix; no pixels."""
    return {
        "frame": frame_index,
        "score": report.score,
        "passed": report.passed,
        "failing": [c.name for c in report.failing],
        "hints": sorted({c.hint for c in report.failing if c.hint}),
        "reasons": {c.name: c.reason for c in report.failing},
    }


def auto_capture(
    camera: Camera,
    *,
    timeout_s: float,
    min_quality: int,
    guidance: Guidance | None = None,
    cancelled: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    on_frame: Callable[[Frame, QualityReport | None], None] | None = None,
    analysis_interval_s: float = 0.0,
) -> CaptureOutcome:
    """Run one capture; raises CommandError(no_face) when no usable face was ever seen.

    ``on_frame`` sees every frame read (a live preview), unthrottled: with its report when the
    frame was analysed, ``None`` otherwise. ``analysis_interval_s`` > 0 analyses at most one
    frame per interval, so a live view runs at the camera's frame rate while the analysis (the
    costly part) runs at its own; 0 analyses every frame."""
    config = camera.config
    start = clock()
    deadline = start + timeout_s
    best: tuple[int, float, Frame, QualityReport] | None = None
    last_guidance = float("-inf")
    last_analysis = float("-inf")
    frames = 0
    met = False
    while True:
        remaining = deadline - clock()
        if remaining <= 0 or (cancelled is not None and cancelled.is_set()):
            break
        try:
            frame = camera.read(timeout_s=min(remaining, config.read_timeout_s))
        except DeviceTimeout:
            # A late frame is not a lost camera: keep trying until the deadline. A pulled
            # cable (DeviceDisconnected) ends the capture with that error.
            continue
        if analysis_interval_s > 0:
            now = clock()
            if now - last_analysis < analysis_interval_s:
                if on_frame is not None:
                    on_frame(frame, None)  # a live view's frame between two analyses
                continue
            last_analysis = now
        report = assess(frame.image, config.quality)
        frames += 1
        if on_frame is not None:
            on_frame(frame, report)
        if report.face is not None:
            key = (report.score, report.face.eye_distance)
            if best is None or key > best[:2]:
                best = (report.score, report.face.eye_distance, frame, report)
            if report.score >= min_quality:
                met = True
                break
        now = clock()
        if guidance is not None and now - last_guidance >= config.guidance_interval_s:
            last_guidance = now
            guidance(guidance_payload(report, frame.index))
    elapsed = clock() - start
    if best is None:
        if cancelled is not None and cancelled.is_set():
            raise CommandTimeout("capture cancelled before a face was seen")
        raise CommandError(
            f"no usable face within {timeout_s:.1f} s",
            code=ErrorCode.NO_FACE,
            retryable=True,
            details={"frames": frames},
        )
    _, _, frame, report = best
    portrait = build_portrait(frame.image, report, config, met)
    log.info(
        "camera capture %s: score %d (min %d, met %s) after %d frames in %.2f s",
        portrait.record_id,
        report.score,
        min_quality,
        met,
        frames,
        elapsed,
    )
    return CaptureOutcome(portrait, report, frames, elapsed, min_quality)
