"""Capture-to-score latency, excluding the line time, on one core.

    .venv/bin/python bench/fingerprint_latency.py [--captures 30]

The emulator (unpaced, real pty) serves good, smudged, low-contrast and partial fingers in
turn. Each capture runs the production path of ``fingerprint.capture``: GenImg polling and
UpImage over the pty, then, from the moment the last data byte arrived: 4-bit unpacking,
quality assessment, and the ISO/IEC 19794-4 record (PNG) put in the record store.
  baseline   unpacking plus PNG-encoding the same image (what any record path pays anyway;
             a machine-speed yardstick)
  latency    last byte received -> score computed and record stored
ratio = latency / baseline. Target (issue 3): latency <= 50 ms (judged on p99). One warm-up
capture is not counted.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, pct, summary_ms
from PIL import Image

from appliance.biometrics.finger_record import (
    Compression,
    FingerRecord,
    FingerView,
    encode,
)
from appliance.drivers.fingerprint.config import FingerprintConfig
from appliance.drivers.fingerprint.device import FingerprintSensor
from appliance.drivers.fingerprint.emulator import FingerprintEmulator
from appliance.drivers.fingerprint.frames import pack_image, unpack_image
from appliance.drivers.fingerprint.quality import assess

VARIANTS = ["good", "smudged", "low_contrast", "partial"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captures", type=int, default=30)
    ap.add_argument("--cpu", type=int, default=0, help="CPU to pin to (-1: no pinning)")
    args = ap.parse_args()
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    import cv2

    cv2.setNumThreads(1)
    emu = FingerprintEmulator("r307", pace=False)
    path = emu.start_pty()
    dev = FingerprintSensor(FingerprintConfig(port=path, health_probe_s=0, capture_poll_s=0), None)
    dev.start()
    latency: list[float] = []
    baseline: list[float] = []
    wire: list[float] = []
    scores: dict[str, list[int]] = {v: [] for v in VARIANTS}
    try:
        # One warm-up capture (first-call allocations, lazy imports) is not counted.
        emu.present_finger(1, "good")
        warm = dev.capture(time.monotonic() + 10)
        assess(warm.image, dev.config.quality)
        for i in range(args.captures):
            variant = VARIANTS[i % len(VARIANTS)]
            emu.present_finger(i % 10 + 1, variant)
            deadline = time.monotonic() + 10
            cap = dev.capture(deadline)
            report = assess(cap.image, dev.config.quality)
            data = encode(FingerRecord([FingerView(cap.image, 1, report.score)], Compression.PNG))
            dev.records.put(data, position=1, quality=report.score, compression="png")
            latency.append(time.monotonic() - cap.received_at)
            wire.append(cap.wire_s)
            scores[variant].append(report.score)
            # Yardstick on the same image: unpack from wire form + PNG encode only.
            packed = pack_image(cap.image)
            t0 = time.monotonic()
            img = unpack_image(packed)
            Image.fromarray(img).save(io.BytesIO(), format="PNG", compress_level=3)
            baseline.append(time.monotonic() - t0)
    finally:
        dev.stop()
        emu.stop()
    lat = summary_ms(latency)
    base = summary_ms(baseline)
    emit(
        "fingerprint_latency",
        {
            "captures": args.captures,
            "latency": lat,
            "baseline": base,
            "ratio_p50": round(lat["p50_ms"] / base["p50_ms"], 2),
            "unpaced_wire": summary_ms(wire),
            "target_ms": 50,
            "latency_p95_ms": round(pct(latency, 95) * 1000, 3),
            "met": lat["p99_ms"] <= 50,
            "mean_score": {v: round(sum(s) / len(s), 1) for v, s in scores.items() if s},
        },
    )


if __name__ == "__main__":
    main()
