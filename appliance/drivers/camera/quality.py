"""Portrait quality: pure functions from a BGR frame to a scored report (no I/O).

Follows ISO/IEC 19794-5, ISO/IEC 29794-5 / OFIQ and the ICAO Doc 9303 Part 3 portrait rules:
face count, inter-eye distance, roll from the eye line, yaw/pitch estimates, head size and
position against the 19794-5 token geometry, exposure, contrast, sharpness and background
uniformity. Each component is scored 0-100 with its limit at 50 and its ideal at 100, and
carries a reason and a hint code the kiosk screen turns into words ("come closer").

Detectors ship inside packages, no model download:

- faces: the LBP frontal-face cascade bundled in scikit-image's wheel
  (``skimage.data.lbp_frontal_face_cascade_filename()``), run by ``skimage.feature.Cascade``.
  OpenCV 5 removed ``cv2.CascadeClassifier`` and no longer ships ``cv2.data`` cascades, so the
  spec's "Haar cascades in the opencv wheel" no longer holds;
- eyes: the gradient-based eye-centre locator of Timm and Barth (VISAPP 2011) inside the two
  eye regions of the face box, weighted by darkness and a positional prior.

Yaw and pitch come from where the eyes sit inside the detected face box. That is a coarse
estimate (a few degrees), not a 3-D head pose; the limits default to 8 degrees accordingly.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from ...errors import ConfigError
from .config import QualityConfig

Image = npt.NDArray[np.uint8]

# ISO/IEC 19794-5:2005 clause 8.4 token face image: width W, height W / 0.75, eye midpoint at
# (0.5 W, 0.6 W) from the top-left corner, eyes 0.25 W apart and level.
TOKEN_EYE_DISTANCE = 0.25
TOKEN_EYE_Y = 0.6
TOKEN_ASPECT = 0.75  # width / height

# Where eyes sit inside the LBP cascade's face box (measured on frontal portraits), and the
# search windows around them, as fractions of the box side.
_EYE_Y = 0.36
_EYE_X = (0.30, 0.70)
_EYE_WINDOWS = ((0.12, 0.50), (0.50, 0.88))
_EYE_BAND = (0.20, 0.54)
_EYE_NORM = 96  # face box side the eye search runs at
_ROTATED_RETRY_DEG = (18.0, -18.0)
_REFINE_SIDE = 64  # face side, in pixels, of the refining pass
# Smallest face of the coarse pass, in pixels of the detection-width frame: 28 of 192 is 15 %
# of the frame width (about 95 px at 640), far smaller than a citizen at the kiosk. The
# cascade's own window is 24 px; the last scales are the costliest, so they are skipped.
_COARSE_MIN = 28

COMPONENTS = (
    "face_count",
    "eye_distance",
    "roll",
    "yaw",
    "pitch",
    "head_size",
    "position",
    "exposure",
    "contrast",
    "sharpness",
    "background",
)


@dataclass(frozen=True)
class Component:
    """One quality component: 0-100 score, pass flag, measured value, reason, hint code."""

    name: str
    score: int
    passed: bool
    value: float | None
    reason: str
    hint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "passed": self.passed,
            "value": None if self.value is None else round(self.value, 2),
            "reason": self.reason,
            "hint": self.hint,
        }


@dataclass(frozen=True)
class FaceGeometry:
    """Where the face is: detector box and eye centres in frame pixels (x, y)."""

    box: tuple[float, float, float]  # x, y, side
    right_eye: tuple[float, float]  # the subject's right eye: on the image's left
    left_eye: tuple[float, float]

    @property
    def eye_distance(self) -> float:
        return math.dist(self.right_eye, self.left_eye)

    @property
    def eye_midpoint(self) -> tuple[float, float]:
        return (
            (self.right_eye[0] + self.left_eye[0]) / 2.0,
            (self.right_eye[1] + self.left_eye[1]) / 2.0,
        )

    @property
    def roll_deg(self) -> float:
        """Angle of the eye line; positive when the subject's left eye (image right) is lower."""
        dx = self.left_eye[0] - self.right_eye[0]
        dy = self.left_eye[1] - self.right_eye[1]
        return math.degrees(math.atan2(dy, dx))

    def token_corners(self) -> npt.NDArray[np.float64]:
        """The 19794-5 token frame's four corners in frame pixels (rotated with the eyes)."""
        ied = self.eye_distance
        width = ied / TOKEN_EYE_DISTANCE
        height = width / TOKEN_ASPECT
        mx, my = self.eye_midpoint
        angle = math.radians(self.roll_deg)
        ux = np.array([math.cos(angle), math.sin(angle)])
        uy = np.array([-math.sin(angle), math.cos(angle)])
        origin = np.array([mx, my]) - ux * (width / 2.0) - uy * (TOKEN_EYE_Y * width)
        return np.array(
            [origin, origin + ux * width, origin + ux * width + uy * height, origin + uy * height]
        )


