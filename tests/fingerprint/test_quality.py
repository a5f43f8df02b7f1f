"""Quality approximation on emulator images: ranking, feedback, thresholds, bad input."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from appliance.drivers.fingerprint import quality, synth
from appliance.drivers.fingerprint.config import FingerQualityConfig
from appliance.drivers.fingerprint.device import FingerprintSensor
from appliance.drivers.fingerprint.emulator import FingerprintEmulator
from appliance.drivers.fingerprint.frames import pack_image, unpack_image
from appliance.errors import DeviceStatusError

from .conftest import Events

ORDER = ["good", "smudged", "low_contrast", "partial", "no_finger"]


def wire_image(seed: int, finger: int, variant: str) -> np.ndarray:
    """What the driver receives: the synthetic image through the 4-bit UART path."""
    return unpack_image(pack_image(synth.generate(synth.FingerSpec(seed, finger), variant)))


@pytest.mark.parametrize("seed", [1, 2])
def test_scores_rank_good_first_partial_and_empty_last(seed: int) -> None:
    fingers = range(1, 6)
    scores = {v: [quality.assess(wire_image(seed, f, v)).score for f in fingers] for v in ORDER}
    means = {v: float(np.mean(scores[v])) for v in ORDER}
    # Smudged and low-contrast fingers rank by how much of them the sensor can extract, so
    # either may come second; good is first and partial and empty last, finger by finger.
    for i in range(len(fingers)):
        good, smudged, low, partial, empty = (scores[v][i] for v in ORDER)
        assert good > max(smudged, low) and min(smudged, low) > partial > empty == 0, scores
    assert means["good"] - means["no_finger"] > 60, scores
    assert min(scores["good"]) >= 40  # a good finger passes the usual NFIQ 2 threshold
    assert max(scores["partial"]) < 40


def test_empty_platen_gives_nfiq2_feedback() -> None:
    r = quality.assess(wire_image(1, 1, "no_finger"))
    assert r.score == 0
    assert set(r.feedback) == {
        "EmptyImageOrContrastTooLow",
        "UniformImage",
        "FingerprintImageWithMinutiae",
        "SufficientFingerprintForeground",
    }


def test_partial_finger_asks_for_more_foreground_only() -> None:
    r = quality.assess(wire_image(1, 2, "partial"))
    assert "SufficientFingerprintForeground" in r.feedback
    assert "EmptyImageOrContrastTooLow" not in r.feedback
    assert r.features["foreground_px"] < 50_000


def test_good_finger_has_no_feedback_and_plausible_features() -> None:
    r = quality.assess(wire_image(1, 3, "good"))
    assert r.feedback == []
    assert r.features["foreground_px"] >= 50_000
    assert 5 <= r.features["minutiae"] <= 150
    assert r.features["coherence"] > 0.6
    assert r.to_dict()["score"] == r.score


def test_thresholds_come_from_configuration() -> None:
    img = wire_image(1, 3, "good")
    strict = FingerQualityConfig(min_foreground_px=70_000, min_minutiae=500)
    r = quality.assess(img, strict)
    assert "SufficientFingerprintForeground" in r.feedback
    assert "FingerprintImageWithMinutiae" in r.feedback
    lenient = FingerQualityConfig(empty_mean_grey=100.0)
    assert "EmptyImageOrContrastTooLow" in quality.assess(img, lenient).feedback


@pytest.mark.parametrize(
    "bad",
    [np.zeros((288, 256), dtype=np.float32), np.zeros((10, 10), dtype=np.uint8), np.zeros(5)],
)
def test_bad_images_are_refused_clearly(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        quality.assess(bad)


def test_synthetic_fingers_are_reproducible_and_distinct() -> None:
    a = synth.generate(synth.FingerSpec(1, 1))
    assert np.array_equal(a, synth.generate(synth.FingerSpec(1, 1)))
    assert not np.array_equal(a, synth.generate(synth.FingerSpec(1, 2)))
    assert not np.array_equal(a, synth.generate(synth.FingerSpec(2, 1)))
    assert not np.array_equal(a, synth.generate(synth.FingerSpec(1, 1), impression=1))
    _, minutiae = synth.ridge_phase(synth.FingerSpec(1, 1))
    assert 35 <= len(minutiae) < 55


def test_one_scale_the_gate_accepts_what_the_sensor_extracts(
    make_emulator: Callable[..., FingerprintEmulator],
    make_sensor: Callable[..., tuple[FingerprintSensor, Events]],
) -> None:
    """Through the protocol: capture, upload and score, then Img2Tz the same capture. At the
    default gate (40) an accepted finger is extracted and a refused one is not."""
    emu = make_emulator("r307", seed=3)
    dev, _ = make_sensor(emu.path)
    gate = FingerQualityConfig().min_quality
    seen = {True: 0, False: 0}
    for finger in range(1, 11):
        for variant in ORDER[:4]:
            emu.present_finger(finger, variant, captures=1)
            assert dev.gen_img()
            score = quality.assess(dev.up_image()).score
            try:
                dev.img2tz(1)
                extracted = True
            except DeviceStatusError as err:
                assert err.status in (0x06, 0x07)
                extracted = False
            assert (score >= gate) == extracted, (finger, variant, score)
            seen[extracted] += 1
    assert seen[True] >= 10 and seen[False] >= 10  # both sides of the boundary were tried
