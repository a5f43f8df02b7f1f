"""Duplicates after a crash (issue 12 point 8): ``kill -9`` of the daemon N times under event
load, for each delivery mode, and how many events arrive twice per crash against the in-flight
window (``mqtt.max_inflight``), which bounds them.

The daemon runs provisioned (fleet root, signed commands only, device-signed events) against a
real mosquitto; a local producer writes events into its SQLite outbox the whole time (10 per
transaction, as a kiosk UI would, also while the daemon is dead); a real ingest
(``appliance.fleet.ingest.Ingest``, persistent MQTT 5 session) records every copy that arrives
and, for ``end_to_end``, acknowledges what it stored, signed with an ``ingest`` certificate.
Each round starts the daemon, waits for its birth, sends a burst of signed ``note`` commands,
and kills it at a random point 50-400 ms later. After the last kill the daemon is started once
more and everything stored must arrive.

Reported per mode: events stored, copies received, duplicates (copies of an id already seen),
duplicates per crash (mean and max, attributed to the restart after which they arrived) and their
ratio to the window (the bound is 1.0), lost (must be 0), seq gaps; for the commands: the
answers that came after the kill of the life a command was sent to (the broker delivered it
again): ``replayed``, the stored first reply, or a first run (it was still queued), and how
many ran twice (must be 0).

    .venv/bin/python bench/fleet_kill_loop.py [--kills 30] [--window 200] [--seed 12]
        [--delivery broker end_to_end] [--ack-interval 0.2] [--out fleet_kill_loop]

Writes bench/results/<out>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import ROOT, emit

sys.path.insert(0, str(ROOT))

import itertools

from appliance.devtools.broker import Mosquitto
from appliance.devtools.controller import Controller
from appliance.fleet.ingest import Ingest
from appliance.store import Store
from appliance.trust.certs import ROOT_PUB_FILE, FleetRoot
from appliance.trust.envelope import EnvelopeBuilder
from tests.fleet.faults import Producer
from tests.helpers import DaemonProcess, wait_for
from tests.trust.fleet import live_key


class MarkingIngest(Ingest):
    """An ingest that notes its duplicate count when a birth arrives. The broker forwards one
    publisher's messages to a subscriber in order (mosquitto keeps one queue per session), so a
    kiosk's birth separates what one life of the daemon sent from what the next one sent: the
    duplicates that arrive between birth k+1 and birth k+2 are the re-sends caused by crash k,
    whatever the delays on the way."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.dups_at_birth: list[int] = []

    def _record(
        self, now: float, device: str, kind: str, obj: dict[str, Any], retained: bool
    ) -> None:
        super()._record(now, device, kind, obj, retained)
        if kind == "status" and not retained and obj.get("online") is True:
            self.dups_at_birth.append(self.stats.duplicates)


