"""Agreement between the quality gate and the emulated sensor's extraction, on synthetic fingers.

    .venv/bin/python bench/fingerprint_calibration.py [--seeds 1-8] [--fingers 10]

For every seed, finger, variant (good, smudged, low contrast, partial) and impressions 0-1,
the synthetic image is taken through the 4-bit UART path, scored (``quality.assess``) and
judged by the emulator's extractor (``quality.extraction_failure``, what Img2Tz answers).
  false_accepts   images scoring >= the default gate (40) that the extractor refuses (target 0)
  agreement       share where "score >= 40" equals "extracted"
Used to calibrate the thresholds in appliance/drivers/fingerprint/quality.py (docs/fingerprint.md,
"One scale for quality and extraction"): calibrate on seeds 1-8, check on 9-12.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit

from appliance.drivers.fingerprint.config import FingerQualityConfig
from appliance.drivers.fingerprint.quality import assess, extraction_failure
from appliance.drivers.fingerprint.synth import FingerSpec, generate

VARIANTS = ["good", "smudged", "low_contrast", "partial"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1-8", help="seed range, e.g. 1-8 or 9-12")
    ap.add_argument("--fingers", type=int, default=10)
    args = ap.parse_args()
    lo, _, hi = args.seeds.partition("-")
    seeds = range(int(lo), int(hi or lo) + 1)
    gate = FingerQualityConfig().min_quality
    per: dict[str, list[tuple[int, bool]]] = {v: [] for v in VARIANTS}
    for seed in seeds:
        for finger in range(1, args.fingers + 1):
            for variant in VARIANTS:
                for impression in (0, 1):
                    img = generate(FingerSpec(seed, finger), variant, impression)
                    wire = (img & 0xF0).astype(np.uint8)
                    report = assess(wire)
                    per[variant].append((report.score, extraction_failure(report.features) is None))
    rows = [r for v in VARIANTS for r in per[v]]
    emit(
        "fingerprint_calibration",
        {
            "seeds": args.seeds,
            "images": len(rows),
            "false_accepts": sum(1 for s, ok in rows if s >= gate and not ok),
            "agreement": round(sum(1 for s, ok in rows if (s >= gate) == ok) / len(rows), 4),
            "by_variant": {
                v: {
                    "score_min": min(s for s, _ in per[v]),
                    "score_max": max(s for s, _ in per[v]),
                    "extracted": round(sum(ok for _, ok in per[v]) / len(per[v]), 3),
                    "accepted": round(sum(s >= gate for s, _ in per[v]) / len(per[v]), 3),
                }
                for v in VARIANTS
            },
        },
    )


if __name__ == "__main__":
    main()
