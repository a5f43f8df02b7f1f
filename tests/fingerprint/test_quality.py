"""Quality approximation on emulator images: ranking, feedback, thresholds, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.drivers.fingerprint import quality, synth
from appliance.drivers.fingerprint.config import FingerQualityConfig
from appliance.drivers.fingerprint.frames import pack_image, unpack_image

ORDER = ["good", "smudged", "low_contrast", "partial", "no_finger"]


def wire_image(seed: int, finger: int, variant: str) -> np.ndarray:
    """What the driver receives: the synthetic image through the 4-bit UART path."""
    return unpack_image(pack_image(synth.generate(synth.FingerSpec(seed, finger), variant)))


@pytest.mark.parametrize("seed", [1, 2])
def test_scores_rank_good_smudged_low_contrast_partial_empty(seed: int) -> None:
    fingers = range(1, 6)
    scores = {v: [quality.assess(wire_image(seed, f, v)).score for f in fingers] for v in ORDER}
    means = [float(np.mean(scores[v])) for v in ORDER]
    assert means == sorted(means, reverse=True), scores
    assert means[0] - means[-1] > 60, scores
    # Finger by finger as well, not only on average.
    for i in range(len(fingers)):
        column = [scores[v][i] for v in ORDER]
        assert column == sorted(column, reverse=True) and len(set(column)) == 5, scores
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
