"""Synthetic fingerprint images for the emulator, reproducible from a seed.

Ridges follow the AM-FM model of a fingerprint (Larkin and Fletcher, "A coherent framework for
fingerprint analysis", 2007): the grey level is ``cos(psi)`` of a phase field ``psi`` made of a
smooth part (the ridge flow of an arch, loop or whorl, warped by low-frequency noise) plus one
spiral term ``+-atan2(y - yi, x - xi)`` per minutia. A spiral of winding number one adds or
ends one ridge at its centre, so every such point is a true ridge ending or bifurcation, and
the ``2 pi`` jumps of ``atan2`` vanish under the cosine.

Variants reproduce what a kiosk sees: ``good``, ``low_contrast`` (dry finger, light touch),
``smudged`` (wet finger or dirty platen: ridges smeared and merged in patches), ``partial``
(finger at the edge of the window) and ``no_finger`` (empty platen).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from .frames import IMAGE_HEIGHT, IMAGE_WIDTH

Image = npt.NDArray[np.uint8]
# Mean ridge period at 500 ppi is about 9 px (ridge frequency ~ 0.11 / px).
RIDGE_PERIOD_PX = 9.0
# Grey of the empty platen on an optical sensor (valleys and background are light).
BACKGROUND = 246.0


class Variant(enum.StrEnum):
    GOOD = "good"
    LOW_CONTRAST = "low_contrast"
    SMUDGED = "smudged"
    PARTIAL = "partial"
    NO_FINGER = "no_finger"


@dataclass(frozen=True)
class FingerSpec:
    """Identity of a synthetic finger: the same ``finger_id`` and seed give the same ridges."""

    seed: int
    finger_id: int


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], scale: float, sigma: float
) -> npt.NDArray[np.float64]:
    """Gaussian-filtered white noise rescaled to unit standard deviation, times ``scale``."""
    noise = rng.standard_normal(shape)
    smooth = cv2.GaussianBlur(noise, (0, 0), sigma)
    std = float(smooth.std()) or 1.0
    return np.asarray(smooth / std * scale, dtype=np.float64)


def ridge_phase(
    spec: FingerSpec, width: int = IMAGE_WIDTH, height: int = IMAGE_HEIGHT
) -> tuple[npt.NDArray[np.float64], list[tuple[float, float]]]:
    """Phase field of one finger and the positions of its minutiae."""
    rng = np.random.default_rng([spec.seed, spec.finger_id, 0x46505249])
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    cx = width / 2 + rng.uniform(-20, 20)
    cy = height * 0.45 + rng.uniform(-25, 25)
    freq = 2 * np.pi / (RIDGE_PERIOD_PX * rng.uniform(0.9, 1.1))
    kind = rng.integers(0, 3)  # 0 arch, 1 loop, 2 whorl
    # Elliptic distance from the core: concentric ridges (whorl).
    r = np.hypot(x - cx, (y - cy) * 0.8)
    # Arch: horizontal ridges bulging over the core.
    arch = (y - cy) + 60.0 * np.exp(-((x - cx) ** 2) / (2 * 45.0**2))
    if kind == 0:
        flow = arch
    elif kind == 1:
        # Loop: whorl-like ridges above the core bending into arches below and to one side.
        w = 1.0 / (1.0 + np.exp(-(y - cy) / 18.0))
        flow = (1 - w) * r + w * (arch + 8.0)
    else:
        flow = r
    warp = _smooth_noise(rng, (height, width), 4.0, 18.0)
    psi = freq * (flow + warp)
    minutiae: list[tuple[float, float]] = []
    n_min = int(rng.integers(35, 55))
    for _ in range(n_min):
        mx = rng.uniform(width * 0.12, width * 0.88)
        my = rng.uniform(height * 0.1, height * 0.9)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        psi += sign * np.arctan2(y - my, x - mx)
        minutiae.append((mx, my))
    return psi, minutiae


def _finger_mask(
    rng: np.random.Generator, width: int, height: int, variant: Variant
) -> npt.NDArray[np.float64]:
    """Soft-edged contact area of the finger (1 inside, 0 outside)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    if variant is Variant.PARTIAL:
        # The finger touches the window's corner: a small part of the pad shows.
        cx = rng.choice([-0.05, 1.05]) * width
        cy = rng.uniform(0.75, 0.95) * height
        ax, ay = width * 0.5, height * 0.38
    else:
        cx = width / 2 + rng.uniform(-8, 8)
        cy = height / 2 + rng.uniform(-8, 8)
        ax, ay = width * 0.47, height * 0.5
    d = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2
    # Edge noise so the outline is not a perfect ellipse.
    d = d + _smooth_noise(rng, (height, width), 0.06, 10.0)
    return np.asarray(np.clip((1.0 - d) / 0.08, 0.0, 1.0), dtype=np.float64)


def generate(
    spec: FingerSpec,
    variant: Variant | str = Variant.GOOD,
    impression: int = 0,
    width: int = IMAGE_WIDTH,
    height: int = IMAGE_HEIGHT,
) -> Image:
    """One 8-bit grey image (``height`` rows x ``width`` columns) of the finger ``spec``.

    ``impression`` varies the placement noise between captures of the same finger.
    """
    variant = Variant(variant)
    rng = np.random.default_rng([spec.seed, spec.finger_id, impression, 0x494D47])
    noise = rng.standard_normal((height, width)) * 3.0
    if variant is Variant.NO_FINGER:
        # Empty platen: bright, flat, faint sensor noise.
        return np.clip(BACKGROUND + 6.0 + noise * 0.5, 0, 255).astype(np.uint8)
    psi, _ = ridge_phase(spec, width, height)
    # Shift the phase a little per impression (the finger never lands twice the same way).
    psi = psi + rng.uniform(0, 2 * np.pi)
    ridges = 0.5 + 0.5 * np.cos(psi)  # 1 on ridges, 0 in valleys
    mask = _finger_mask(rng, width, height, variant)
    pressure = 0.85 + _smooth_noise(rng, (height, width), 0.08, 30.0)
    depth = 190.0  # ridge darkness below the background for a well-pressed finger
    if variant is Variant.LOW_CONTRAST:
        depth = 34.0
    img = BACKGROUND - depth * pressure * ridges * mask
    if variant is Variant.SMUDGED:
        # Wet patches: ridges smeared into dark blotches where moisture bridges the valleys.
        blot = np.clip(_smooth_noise(rng, (height, width), 1.0, 22.0) - 0.1, 0.0, 1.0) * mask
        smeared = cv2.GaussianBlur(img, (0, 0), 4.0)
        wet = BACKGROUND - 150.0 * mask
        img = img * (1 - blot) + (0.5 * smeared + 0.5 * wet) * blot
    img = img + noise * (0.6 + mask)
    return np.clip(img, 0, 255).astype(np.uint8)


def char_file_seed(spec: FingerSpec) -> bytes:
    """A stable 32-byte digest of a finger's identity, used by the emulator's Img2Tz."""
    rng = np.random.default_rng([spec.seed, spec.finger_id, 0x434846])
    return bytes(rng.integers(0, 256, 32, dtype=np.uint8).tolist())
