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
must answer ``status`` meanwhile, and the packages must still arrive verified.

``--pull-card N`` (with ``--kills 0`` alone: bench/results/enrollment_card_pulls.json) runs the
sim kit's card stack (private pcscd + vpcd, the card emulator a child of the daemon), verifies
one enrollment, then issues cards from it as ``appliance fleet issue`` does (``card.encode``
through the controller, tests/faults/cardpull.py). The encode is timed once at the start (one
warm-up encode, then one measured with its progress steps); in each of N rounds the card is
pulled (``kill -9`` of the emulator: its vpcd connection ends) at a seeded random point, either
0-125 % of the measured duration after the send or 0-1 step-length after a random step's
progress event; the sim kit then inserts a new blank card. Counted: every encode answers
(reply time after the pull); a refusal is ``card_spoiled`` (something was written) or
``card_removed``/``card_mute``/``no_card`` and names the step; an ``issued`` reply passes
Passive Authentication, and a relying party's ``card.read`` when the card is still in the
reader (issued before the pull, or onto the re-inserted card); after each re-insert ``status``
and ``card.status`` answer and the reader is ``ok`` with a card; a last clean encode is issued
and read back; and the rig's invariants (integrity_check, no plaintext, no orphaned emulator,
nothing lost or corrupted).
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

from appliance.devtools.fleetkit import FleetKit
from tests.faults.cardpull import (
    HUNG,
    ISSUED_AFTER_LAST_APDU,
    PULL_ERRORS,
    CardPuller,
    PullOutcome,
    PullPoint,
)
from tests.faults.rig import EnrollmentFaultRig
from tests.helpers import get_json


def run(work: Path, kills: int, seed: int, keep: Path | None, drain_s: float) -> dict[str, Any]:
    rnd = random.Random(seed)
    kit = FleetKit(work / "kit").create()
    broker = kit.broker(work / "broker").start()
    rig = EnrollmentFaultRig(work, broker, kit=kit)
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
    kit = FleetKit(work / "kit-pull").create()
    broker = kit.broker(work / "broker-pull").start()
    rig = EnrollmentFaultRig(work / "pull", broker, "kiosk-enr-pull", kit=kit, external_sensor=True)
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