@dataclass(frozen=True)
class QualityReport:
    """All components, the overall score (the weakest component) and the verdict."""

    components: dict[str, Component]
    score: int
    passed: bool
    face: FaceGeometry | None = None
    faces_found: int = 0
    frame_size: tuple[int, int] = (0, 0)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def failing(self) -> list[Component]:
        return [c for c in self.components.values() if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: scores, reasons and geometry; never pixels."""
        out: dict[str, Any] = {
            "score": self.score,
            "passed": self.passed,
            "faces": self.faces_found,
            "components": {n: c.to_dict() for n, c in self.components.items()},
            "failing": [c.name for c in self.failing],
            "hints": sorted({c.hint for c in self.failing if c.hint}),
        }
        if self.face is not None:
            out["eyes"] = {
                "right": [round(v, 1) for v in self.face.right_eye],
                "left": [round(v, 1) for v in self.face.left_eye],
            }
        return out


# --- score mappings -------------------------------------------------------------------------


def score_at_least(value: float, limit: float, ideal: float) -> int:
    """0-100 score where ``limit`` maps to 50 and ``ideal`` (> limit) or more to 100."""
    if value >= ideal:
        return 100
    if value >= limit:
        return round(50 + 50 * (value - limit) / (ideal - limit))
    if limit <= 0:
        return 0
    return round(max(0.0, 50 * value / limit))


def score_at_most(value: float, limit: float, ideal: float = 0.0) -> int:
    """0-100 score where ``ideal`` or less maps to 100, ``limit`` to 50, ``2 * limit`` to 0."""
    if value <= ideal:
        return 100
    if value <= limit:
        return round(100 - 50 * (value - ideal) / max(limit - ideal, 1e-9))
    return round(max(0.0, 50 - 50 * (value - limit) / max(limit, 1e-9)))


def _component(
    name: str, score: int, value: float | None, ok: str, bad: str, hint: str | None
) -> Component:
    passed = score >= 50
    return Component(name, score, passed, value, ok if passed else bad, None if passed else hint)


# --- detection ------------------------------------------------------------------------------

_local = threading.local()


def _cascade() -> Any:
    """The scikit-image LBP frontal-face cascade, one instance per thread (it keeps state)."""
    cascade = getattr(_local, "cascade", None)
    if cascade is None:
        try:
            from skimage import data
            from skimage.feature import Cascade
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise ConfigError(
                "portrait quality needs scikit-image (its bundled LBP face cascade)",
                [("hardware.camera", f"scikit-image is not installed: {exc}")],
            ) from exc
        filename: Callable[[], str] = data.lbp_frontal_face_cascade_filename
        cascade = Cascade(filename())
        _local.cascade = cascade
    return cascade


def _cascade_boxes(
    grey: Image, scale_factor: float, min_side: int, max_side: int
) -> list[tuple[float, float, float]]:
    h, w = grey.shape[:2]
    max_side = min(max_side, h, w)
    if max_side < min_side:
        return []
    found = _cascade().detect_multi_scale(
        np.ascontiguousarray(grey),
        scale_factor=scale_factor,
        step_ratio=1.0,
        min_size=(min_side, min_side),
        max_size=(max_side, max_side),
        min_neighbor_number=4,
        intersection_score_threshold=0.5,
    )
    return [(float(d["c"]), float(d["r"]), float(max(d["width"], d["height"]))) for d in found]


def _refine(grey: Image, box: tuple[float, float, float]) -> tuple[float, float, float] | None:
    """Search again around a coarse box at a finer scale step (a better box, or None).

    The coarse pass runs on a small frame with a coarse scale step, so its boxes are off by
    several pixels and the eye search then starts in the wrong place; a second pass on a
    region 1.8 box sides wide, scaled so the face is _REFINE_SIDE pixels, costs little.
    """
    x, y, side = box
    h, w = grey.shape[:2]
    pad = 0.4 * side
    x0, y0 = int(max(0, x - pad)), int(max(0, y - pad))
    x1, y1 = int(min(w, x + side + pad)), int(min(h, y + side + pad))
    scale = _REFINE_SIDE / side
    roi = cv2.resize(
        grey[y0:y1, x0:x1],
        (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))),
        interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
    )
    found = _cascade_boxes(
        np.asarray(roi, dtype=np.uint8),
        1.08,
        # Coarse boxes run large (a 24-28 px window fires on a face a little smaller than it),
        # so look down to half the size.
        max(24, int(0.5 * _REFINE_SIDE)),
        int(1.35 * _REFINE_SIDE),
    )
    if not found:
        return None
    # The largest detection centred near the coarse box's centre (a smaller one inside a face
    # is a part of it), else the nearest one.
    cx, cy = (x + side / 2 - x0) * scale, (y + side / 2 - y0) * scale

    def dist2(b: tuple[float, float, float]) -> float:
        return (b[0] + b[2] / 2 - cx) ** 2 + (b[1] + b[2] / 2 - cy) ** 2

    near = [b for b in found if dist2(b) <= (0.35 * _REFINE_SIDE) ** 2]
    bx, by, bs = max(near, key=lambda b: b[2]) if near else min(found, key=dist2)
    return (x0 + bx / scale, y0 + by / scale, bs / scale)


def detect_faces(grey: Image, detection_width: int = 192) -> list[tuple[float, float, float]]:
    """Upright frontal faces as (x, y, side) boxes in ``grey``'s pixels, largest first.

    A coarse pass on the frame scaled to ``detection_width`` finds candidates (faces of at
    least _COARSE_MIN pixels there); each is sharpened by :func:`_refine`
    (kept as found when the finer pass does not see it, e.g. in a blurred frame).
    """
    width = grey.shape[1]
    scale = min(1.0, detection_width / float(width))
    small = (
        grey
        if scale == 1.0
        else cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    )
    coarse = _cascade_boxes(np.asarray(small, dtype=np.uint8), 1.15, _COARSE_MIN, small.shape[0])
    boxes = []
    for cx, cy, cs in _suppress(sorted(coarse, key=lambda b: -b[2])):
        box = (cx / scale, cy / scale, cs / scale)
        boxes.append(_refine(grey, box) or box)
    return _suppress(sorted(boxes, key=lambda b: -b[2]))


def _suppress(boxes: list[tuple[float, float, float]]) -> list[tuple[float, float, float]]:
    """Drop a box whose centre lies inside a larger kept box (nested detections)."""
    kept: list[tuple[float, float, float]] = []
    for x, y, s in boxes:
        cx, cy = x + s / 2, y + s / 2
        if any(kx <= cx <= kx + ks and ky <= cy <= ky + ks for kx, ky, ks in kept):
            continue
        kept.append((x, y, s))
    return kept


def _eye_centre(
    patch: npt.NDArray[np.float32], prior_xy: tuple[float, float]
) -> tuple[float, float]:
    """Timm & Barth gradient eye centre in ``patch``, weighted by darkness and a prior."""
    smooth = cv2.GaussianBlur(patch, (0, 0), 1.0)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.hypot(gx, gy)
    threshold = float(mag.mean() + 0.5 * mag.std())
    ys, xs = np.nonzero(mag > threshold)
    h, w = patch.shape
    if xs.size == 0:
        return prior_xy[0] * w, prior_xy[1] * h
    gxn = gx[ys, xs] / mag[ys, xs]
    gyn = gy[ys, xs] / mag[ys, xs]
    cy, cx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx = xs[None, :].astype(np.float32) - cx.reshape(-1, 1)
    dy = ys[None, :].astype(np.float32) - cy.reshape(-1, 1)
    norm = np.hypot(dx, dy)
    norm[norm == 0] = 1.0
    dot = np.maximum((dx * gxn[None, :] + dy * gyn[None, :]) / norm, 0.0)
    objective = (dot * dot).mean(axis=1).reshape(h, w)
    darkness = 255.0 - cv2.GaussianBlur(patch, (0, 0), 2.0)
    prior = np.exp(
        -0.5
        * (((cy - prior_xy[1] * h) / (0.35 * h)) ** 2 + ((cx - prior_xy[0] * w) / (0.30 * w)) ** 2)
    )
    score = objective * darkness * prior
    y, x = np.unravel_index(int(np.argmax(score)), score.shape)
    # Sub-pixel: the score-weighted centroid of the 3 x 3 neighbourhood of the maximum.
    y0, y1, x0, x1 = max(0, y - 1), min(h, y + 2), max(0, x - 1), min(w, x + 2)
    weights = score[y0:y1, x0:x1].astype(np.float64)
    total = float(weights.sum())
    if total <= 0:
        return float(x), float(y)
    return (
        float((weights * cx[y0:y1, x0:x1]).sum() / total),
        float((weights * cy[y0:y1, x0:x1]).sum() / total),
    )


def locate_eyes(
    grey: Image, box: tuple[float, float, float]
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Eye centres (image-left eye, image-right eye) inside an upright face box."""
    x, y, side = box
    x0, y0 = round(x), round(y)
    s = max(8, round(side))
    h, w = grey.shape[:2]
    x0, y0 = max(0, x0), max(0, y0)
    crop = grey[y0 : min(h, y0 + s), x0 : min(w, x0 + s)]
    face = cv2.resize(crop, (_EYE_NORM, _EYE_NORM), interpolation=cv2.INTER_AREA)
    face_f = face.astype(np.float32)
    sx = crop.shape[1] / _EYE_NORM
    sy = crop.shape[0] / _EYE_NORM
    ya, yb = int(_EYE_BAND[0] * _EYE_NORM), int(_EYE_BAND[1] * _EYE_NORM)
    eyes = []
    for (wa, wb), ex in zip(_EYE_WINDOWS, _EYE_X, strict=True):
        xa, xb = int(wa * _EYE_NORM), int(wb * _EYE_NORM)
        prior = ((ex * _EYE_NORM - xa) / (xb - xa), (_EYE_Y * _EYE_NORM - ya) / (yb - ya))
        px, py = _eye_centre(face_f[ya:yb, xa:xb], prior)
        eyes.append((x0 + (xa + px + 0.5) * sx, y0 + (ya + py + 0.5) * sy))
    return eyes[0], eyes[1]


def _skin_like(bgr: Image, box: tuple[float, float, float]) -> bool:
    """Whether the centre of ``box`` has a skin hue (red-orange, some saturation).

    Hue does not change when light gets brighter or darker, unlike YCrCb chroma ranges.
    """
    x, y, s = box
    h, w = bgr.shape[:2]
    x0, y0 = int(max(0, x + 0.25 * s)), int(max(0, y + 0.3 * s))
    x1, y1 = int(min(w, x + 0.75 * s)), int(min(h, y + 0.8 * s))
    if x1 <= x0 or y1 <= y0:
        return False
    patch = bgr[y0:y1, x0:x1].reshape(-1, 1, 3)
    mean_bgr = np.ascontiguousarray(patch.mean(axis=0).reshape(1, 1, 3).astype(np.uint8))
    hue, sat, _ = (int(v) for v in cv2.cvtColor(mean_bgr, cv2.COLOR_BGR2HSV)[0, 0])
    return (hue <= 25 or hue >= 165) and sat >= 30


def _rotate(grey: Image, centre: tuple[float, float], angle: float) -> tuple[Image, Any]:
    """``grey`` turned anticlockwise by ``angle`` degrees about ``centre``; and a function
    mapping a point of the turned image back to ``grey``'s coordinates."""
    h, w = grey.shape[:2]
    matrix = cv2.getRotationMatrix2D(centre, angle, 1.0)
    rotated: Image = np.asarray(
        cv2.warpAffine(grey, matrix, (w, h), borderMode=cv2.BORDER_REPLICATE), dtype=np.uint8
    )
    inverse = np.asarray(cv2.invertAffineTransform(matrix), dtype=np.float64)

    def back(p: tuple[float, float]) -> tuple[float, float]:
        v = inverse @ np.array([p[0], p[1], 1.0])
        return float(v[0]), float(v[1])

    return rotated, back


def _eyes_levelled(grey: Image, box: tuple[float, float, float]) -> FaceGeometry:
    """Eye centres in an upright box; when the head is visibly tilted, search again in the
    frame turned to level the first estimate (the eye windows assume level eyes)."""
    right, left = locate_eyes(grey, box)
    geom = FaceGeometry(box, right, left)
    roll = geom.roll_deg
    # The eye windows' positional prior sits on a level line and pulls both estimates towards
    # it, underestimating roll; a second search in the levelled frame removes that bias.
    if abs(roll) < 1.5:
        return geom
    x, y, side = box
    rotated, back = _rotate(grey, (x + side / 2, y + side / 2), roll)
    r2, l2 = locate_eyes(rotated, box)
    return FaceGeometry(box, back(r2), back(l2))


def find_faces(
    grey: Image, detection_width: int = 192, bgr: Image | None = None
) -> tuple[list[tuple[float, float, float]], FaceGeometry | None]:
    """All face boxes, and the geometry of the only face when there is exactly one.

    The largest detection is always a face. Further detections count only if they look like
    skin (when colour is known): LBP cascades fire on badges and patterns, and a false
    "second face" would block a good capture. When no upright face is found the frame is
    searched again rotated by +/-18 degrees, so a strongly tilted head is reported as tilted
    rather than as missing.
    """
    boxes = detect_faces(grey, detection_width)
    if bgr is not None and len(boxes) > 1:
        boxes = boxes[:1] + [b for b in boxes[1:] if _skin_like(bgr, b)]
    if len(boxes) == 1:
        return boxes, _eyes_levelled(grey, boxes[0])
    if boxes:
        return boxes, None
    h, w = grey.shape[:2]
    for angle in _ROTATED_RETRY_DEG:
        rotated, back = _rotate(grey, (w / 2.0, h / 2.0), angle)
        # A coarser search: a head tilted this far at the kiosk is close and large, and this
        # path runs on every frame without a face, the slowest case of the quality rate.
        rboxes = detect_faces(rotated, detection_width * 3 // 4)
        if len(rboxes) != 1:
            continue
        found = _eyes_levelled(rotated, rboxes[0])
        bx, by, bs = rboxes[0]
        cx, cy = back((bx + bs / 2, by + bs / 2))
        box = (cx - bs / 2, cy - bs / 2, bs)
        return [box], FaceGeometry(box, back(found.right_eye), back(found.left_eye))
    return [], None


# --- assessment -----------------------------------------------------------------------------


def _token_outside_fraction(corners: npt.NDArray[np.float64], w: int, h: int) -> float:
    """Share of the token quadrilateral's area that lies outside the frame (polygon clip)."""
    quad = corners.astype(np.float32).reshape(-1, 1, 2)
    frame = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32).reshape(-1, 1, 2)
    total = abs(cv2.contourArea(quad))
    if total <= 0:
        return 1.0
    inter, _ = cv2.intersectConvexConvex(quad, frame)
    return max(0.0, 1.0 - inter / total)


def _background_mask(geom: FaceGeometry, w: int, h: int) -> npt.NDArray[np.bool_]:
    """Token-frame pixels that must be backdrop in a compliant portrait.

    ICAO allows a head (hair included) up to 75 % of the token width (3 inter-eye distances),
    so the outer 0.3 IED on each side, from the token's top down to the eye line, and a band
    0.3 IED high along the top are backdrop whatever the hairstyle.
    """
    corners = geom.token_corners()
    origin = corners[0]
    ux = (corners[1] - corners[0]) / np.linalg.norm(corners[1] - corners[0])
    uy = (corners[3] - corners[0]) / np.linalg.norm(corners[3] - corners[0])
    ied = geom.eye_distance
    width = ied / TOKEN_EYE_DISTANCE
    eye_y = TOKEN_EYE_Y * width
    strip = 0.3 * ied
    mask = np.zeros((h, w), np.uint8)
    for u0, v0, u1, v1 in (
        (0.0, 0.0, strip, eye_y),
        (width - strip, 0.0, width, eye_y),
        (0.0, 0.0, width, strip),
    ):
        quad = [origin + ux * u + uy * v for u, v in ((u0, v0), (u1, v0), (u1, v1), (u0, v1))]
        cv2.fillConvexPoly(mask, np.round(np.array(quad)).astype(np.int32), 1)
    return mask.astype(bool)


def assess(image: Image, config: QualityConfig | None = None) -> QualityReport:  # noqa: PLR0912, PLR0915  one rule after another (ISO/IEC 19794-5 / ICAO portrait), read top to bottom
    """Score one BGR (or grey) frame against the portrait rules."""
    cfg = config or QualityConfig()
    if image.dtype != np.uint8:
        raise ValueError(f"expected an 8-bit image, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] != 3:
        raise ValueError(f"expected 3 colour channels (BGR), got shape {image.shape}")
    if image.ndim in (2, 3) and min(image.shape[:2]) < 24:
        # Smaller than the detector's window: nothing to find, and nothing to crash on.
        tiny = Component("face_count", 0, False, 0.0, "frame too small", None)
        return QualityReport(
            {"face_count": tiny}, 0, False, None, 0, (image.shape[1], image.shape[0])
        )
    if image.ndim == 3:
        grey: Image = np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), dtype=np.uint8)
    elif image.ndim == 2:
        grey = image
    else:
        raise ValueError(f"expected a 2-D grey or 3-D BGR image, got shape {image.shape}")
    h, w = grey.shape[:2]
    boxes, geom = find_faces(grey, cfg.detection_width, image if image.ndim == 3 else None)
    comps: dict[str, Component] = {}
    n = len(boxes)
    if n == 1 and geom is not None:
        comps["face_count"] = Component("face_count", 100, True, 1.0, "one face")
    elif n == 0:
        comps["face_count"] = Component(
            "face_count", 0, False, 0.0, "no face found", "look_at_camera"
        )
    else:
        comps["face_count"] = Component(
            "face_count", 0, False, float(n), f"{n} faces found", "one_person_only"
        )
    if geom is None:
        return QualityReport(comps, 0, False, None, n, (w, h))

    ied = geom.eye_distance
    comps["eye_distance"] = _component(
        "eye_distance",
        score_at_least(ied, cfg.min_eye_distance_px, cfg.good_eye_distance_px),
        ied,
        "inter-eye distance sufficient",
        f"inter-eye distance {ied:.0f} px below {cfg.min_eye_distance_px:.0f} px: too far",
        "come_closer",
    )
    roll = geom.roll_deg
    comps["roll"] = _component(
        "roll",
        score_at_most(abs(roll), cfg.max_roll_deg, 1.0),
        roll,
        "head level",
        f"head tilted {roll:+.1f} degrees",
        "straighten_head",
    )
    bx, by, bs = geom.box
    mx, my = geom.eye_midpoint
    # Coarse pose: the eye midpoint against the face box (frontal calibration: centred,
    # eye line at _EYE_Y of the box). A head turned by t moves the eyes by ~0.5 * side * sin t.
    yaw = math.degrees(math.asin(max(-1.0, min(1.0, 2.0 * (mx - (bx + bs / 2)) / bs))))
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, 2.0 * ((my - by) / bs - _EYE_Y)))))
    comps["yaw"] = _component(
        "yaw",
        score_at_most(abs(yaw), cfg.max_yaw_deg, 2.0),
        yaw,
        "facing the camera",
        f"head turned about {yaw:+.0f} degrees",
        "face_camera",
    )
    comps["pitch"] = _component(
        "pitch",
        score_at_most(abs(pitch), cfg.max_pitch_deg, 2.0),
        pitch,
        "chin level",
        f"head tipped about {pitch:+.0f} degrees",
        "level_chin",
    )
    corners = geom.token_corners()
    token_w = ied / TOKEN_EYE_DISTANCE
    token_h = token_w / TOKEN_ASPECT
    fill = max(token_w / w, token_h / h)
    comps["head_size"] = _component(
        "head_size",
        score_at_most(fill, 1.0, 0.9),
        fill,
        "head size fits the token frame",
        "head too large for the frame: too close",
        "move_back",
    )
    outside = _token_outside_fraction(corners, w, h)
    centre = corners.mean(axis=0)
    dx, dy = centre[0] - w / 2.0, centre[1] - h / 2.0
    if abs(dx) / w >= abs(dy) / h:
        # Hints are in the citizen's own frame (docs/camera.md "Which way is left"). The
        # frame is the camera's view, not a mirror (the subject's right eye, ISO/IEC 19794-5
        # feature point 12.2, is on the image's left): a face on the image's left is a citizen
        # too far to their own right, who must move to their own left.
        hint = "move_left" if dx < 0 else "move_right"
    else:
        hint = "move_down" if dy < 0 else "move_up"
    comps["position"] = _component(
        "position",
        score_at_most(outside, cfg.max_outside_fraction),
        outside,
        "token frame inside the picture",
        f"{outside:.0%} of the token frame is outside the picture",
        hint,
    )

    # Photometric components on the inner face (central part of the box, no hair or background).
    fx0, fy0 = int(max(0, bx + 0.2 * bs)), int(max(0, by + 0.2 * bs))
    fx1, fy1 = int(min(w, bx + 0.8 * bs)), int(min(h, by + 0.95 * bs))
    face = grey[fy0:fy1, fx0:fx1]
    if face.size < 64:
        face = grey
    mean = float(face.mean())
    clipped = float((face >= 250).mean())
    dark_score = score_at_least(mean, cfg.min_face_luma, cfg.min_face_luma + 30)
    bright_score = min(
        score_at_most(mean, cfg.max_face_luma, cfg.max_face_luma - 40),
        score_at_most(clipped, cfg.max_clipped_fraction, 0.0),
    )
    exp_score = min(dark_score, bright_score)
    if dark_score <= bright_score:
        exp_reason, exp_hint = f"face too dark (mean {mean:.0f})", "more_light"
    else:
        exp_reason = f"face over-exposed (mean {mean:.0f}, {clipped:.0%} clipped)"
        exp_hint = "less_light"
    comps["exposure"] = _component(
        "exposure", exp_score, mean, "exposure good", exp_reason, exp_hint
    )
    p5, p95 = np.percentile(face, (5, 95))
    spread = float(p95 - p5)
    comps["contrast"] = _component(
        "contrast",
        score_at_least(spread, cfg.min_contrast, cfg.min_contrast * 2),
        spread,
        "contrast good",
        f"low contrast on the face (spread {spread:.0f})",
        "even_light",
    )
    norm_face = cv2.resize(face, (96, 96), interpolation=cv2.INTER_AREA)
    sharp = float(cv2.Laplacian(norm_face, cv2.CV_32F).var())
    comps["sharpness"] = _component(
        "sharpness",
        score_at_least(sharp, cfg.min_sharpness, cfg.min_sharpness * 3),
        sharp,
        "sharp",
        f"image blurred (sharpness {sharp:.0f})",
        "hold_still",
    )
    mask = _background_mask(geom, w, h)
    if int(mask.sum()) >= 50:
        bg = cv2.GaussianBlur(grey, (0, 0), 1.0)[mask]
        bg_std = float(bg.std())
        comps["background"] = _component(
            "background",
            score_at_most(bg_std, cfg.max_background_std, cfg.max_background_std / 3),
            bg_std,
            "plain background",
            f"background not plain (std {bg_std:.0f})",
            "plain_background",
        )
    else:
        comps["background"] = Component(
            "background", 0, False, None, "no background visible in the frame", "move_back"
        )
    score = min(c.score for c in comps.values())
    passed = all(c.passed for c in comps.values())
    return QualityReport(comps, score, passed, geom, 1, (w, h))


