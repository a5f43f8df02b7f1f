"""Generated portrait scenes for the camera simulator (pure: numbers in, BGR frames out).

The face is a real photograph: the public-domain portrait of astronaut Eileen Collins (NASA)
bundled in scikit-image's wheel (``skimage.data.astronaut()``, no download). Her head and
shoulders are cut out with a soft mask and placed on a plain light-grey background, the way a
kiosk sees a citizen in front of its backdrop. Each fault bends one thing the quality rules
check: no face, two faces, too dark, over-exposed, blurred, tilted head, off-centre, too far.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from ...errors import ConfigError

Image = npt.NDArray[np.uint8]

# In skimage.data.astronaut() (512 x 512): eye centres measured by hand on the photograph.
ASTRONAUT_RIGHT_EYE = (204.0, 101.0)  # the subject's right eye, on the image's left
ASTRONAUT_LEFT_EYE = (246.0, 102.0)
# Head-and-shoulders cut-out: source rectangle and the head ellipse inside the photograph.
_CUT = (110, 0, 340, 300)  # x0, y0, x1, y1
_HEAD_CENTRE = (226, 108)
_HEAD_AXES = (80, 104)
BACKGROUND_BGR = (205, 205, 200)

FAULTS = (
    "none",
    "no_face",
    "two_faces",
    "too_dark",
    "over_exposed",
    "blurred",
    "tilted",
    "off_centre",
    "too_far",
    "unplugged",
)


@dataclass(frozen=True)
class SceneTruth:
    """Where the scene put the eyes (frame pixels); empty for a frame without a face."""

    eyes: tuple[tuple[tuple[float, float], tuple[float, float]], ...]
    roll_deg: float = 0.0


@functools.cache
def _cutout() -> tuple[Image, npt.NDArray[np.float32]]:
    """The astronaut's head and shoulders (BGR) and a soft alpha mask, cached."""
    try:
        from skimage import data
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ConfigError(
            "the camera simulator's scene needs scikit-image (bundled portrait photograph)",
            [("hardware.camera.sim_source", f"scikit-image is not installed: {exc}")],
        ) from exc
    astronaut: Callable[[], Image] = data.astronaut
    rgb = astronaut()
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    x0, y0, x1, y1 = _CUT
    alpha = np.zeros(rgb.shape[:2], np.float32)
    cv2.ellipse(alpha, _HEAD_CENTRE, _HEAD_AXES, 0, 0, 360, 1.0, thickness=-1)
    # Neck and shoulders: a trapezoid widening towards the bottom of the cut.
    body = np.array([[170, 170], [285, 170], [340, 300], [110, 300]], np.int32)
    cv2.fillConvexPoly(alpha, body, 1.0)
    soft = np.asarray(cv2.GaussianBlur(alpha, (0, 0), 3.0), dtype=np.float32)
    cut: Image = np.ascontiguousarray(bgr[y0:y1, x0:x1])
    return cut, np.ascontiguousarray(soft[y0:y1, x0:x1])


def _paste(
    canvas: npt.NDArray[np.float32],
    eye_mid: tuple[float, float],
    eye_distance: float,
    roll_deg: float,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Composite the cut-out so its eye midpoint lands on ``eye_mid`` with the given size."""
    cut, alpha = _cutout()
    x0, y0 = _CUT[0], _CUT[1]
    src_right = np.array([ASTRONAUT_RIGHT_EYE[0] - x0, ASTRONAUT_RIGHT_EYE[1] - y0])
    src_left = np.array([ASTRONAUT_LEFT_EYE[0] - x0, ASTRONAUT_LEFT_EYE[1] - y0])
    src_mid = (src_right + src_left) / 2.0
    scale = eye_distance / float(np.hypot(*(src_left - src_right)))
    # The photograph's own eye line is ~1.4 degrees off level; cancel it so roll is exact.
    own = float(np.degrees(np.arctan2(*(src_left - src_right)[::-1])))
    matrix = cv2.getRotationMatrix2D((float(src_mid[0]), float(src_mid[1])), own - roll_deg, scale)
    matrix[:, 2] += np.array(eye_mid) - src_mid
    h, w = canvas.shape[:2]
    warped = cv2.warpAffine(cut, matrix, (w, h), flags=cv2.INTER_LINEAR).astype(np.float32)
    a = cv2.warpAffine(alpha, matrix, (w, h), flags=cv2.INTER_LINEAR)[..., None]
    canvas *= 1.0 - a
    canvas += warped * a

    def where(p: npt.NDArray[np.float64]) -> tuple[float, float]:
        v = matrix @ np.array([p[0], p[1], 1.0])
        return float(v[0]), float(v[1])

    return where(src_right), where(src_left)


def render(
    width: int, height: int, fault: str = "none", frame_index: int = 0
) -> tuple[Image, SceneTruth]:
    """One simulated camera frame with ``fault`` applied, and where its eyes are."""
    if fault not in FAULTS:
        raise ConfigError(
            f"unknown simulator fault {fault!r}",
            [("hardware.camera.sim_fault", f"choose one of {', '.join(FAULTS)}")],
        )
    canvas = np.empty((height, width, 3), np.float32)
    canvas[:] = BACKGROUND_BGR
    # Soft vignetting, as real lenses give; keeps the background plain but not flat.
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r2 = ((xx - width / 2) / width) ** 2 + ((yy - height / 2) / height) ** 2
    canvas *= (1.0 - 0.12 * r2)[..., None]
    # A citizen is never perfectly still: sub-pixel sway from frame to frame.
    sway = 1.5 * np.sin(frame_index * 0.7)
    ied = 0.15 * height
    mid = (width / 2.0 + sway, 0.45 * height)
    roll = 0.0
    eyes: list[tuple[tuple[float, float], tuple[float, float]]] = []
    if fault == "two_faces":
        for cx in (0.28 * width, 0.72 * width):
            eyes.append(_paste(canvas, (cx + sway, 0.42 * height), 0.10 * height, 0.0))
    elif fault != "no_face":
        if fault == "too_far":
            ied = 0.08 * height
        elif fault == "off_centre":
            mid = (0.16 * width + sway, 0.45 * height)
        elif fault == "tilted":
            roll = 13.0
        eyes.append(_paste(canvas, mid, ied, roll))
    if fault == "blurred":
        canvas = np.asarray(cv2.GaussianBlur(canvas, (0, 0), 0.008 * height), dtype=np.float32)
    elif fault == "too_dark":
        canvas *= 0.22
    elif fault == "over_exposed":
        canvas = canvas * 1.45 + 45.0
    noise = np.random.default_rng(frame_index).normal(0.0, 1.2, canvas.shape)
    canvas += noise.astype(np.float32)
    frame: Image = np.clip(canvas, 0, 255).astype(np.uint8)
    return frame, SceneTruth(tuple(eyes), roll)