def run_mode(
    work: Path,
    broker: Mosquitto,
    delivery: str,
    kills: int,
    window: int,
    rnd: random.Random,
    ack_interval_s: float,
) -> dict[str, Any]:
    dev = f"kiosk-kill-{delivery.replace('_', '')}"
    root = FleetRoot.create(work / f"fleet-{delivery}")
    e2e = delivery == "end_to_end"
    ingest = MarkingIngest(
        broker.host,
        broker.port,
        client_id=f"killloop-{delivery}",
        keep_payloads=True,
        ack=e2e,
        ack_key=live_key(root, ("ingest",), dev) if e2e else None,
    )
    if ingest.acker is not None:
        ingest.acker.interval_s = ack_interval_s  # how far the ingest's acknowledgements lag
    ingest.start()
    ctl = Controller(broker.host, broker.port).connect()
    builder = EnvelopeBuilder(live_key(root, ("technician",), dev), lifetime_s=3600)
    d = DaemonProcess(
        work / f"daemon-{delivery}",
        broker,
        dev,
        extra_toml="[commands]\nallow_unsigned = false\n"
        f'[trust]\nroot_keys = ["{work / f"fleet-{delivery}" / ROOT_PUB_FILE}"]\n',
        env={"APPLIANCE_MQTT__DELIVERY": delivery, "APPLIANCE_MQTT__MAX_INFLIGHT": str(window)},
    )
    # The store must exist (schema) before the producer opens it: one start, then the loop.
    d.start()
    wait_for(lambda: dev in ingest.snapshot().devices_seen, 30, "the first birth")
    producer = Producer(d.state_dir, dev).start()
    replies: dict[str, queue.Queue[dict[str, Any]]] = {}
    killed_at: dict[int, float] = {}
    in_life: dict[str, int] = {}  # command id -> answers received before its life's kill

    def life_cids(k: int) -> list[str]:
        return [c for c in replies if c.startswith(f"{delivery}-k{k}-")]

    texts: dict[str, str] = {}
    t0 = time.monotonic()
    try:
        for k in range(kills + 1):
            if k:  # the first start is above
                births = len(ingest.snapshot().births)
                d.start()
                wait_for(lambda b=births: len(ingest.snapshot().births) > b, 30, "the birth")
            if k == kills:
                break
            for j in range(rnd.randint(5, 20)):
                cid = f"{delivery}-k{k}-{j}"
                texts[cid] = f"note {k}/{j}"
                req = json.dumps({"id": cid, "cmd": "note", "args": {"text": texts[cid]}})
                replies[cid] = ctl.send(
                    dev, "note", cid=cid, raw=builder.build("note", req.encode(), dev)
                )
            time.sleep(rnd.uniform(0.05, 0.4))  # a random point in the stream of writes
            killed_at[k] = time.time()
            d.kill9()
            time.sleep(0.2)  # replies already on their way from the dead process arrive
            for cid in life_cids(k):
                in_life[cid] = replies[cid].qsize()
        producer.stop()
        stored = dict(producer.stored)
        wait_for(lambda: set(stored) <= set(ingest.snapshot().payloads), 120, "every event")
        # Commands the broker delivers again after the last start are answered within seconds.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(q.empty() for q in replies.values()):
            time.sleep(0.1)
        time.sleep(1.0)  # late second answers to re-delivered commands (a bench, not a test)
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.terminate()
        ctl.close()
    answers: dict[str, list[dict[str, Any]]] = {}
    for cid, q in replies.items():
        answers[cid] = []
        while not q.empty():
            answers[cid].append(q.get_nowait())
    # Lost: a producer event, or the note of a command answered ok, that never arrived.
    noted = {
        r["result"]["event_id"]
        for a in answers.values()
        for r in a
        if r.get("ok") and isinstance(r.get("result"), dict) and "event_id" in r["result"]
    }
    with contextlib.suppress(Exception):  # what never arrives is reported below as lost
        wait_for(lambda: noted <= set(ingest.snapshot().payloads), 30, "the stored notes")
    seen = ingest.snapshot()
    ingest.stop()
    # Re-sends caused by crash k: duplicates between the births of lives k+1 and k+2.
    marks = [*ingest.dups_at_birth[1:], seen.duplicates]
    per_crash = [b - a for a, b in itertools.pairwise(marks)]
    store = Store(d.state_dir)
    integrity = store.integrity_check()
    store.close()

    note_ts: dict[str, float] = {}
    for ev in seen.payloads.values():
        if ev.get("type") == "note":
            note_ts[ev["data"].get("command_id")] = float(ev["ts"])
    # Answers that came from a later life than the one the command was sent to: the broker
    # delivered it again (or for the first time) after the kill. An ok answer whose note was
    # stored before the kill is the stored first reply; after it, a first run.
    after: Counter[str] = Counter()
    for cid, a in answers.items():
        k = int(cid.split("-k")[1].split("-")[0])
        for r in a[in_life.get(cid, len(a)) :]:
            code = (r.get("error") or {}).get("code")
            if r.get("ok"):
                ran_before = note_ts.get(cid, float("inf")) < killed_at[k]
                after["stored reply" if ran_before else "first run after restart"] += 1
            else:
                after[str(code)] += 1
    first = Counter(
        "ok" if a[0].get("ok") else (a[0].get("error") or {}).get("code")
        for a in answers.values()
        if a
    )
    ran: Counter[str] = Counter()
    for ev in seen.payloads.values():
        if ev.get("type") == "note":
            ran[ev["data"].get("command_id")] += 1
    lost = [eid for eid in set(stored) | noted if eid not in seen.payloads]
    copies = len(seen.payloads) + seen.duplicates
    return {
        "delivery": delivery,
        "kills": kills,
        "window": window,
        "ack_interval_s": ack_interval_s if e2e else None,
        "duration_s": round(time.monotonic() - t0, 1),
        "events_stored_by_producer": len(stored),
        "events_received": len(seen.payloads),  # the producer's and the notes, each id once
        "copies_received": copies,
        "duplicates": seen.duplicates,
        "duplicates_per_crash_mean": round(statistics.fmean(per_crash), 1),
        "duplicates_per_crash_max": max(per_crash),
        "duplicates_per_crash": per_crash,
        "max_per_crash_vs_window": round(max(per_crash) / window, 3),
        "crashes_over_window": sum(1 for n in per_crash if n > window),
        "lost": len(lost),
        "seq_gaps": sum(len(v) for v in seen.gaps().values()),
        "commands": len(answers),
        "commands_unanswered": sum(1 for a in answers.values() if not a),
        "first_answers": dict(first),
        "answers_after_a_kill": dict(after),
        "commands_answered_only_replayed": sum(
            1
            for a in answers.values()
            if a and all((r.get("error") or {}).get("code") == "replayed" for r in a)
        ),
        "commands_executed_twice": sum(1 for n in ran.values() if n > 1),
        "integrity_check": integrity,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--kills", type=int, default=30)
    ap.add_argument("--window", type=int, default=200, help="mqtt.max_inflight (default 200)")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument(
        "--ack-interval",
        type=float,
        default=0.2,
        help="end_to_end: the ingest acknowledges every S seconds (default 0.2, the ingest's "
        "own; a larger value stands for a lagging ingest)",
    )
    ap.add_argument("--out", default="fleet_kill_loop", help="results name (bench/results/)")
    ap.add_argument(
        "--delivery", nargs="+", choices=["broker", "end_to_end"], default=["broker", "end_to_end"]
    )
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    result: dict[str, Any] = {"seed": args.seed}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker").start()
        try:
            for mode in args.delivery:
                r = run_mode(work, broker, mode, args.kills, args.window, rnd, args.ack_interval)
                result[mode] = r
                print(json.dumps({k: v for k, v in r.items() if k != "duplicates_per_crash"}))
        finally:
            broker.stop()
    emit(args.out, result)


if __name__ == "__main__":
    main()
