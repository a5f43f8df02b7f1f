"""Finger image quality: a 0-100 score from NFIQ 2-style features, with actionable feedback.

This is an APPROXIMATION of NFIQ 2 (ISO/IEC 29794-4), not NFIQ 2: no maintained Python
NFIQ 2 exists (NIST's NFIQ 2 is C++ only), and NFIQ 2's
random-forest model is not reproduced. It computes the same kinds of features on 32 x 32
blocks of a 500 ppi 8-bit image:

- foreground area (blocks with ridge texture, NFIQ 2 "FingerJetFX OCL / ImgProcROIArea"),
- contrast (grey spread inside the foreground, "FDA/LCS"-like),
- orientation-field coherence (structure tensor, "OCL"),
- ridge frequency and clarity (the block spectrum's peak position and its share of the
  AC energy, "RVUP/FDA"-like),
- a minutiae count estimate (crossing numbers on a thinned binary ridge map),

and maps them to 0-100 with a fixed formula documented in docs/fingerprint.md. NFIQ 2's
actionable feedback (same clause) is reproduced with its thresholds taken from configuration.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from .config import FingerQualityConfig

Image = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float64]
BLOCK = 32
# Ridge period window at 500 ppi: ridges are 5..15 px apart on adult fingers.
PERIOD_MIN_PX = 5.0
PERIOD_MAX_PX = 15.0
# A foreground block needs this much grey spread (after smoothing) to count as ridges.
FOREGROUND_STD = 6.0
# NFIQ 2 accepts 197..799 px wide and 197..999 px high images.
MIN_SIDE = 197

# Wet patches (a smudged finger): 16 x 16 blocks where the finger presses (mean grey under
# CONTACT_MAX_MEAN) that are dark (under WET_MAX_MEAN) with almost no ridge/valley spread (grey
# standard deviation under WET_MAX_STD): moisture has bridged the valleys.
WET_BLOCK = 16
CONTACT_MAX_MEAN = 225.0
WET_MAX_MEAN = 170.0
WET_MAX_STD = 20.0

# The emulated sensor's feature extraction (Img2Tz), decided from the same features as the
# score; calibrated on the synthetic set (docs/fingerprint.md, "One scale for quality and
# extraction"). An image failing any of these is refused by Img2Tz and scores below
# EXTRACTION_BOUNDARY, so the default gate (40) accepts only images the sensor can extract.
EXTRACT_MIN_USABLE_PX = 32_768  # 32 blocks of 32 x 32 px of clear, coherent ridges
EXTRACT_MIN_MINUTIAE = 12
EXTRACT_MAX_WET_SHARE = 0.12
EXTRACTION_BOUNDARY = 40
# Ridge/valley grey spread (median block std) at which contrast stops lowering the score.
CONTRAST_FULL = 15.0
# Confirmation codes of Img2Tz (spec, "Confirmation codes"): 06 image too disorderly,
# 07 too few feature points.
IMAGE_MESSY = 0x06
FEATURE_FAIL = 0x07


def extraction_failure(features: dict[str, float]) -> int | None:
    """The Img2Tz confirmation code the emulated sensor answers for an image with these
    features (:func:`assess`), or None when it extracts a character file."""
    if features.get("wet_share", 0.0) > EXTRACT_MAX_WET_SHARE:
        return IMAGE_MESSY
    if (
        features.get("usable_px", 0.0) < EXTRACT_MIN_USABLE_PX
        or features.get("minutiae", 0.0) < EXTRACT_MIN_MINUTIAE
    ):
        return FEATURE_FAIL
    return None


def _wet_share(smooth: npt.NDArray[np.float64]) -> float:
    b = _blocks(smooth, WET_BLOCK)
    mean = b.mean(axis=(2, 3))
    std = b.std(axis=(2, 3))
    contact = mean < CONTACT_MAX_MEAN
    wet = contact & (mean < WET_MAX_MEAN) & (std < WET_MAX_STD)
    return float(wet.sum() / max(1, int(contact.sum())))


class Feedback(enum.StrEnum):
    """NFIQ 2 actionable quality feedback identifiers."""

    EMPTY_OR_LOW_CONTRAST = "EmptyImageOrContrastTooLow"
    UNIFORM_IMAGE = "UniformImage"
    FEW_MINUTIAE = "FingerprintImageWithMinutiae"
    SMALL_FOREGROUND = "SufficientFingerprintForeground"


@dataclass(frozen=True)
class QualityReport:
    """Score, the features it came from, and the actionable feedback codes."""

    score: int
    feedback: list[str]
    features: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _blocks(a: npt.NDArray[Any], size: int = BLOCK) -> FloatArray:
    """View an array as (rows, cols, size, size) blocks, dropping a ragged border."""
    h, w = a.shape[0] // size * size, a.shape[1] // size * size
    v = a[:h, :w].reshape(h // size, size, w // size, size).swapaxes(1, 2)
    return np.asarray(v)


def _zhang_suen_tables() -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Deletion decisions of both Zhang-Suen sub-iterations for every 8-neighbourhood.

    Neighbour bit i (0..7) is P2..P9 clockwise from north, as in the paper.
    """
    first = np.zeros(256, dtype=bool)
    second = np.zeros(256, dtype=bool)
    for code in range(256):
        p = [(code >> i) & 1 for i in range(8)]  # p[0] = P2 ... p[7] = P9
        b = sum(p)
        a = sum(1 for i in range(8) if p[i] == 0 and p[(i + 1) % 8] == 1)
        if not (2 <= b <= 6 and a == 1):
            continue
        p2, p4, p6, p8 = p[0], p[2], p[4], p[6]
        first[code] = p2 * p4 * p6 == 0 and p4 * p6 * p8 == 0
        second[code] = p2 * p4 * p8 == 0 and p2 * p6 * p8 == 0
    return first, second