def crop_token(image: Image, geom: FaceGeometry, width: int | None = None) -> Image:
    """Warp the frame to the 19794-5 token image: eyes level at (0.375 W, 0.6 W), (0.625 W, ...).

    ``width`` defaults to the native resolution (four inter-eye distances, even, at least 8).
    """
    ied = geom.eye_distance
    out_w = int(width if width is not None else max(8, 2 * round(ied / TOKEN_EYE_DISTANCE / 2)))
    out_h = round(out_w / TOKEN_ASPECT)
    src = np.array([geom.right_eye, geom.left_eye], dtype=np.float32)
    dst = np.array(
        [
            [(0.5 - TOKEN_EYE_DISTANCE / 2) * out_w, TOKEN_EYE_Y * out_w],
            [(0.5 + TOKEN_EYE_DISTANCE / 2) * out_w, TOKEN_EYE_Y * out_w],
        ],
        dtype=np.float32,
    )
    matrix = _similarity(src, dst)
    out: Image = np.asarray(
        cv2.warpAffine(
            image, matrix, (out_w, out_h), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE
        ),
        dtype=np.uint8,
    )
    return out


def _similarity(
    src: npt.NDArray[np.float32], dst: npt.NDArray[np.float32]
) -> npt.NDArray[np.float64]:
    """The rotation + uniform scale + translation mapping two points onto two points."""
    s0, s1 = src.astype(np.float64)
    d0, d1 = dst.astype(np.float64)
    sv, dv = s1 - s0, d1 - d0
    scale = float(np.hypot(*dv) / max(np.hypot(*sv), 1e-9))
    angle = math.atan2(dv[1], dv[0]) - math.atan2(sv[1], sv[0])
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    t = d0 - rot @ s0
    return np.hstack([rot, t[:, None]])
