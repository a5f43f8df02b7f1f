"""Fault injection on the enrollment flow, the long loop (issue 8 item 2, enrollment part):

the daemon on the simulated kit (fingerprint emulator on a pty, generated camera scene) and the
REAL central receiver (appliance.central.receiver with its package store) on a private
mosquitto; scripted enrollments (start, portrait, fingers 2 and 7, finish) through the
controller; ``kill -9`` of the daemon at a seeded random point of a capture, of
``enrollment.finish`` or of the upload, N times, each followed by a restart that resumes the
session or the upload. After the run:

* every package the kiosk reported finished (finish replies, ``enrollment.finished`` events,
  and the kiosk's own upload table) is verified exactly once at the centre: lost = 0,
  duplicated (a citizen's session turned into two packages) = 0, corrupted (refused by the
  centre's verification) = 0;
* ``PRAGMA integrity_check`` ok on the kiosk's SQLite; every upload purged; no sealed record
  and no package left on the kiosk after the receipts;
* no plaintext biometrics in the state directory and the temporary directory
  (scan_for_plaintext_biometrics).

    .venv/bin/python bench/enrollment_faults.py [--kills 100] [--seed 8]

The fault points are drawn from a seeded generator, so the sequence of (phase, delay) repeats
with the same seed (timings differ, so the byte-level interleavings do not). Writes
bench/results/enrollment_faults.json.

``--pull-sensor N`` (with ``--kills 0`` alone: bench/results/enrollment_sensor_pulls.json)
runs the fingerprint emulator in this process behind a stable link, unplugs it at a random
point of N enrollment captures and replugs it: every capture must get an answer, the daemon
must answer ``status`` meanwhile, and the packages must still arrive verified. Pulling the card
at random points (``--pull-card``) is NOT implemented here; tests/faults has one card pull
during ``card.encode``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import ROOT, emit

sys.path.insert(0, str(ROOT))

from appliance.devtools.broker import Mosquitto
from tests.faults.rig import EnrollmentFaultRig
from tests.helpers import get_json


def run(work: Path, kills: int, seed: int, keep: Path | None, drain_s: float) -> dict[str, Any]:
    rnd = random.Random(seed)
    broker = Mosquitto(work / "broker").start()
    rig = EnrollmentFaultRig(work, broker)
    t0 = time.monotonic()
    try:
        rig.start()
        for k in range(kills):
            hit = rig.round_with_kill(rnd)
            if (k + 1) % 10 == 0:
                print(f"{k + 1}/{kills} kills ({hit}), {time.monotonic() - t0:.0f} s", flush=True)
        drained = True
        try:
            rig.settle(timeout=drain_s)
        except AssertionError:  # a package that never gets its receipt: counted by check()
            drained = False
        after = rig.drive()  # one clean enrollment after the storm: the kiosk still serves
        try:
            rig.settle(timeout=drain_s)
        except AssertionError:
            drained = False
        report = rig.check()
        report["drained_within_s"] = drain_s if drained else None
        report["clean_enrollment_after_the_run"] = after is not None
    finally:
        if keep is not None and rig.daemon.log_path.exists():
            keep.mkdir(parents=True, exist_ok=True)
            (keep / "daemon.log").write_bytes(rig.daemon.log_path.read_bytes())
        rig.close()
        broker.stop()
    report["duration_s"] = round(time.monotonic() - t0, 1)
    report["seed"] = seed
    keys = ("lost", "duplicated", "unexpected_at_central", "corrupted", "uploads_not_purged")
    report["stuck_upload_states"] = dict(Counter(s for _p, s in report.pop("stuck_uploads")))
    report["all_invariants_hold"] = (
        all(report[k] == 0 for k in keys)
        and report["integrity_check"] == "ok"
        and not report["sealed_left"]
        and not report["outgoing_left"]
        and not report["plaintext_files"]
        and report["sessions_left_active"] == 0
    )
    return report


def run_sensor_pulls(work: Path, pulls: int, seed: int) -> dict[str, Any]:
    """Unplug the serial sensor at a random point of an enrollment capture, ``pulls`` times:
    every capture gets an answer (ok if it finished first, else a clear error), the daemon
    answers ``status`` while the sensor is away and reports the health change, and the
    sessions end as verified packages after the replugs."""
    rnd = random.Random(seed)
    broker = Mosquitto(work / "broker-pull").start()
    rig = EnrollmentFaultRig(work / "pull", broker, "kiosk-enr-pull", external_sensor=True)
    sensor = rig.sensor
    assert sensor is not None
    outcomes: Counter[str] = Counter()
    reply_after_pull_s: list[float] = []
    health_noticed = status_answered = 0
    t0 = time.monotonic()
    try:
        rig.start()
        dev = rig.device
        health = rig.ctl.subscribe(f"kiosk/{dev}/events/device.health")
        progress = rig.ctl.subscribe(f"kiosk/{dev}/events/command.progress")
        n = 0
        for _ in range(pulls):
            review = rig.ctl.request(dev, "enrollment.review")
            if not review["ok"]:
                n += 1
                rig.ctl.request(
                    dev, "enrollment.start", {"citizen_ref": f"CIT-P-{n}", "finger_policy": [2, 7]}
                )
                rig.ctl.request(dev, "enrollment.portrait", {"timeout_s": 20}, timeout=60)
                review = rig.ctl.request(dev, "enrollment.review")
            remaining = review["result"]["remaining"]
            if not remaining:
                rig.ctl.request(dev, "enrollment.finish", timeout=60)
                continue
            replies = rig.ctl.send(
                dev, "enrollment.finger", {"position": remaining[0], "attempts": 1}
            )
            get_json(progress, 30, lambda m: m["data"]["step"] == "waiting_for_finger")
            # A random point of the capture: GenImg polling, then ~6 s of paced UpImage.
            time.sleep(rnd.uniform(0, 6.0))
            sensor.unplug()
            t_pull = time.monotonic()
            reply = replies.get(timeout=120)
            reply_after_pull_s.append(round(time.monotonic() - t_pull, 2))
            outcomes["ok" if reply["ok"] else reply["error"]["code"]] += 1
            try:
                get_json(
                    health,
                    20,
                    lambda m: m["data"]["device"] == "fingerprint" and m["data"]["state"] != "ok",
                )
                health_noticed += 1
            except AssertionError:
                pass
            st = rig.ctl.request(dev, "status", timeout=10)
            status_answered += bool(st.get("ok"))
            sensor.replug()
            get_json(
                health,
                30,
                lambda m: m["data"]["device"] == "fingerprint" and m["data"]["state"] == "ok",
            )
        drained = True
        try:
            rig.settle(timeout=90)
        except AssertionError:
            drained = False
        report = rig.check()
        report["drained"] = drained
    finally:
        rig.close()
        broker.stop()
    report.pop("stuck_uploads")
    report.update(
        {
            "pulls": pulls,
            "capture_outcomes": dict(outcomes),
            "reply_after_pull_s_max": max(reply_after_pull_s, default=None),
            "health_change_reported": health_noticed,
            "status_answered_while_unplugged": status_answered,
            "duration_s": round(time.monotonic() - t0, 1),
        }
    )
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--kills", type=int, default=100, help="kill -9 of the daemon (default 100)")
    ap.add_argument("--seed", type=int, default=8, help="seed of the fault points (default 8)")
    ap.add_argument(
        "--keep-log",
        type=Path,
        default=None,
        help="copy the daemon's log here at the end (default: not kept)",
    )
    ap.add_argument(
        "--drain-s",
        type=float,
        default=90.0,
        help="how long the uploads may take to drain after the last kill (default 90)",
    )
    ap.add_argument(
        "--pull-sensor",
        type=int,
        default=0,
        help="then unplug/replug the serial sensor during this many captures (default 0)",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result: dict[str, Any] = {}
        ok = True
        if args.kills:
            result = run(Path(tmp), args.kills, args.seed, args.keep_log, args.drain_s)
            ok = result["all_invariants_hold"]
        if args.pull_sensor:
            pulls = run_sensor_pulls(Path(tmp), args.pull_sensor, args.seed)
            result["sensor_pulls"] = pulls
            ok = ok and pulls["lost"] == 0 and pulls["corrupted"] == 0
            ok = ok and pulls["status_answered_while_unplugged"] == args.pull_sensor
    name = "enrollment_faults" if args.kills else "enrollment_sensor_pulls"
    emit(name, result)
    print(json.dumps({"done": True, "all_invariants_hold": ok}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
