"""End-to-end time of the enrollment demo at real line rates.

    .venv/bin/python bench/enrollment_demo.py [--policy 4-4-2] [--no-issue]

The daemon on the simulated kit with ``[simulation] line_rate = true``: the fingerprint
emulator paces every byte at the sensor's 57,600 baud like a real UART, so each finger's
UpImage (a 256 x 288 4-bit image: 40,044 bytes on the wire for the R307 profile) takes
~6.95 s. ``appliance fleet enroll --issue`` then runs the whole demo: portrait, the fingers,
review, finish, upload to the receiver, verification, receipt, purge, and a card built from
the verified portrait, encoded through pcscd + vpcd, read back and passively authenticated.

  e2e        wall time of the whole command
  baseline   the serial line floor of this run's captures: 40,044 bytes per UpImage
             (docs/performance.md) x 10 bits / 57,600 baud x the fingers
             captured (computed, not timed: nothing can be faster on this line)
ratio = e2e / baseline; the rest is the citizen's simulated waits, the camera, the centre and
the card. There is no target for this figure in issue 7 beyond "minutes"; it is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit
from enrollment_kit import enroll_args, start_kit

from appliance.central import enrollcli

UPIMAGE_WIRE_BYTES = 40_044  # R307: 12-byte ack + 288 packets of 128 data bytes (+ 11 each)
BAUD = 57_600


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="4-4-2", help="finger policy (default 4-4-2)")
    ap.add_argument("--no-issue", action="store_true", help="skip the card issuance")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    kit = start_kit(work, line_rate=True, card=not args.no_issue)
    try:
        p = argparse.ArgumentParser()
        enrollcli.configure_parser(p)
        extra = ["--policy", args.policy, "--attempts", "1", "--json"]
        if not args.no_issue:
            extra += ["--issue", "--synthetic", "--ds-dir", str(kit.state / "sim" / "pki")]
        ns = p.parse_args(enroll_args(kit, "CIT-DEMO", *extra))
        out = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(out):
            rc = enrollcli.run(ns)
        e2e = time.perf_counter() - t0
    finally:
        kit.close()
    if rc != 0:
        raise SystemExit(f"the demo failed ({rc}): {out.getvalue()[-2000:]}")
    report = json.loads(out.getvalue())
    fingers = [s for s in report["steps"] if s["name"].startswith("finger") and s["quality"]]
    floor = len(fingers) * UPIMAGE_WIRE_BYTES * 10 / BAUD
    steps = {s["name"]: round(s["seconds"], 2) for s in report["steps"]}
    emit(
        "enrollment_demo",
        {
            "policy": args.policy,
            "fingers_captured": len(fingers),
            "e2e_s": round(e2e, 2),
            "baseline_line_floor_s": round(floor, 2),
            "ratio": round(e2e / floor, 3) if floor else None,
            "steps_s": steps,
            "issued": (report.get("issue") or {}).get("outcome"),
            "card_encode_s": round((report.get("issue") or {}).get("seconds", 0.0), 2),
        },
    )


if __name__ == "__main__":
    main()