def run_card_pulls(work: Path, pulls: int, seed: int) -> dict[str, Any]:
    """Pull the card at a seeded random point of ``card.encode``, ``pulls`` times, on the sim
    kit's real card stack (tests/faults/cardpull.py): every encode answers; a card pulled
    before the encode finished is never reported issued; every re-insert leaves a kiosk that
    answers with a healthy reader; a clean encode at the end is issued and verified."""
    rnd = random.Random(seed)
    kit = FleetKit(work / "kit-card").create()
    broker = kit.broker(work / "broker-card").start()
    rig = EnrollmentFaultRig(work / "card", broker, "kiosk-enr-card", kit=kit, card=True)
    outcomes: list[PullOutcome] = []
    t0 = time.monotonic()
    try:
        rig.start()
        puller = CardPuller(rig)
        puller.prepare()
        # The encode's duration and steps, measured once at the start (after one warm-up
        # encode: the first loads the LDS crypto), each followed by the citizen taking the card.
        warm, _reply = puller.timeline()
        puller.pull()
        assert puller.wait_reinserted(), "no card re-inserted after the warm-up encode"
        line, calib = puller.timeline()
        calibration_verified = bool(calib.get("ok")) and puller.read_back()
        puller.pull()
        assert puller.wait_reinserted(), "no card re-inserted after the calibration encode"
        durations = line.step_durations()
        step_names = [name for name, _t in line.steps]
        for k in range(pulls):
            if rnd.random() < 0.5:
                # anywhere from the send to a quarter past the measured end of the encode
                point = PullPoint(None, rnd.uniform(0, line.total_s * 1.25))
            else:
                step = rnd.choice(step_names)
                point = PullPoint(step, rnd.uniform(0, durations[step]))
            out = puller.encode_with_pull(point)
            outcomes.append(out)
            print(
                f"{k + 1}/{pulls} {point}: {out.outcome}"
                + (f" at {out.step} ({out.cause})" if out.step else ""),
                flush=True,
            )
        # One clean encode onto a fresh blank card, verified by a relying party's read.
        _final_line, final = puller.timeline()
        final_ok = bool(
            final.get("ok")
            and final["result"].get("outcome") == "issued"
            and final["result"]["passive_authentication"]["passed"] is True
        )
        final_readback = puller.read_back()
        report = rig.check()
    finally:
        rig.close()
        broker.stop()
    report.pop("stuck_uploads")
    before = [o for o in outcomes if o.pulled_before_reply]
    refused = [o for o in outcomes if not o.issued and o.outcome != HUNG]
    # An issued card must pass Passive Authentication on the kiosk's own read-back, and, when
    # it is still in the reader, on a relying party's card.read too.
    issued_wrongly = [
        o
        for o in outcomes
        if o.issued
        and not (o.reply_pa_passed and (o.readback_passed or o.outcome == ISSUED_AFTER_LAST_APDU))
    ]
    unexpected_errors = [o for o in refused if o.outcome not in PULL_ERRORS]
    report.update(
        {
            "pulls": pulls,
            "seed": seed,
            "encode_measured_s": round(line.total_s, 4),
            "encode_steps_measured_s": {n: round(t, 4) for n, t in line.steps},
            "warm_up_encode_s": round(warm.total_s, 4),
            "calibration_encode_issued_and_verified": calibration_verified,
            "rounds": [
                {
                    "point": str(o.point),
                    "outcome": o.outcome,
                    "step": o.step,
                    "cause": o.cause,
                    "reply_after_pull_s": o.reply_after_pull_s,
                }
                for o in outcomes
            ],
            "outcomes": dict(Counter(o.outcome for o in outcomes)),
            "pulled_before_the_reply": len(before),
            "refused_by_step": dict(Counter(str(o.step) for o in refused)),
            "refused_by_cause": dict(Counter(str(o.cause) for o in refused)),
            "refused_naming_the_step": sum(1 for o in refused if o.names_step),
            "refused_with_other_codes": [o.outcome for o in unexpected_errors],
            "hung": sum(1 for o in outcomes if o.outcome == HUNG),
            "reply_after_pull_s_max": max(
                (o.reply_after_pull_s for o in before if o.reply_after_pull_s is not None),
                default=None,
            ),
            "issued_readback_passed": sum(1 for o in outcomes if o.readback_passed),
            "issued_wrongly": len(issued_wrongly),
            "reinserted": sum(1 for o in outcomes if o.reinserted),
            "status_answered_after_reinsert": sum(1 for o in outcomes if o.status_ok),
            "card_status_answered_after_reinsert": sum(1 for o in outcomes if o.card_status_ok),
            "reader_health_ok_after_reinsert": sum(1 for o in outcomes if o.health_ok),
            "final_clean_encode_issued": final_ok,
            "final_clean_encode_readback_passed": final_readback,
            "duration_s": round(time.monotonic() - t0, 1),
        }
    )
    report["all_invariants_hold"] = bool(
        report["hung"] == 0
        and report["issued_wrongly"] == 0
        and report["refused_naming_the_step"] == len(refused)
        and not unexpected_errors
        and report["reinserted"] == pulls
        and report["status_answered_after_reinsert"] == pulls
        and report["card_status_answered_after_reinsert"] == pulls
        and report["reader_health_ok_after_reinsert"] == pulls
        and final_ok
        and final_readback
        and report["integrity_check"] == "ok"
        and not report["plaintext_files"]
        and report["orphaned_emulators"] == 0
        and report["lost"] == 0
        and report["corrupted"] == 0
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
    ap.add_argument(
        "--pull-card",
        type=int,
        default=0,
        help="then pull the card at a random point of this many card.encode (default 0)",
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
        if args.pull_card:
            cards = run_card_pulls(Path(tmp), args.pull_card, args.seed)
            result["card_pulls"] = cards
            ok = ok and cards["all_invariants_hold"]
    name = "enrollment_faults"
    if not args.kills:
        name = "enrollment_card_pulls" if args.pull_card else "enrollment_sensor_pulls"
    emit(name, result)
    print(json.dumps({"done": True, "all_invariants_hold": ok}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