_ZS_FIRST, _ZS_SECOND = _zhang_suen_tables()


def _thin(binary: npt.NDArray[np.bool_], max_iter: int = 20) -> npt.NDArray[np.bool_]:
    """Zhang-Suen thinning (Comm. ACM 27(3), 1984), vectorised through a 256-entry table."""
    img = np.pad(binary.astype(np.uint8), 1)
    for _ in range(max_iter):
        changed = False
        for table in (_ZS_FIRST, _ZS_SECOND):
            code = (
                img[:-2, 1:-1]
                | img[:-2, 2:] << 1
                | img[1:-1, 2:] << 2
                | img[2:, 2:] << 3
                | img[2:, 1:-1] << 4
                | img[2:, :-2] << 5
                | img[1:-1, :-2] << 6
                | img[:-2, :-2] << 7
            )
            delete = (img[1:-1, 1:-1] == 1) & table[code]
            if delete.any():
                changed = True
                img[1:-1, 1:-1][delete] = 0
        if not changed:
            break
    return img[1:-1, 1:-1].astype(bool)


def _minutiae(skeleton: npt.NDArray[np.bool_], valid: npt.NDArray[np.bool_]) -> int:
    """Ridge endings (crossing number 1) and bifurcations (3) inside ``valid``."""
    s = np.pad(skeleton.astype(np.int16), 1)
    ring = [
        s[:-2, 1:-1], s[:-2, 2:], s[1:-1, 2:], s[2:, 2:],
        s[2:, 1:-1], s[2:, :-2], s[1:-1, :-2], s[:-2, :-2],
    ]  # fmt: skip
    cn = sum(np.abs(ring[i] - ring[(i + 1) % 8]) for i in range(8)) // 2
    points = skeleton & valid & ((cn == 1) | (cn == 3))
    if not points.any():
        return 0
    # Spurs and breaks make clusters of points; count one per 8 x 8 cell.
    ys, xs = np.nonzero(points)
    return len({(int(y) // 8, int(x) // 8) for y, x in zip(ys, xs, strict=True)})


def _expand(blocks: npt.NDArray[np.bool_], shape: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    """Block mask to a pixel mask of ``shape`` (the ragged border stays False)."""
    px = np.kron(blocks, np.ones((BLOCK, BLOCK), dtype=bool)).astype(bool)
    return np.pad(px, ((0, shape[0] - px.shape[0]), (0, shape[1] - px.shape[1])))


def assess(image: Image, thresholds: FingerQualityConfig | None = None) -> QualityReport:  # noqa: PLR0915  the measures run in sequence over shared block arrays; split, they would pass them all around
    """Score an 8-bit grey finger image (rows x columns, ~500 ppi)."""
    th = thresholds or FingerQualityConfig()
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 image, got {image.dtype} {image.shape}")
    if min(image.shape) < 2 * BLOCK:
        raise ValueError(f"image {image.shape} too small for quality assessment")
    img = image.astype(np.float64)
    mean_grey = float(img.mean())
    std_grey = float(img.std())
    feedback: list[str] = []
    # NFIQ 2 actionable feedback, evaluated on the whole image first.
    if mean_grey > th.empty_mean_grey:
        feedback.append(Feedback.EMPTY_OR_LOW_CONTRAST)
    if std_grey < th.uniform_std:
        feedback.append(Feedback.UNIFORM_IMAGE)
    if feedback:
        return QualityReport(
            0,
            [str(f) for f in feedback]
            + [str(Feedback.FEW_MINUTIAE), str(Feedback.SMALL_FOREGROUND)],
            {"mean_grey": mean_grey, "std_grey": std_grey, "foreground_px": 0.0},
        )

    # Filtering in float32 is about four times faster than in float64 and loses nothing
    # that matters at 8-bit input; block statistics below are taken in float64.
    smooth32 = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 1.2)
    smooth = smooth32.astype(np.float64)
    blocks = _blocks(smooth)
    rows, cols = blocks.shape[:2]
    b_std = blocks.std(axis=(2, 3))
    b_mean = blocks.mean(axis=(2, 3))
    fg = (b_std > FOREGROUND_STD) & (b_mean < 250.0)

    # Orientation coherence from the block-summed structure tensor.
    gx = cv2.Sobel(smooth32, cv2.CV_32F, 1, 0, ksize=3).astype(np.float64)
    gy = cv2.Sobel(smooth32, cv2.CV_32F, 0, 1, ksize=3).astype(np.float64)
    gxx = _blocks(gx * gx).sum(axis=(2, 3))
    gyy = _blocks(gy * gy).sum(axis=(2, 3))
    gxy = _blocks(gx * gy).sum(axis=(2, 3))
    coh = np.sqrt((gxx - gyy) ** 2 + 4 * gxy**2) / np.maximum(gxx + gyy, 1e-9)

    # Ridge frequency and clarity from each block's spectrum.
    win = np.outer(np.hanning(BLOCK), np.hanning(BLOCK))
    centred = (blocks - b_mean[..., None, None]) * win
    spec = np.abs(np.fft.fft2(centred)) ** 2
    fy = np.fft.fftfreq(BLOCK)[:, None]
    fx = np.fft.fftfreq(BLOCK)[None, :]
    radius = np.hypot(fy, fx) * BLOCK  # cycles per block
    band = (radius >= BLOCK / PERIOD_MAX_PX) & (radius <= BLOCK / PERIOD_MIN_PX)
    ac = spec.reshape(rows, cols, -1)[..., 1:].sum(axis=-1)
    in_band = (spec * band).reshape(rows, cols, -1).sum(axis=-1)
    clarity = in_band / np.maximum(ac, 1e-9)
    peak = spec.reshape(rows, cols, -1).argmax(axis=-1)
    peak_r = radius.reshape(-1)[peak]
    period = BLOCK / np.maximum(peak_r, 1e-9)
    freq_ok = (period >= PERIOD_MIN_PX) & (period <= PERIOD_MAX_PX)

    n_fg = int(fg.sum())
    foreground_px = float(n_fg * BLOCK * BLOCK)
    # Grey spread of ridges vs valleys inside the foreground, 0..1 (full at ~50 grey levels).
    contrast = float(np.median(b_std[fg])) if n_fg else 0.0
    coherence = float(coh[fg].mean()) if n_fg else 0.0
    clarity_m = float(clarity[fg].mean()) if n_fg else 0.0
    freq_share = float(freq_ok[fg].mean()) if n_fg else 0.0
    # Usable area: foreground blocks whose ridges are clear, coherent and of plausible period.
    usable = fg & freq_ok & (coh > 0.5) & (clarity > 0.6)
    usable_px = float(usable.sum() * BLOCK * BLOCK)

    # Minutiae estimate: binarise against the local mean, thin, count crossing numbers away
    # from the foreground's border (where every ridge "ends").
    local = cv2.GaussianBlur(smooth32, (0, 0), 6.0)
    fg_px = _expand(fg, smooth.shape)
    inner = cv2.erode(
        _expand(usable, smooth.shape).astype(np.uint8), np.ones((17, 17), np.uint8)
    ).astype(bool)
    ridges = (smooth < local - 1.0) & fg_px
    minutiae = _minutiae(_thin(ridges), inner)

    if foreground_px < th.min_foreground_px:
        feedback.append(Feedback.SMALL_FOREGROUND)
    if minutiae < th.min_minutiae:
        feedback.append(Feedback.FEW_MINUTIAE)

    # Fixed mapping to 0..100 (docs/fingerprint.md): the usable area gates the score, the
    # ridge/valley contrast scales it, and coherence, clarity and the minutiae estimate give
    # the texture term. Too few or implausibly many minutiae (noise) cost.
    area_f = min(1.0, usable_px / max(1.0, float(th.min_foreground_px)))
    contrast_f = min(1.0, contrast / CONTRAST_FULL) ** 0.5
    coherence_f = min(1.0, max(0.0, (coherence - 0.3) / 0.5))
    clarity_f = min(1.0, max(0.0, (clarity_m - 0.4) / 0.4))
    minutiae_f = min(1.0, minutiae / 25.0) if minutiae <= 150 else 0.5
    texture = 0.4 * coherence_f + 0.4 * clarity_f + 0.2 * minutiae_f
    wet_share = _wet_share(smooth)
    score = round(100.0 * area_f * contrast_f * texture * (1.0 - wet_share))
    if image.shape[1] < MIN_SIDE or image.shape[0] < MIN_SIDE:
        score = min(score, 20)
    features = {
        "mean_grey": round(mean_grey, 2),
        "std_grey": round(std_grey, 2),
        "foreground_px": foreground_px,
        "usable_px": usable_px,
        "contrast": round(contrast, 2),
        "coherence": round(coherence, 3),
        "clarity": round(clarity_m, 3),
        "ridge_period_ok": round(freq_share, 3),
        "minutiae": float(minutiae),
        "wet_share": round(wet_share, 3),
    }
    if extraction_failure(features) is not None:
        # The sensor could not extract this image: below the extraction boundary.
        score = min(score, EXTRACTION_BOUNDARY - 1)
    return QualityReport(max(0, min(100, score)), [str(f) for f in feedback], features)
