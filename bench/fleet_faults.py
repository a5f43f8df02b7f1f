"""Fault injection, the long loop (issue 8 item 2, the parts that need no enrollment flow):

A. the network and the broker: random faults through a TCP proxy between the daemon and
   mosquitto (RST cut, short blackhole, a blackhole longer than the keepalive, broker restart,
   broker ``kill -9``) while a local producer writes events into the daemon's SQLite outbox;
B. the daemon: ``kill -9`` at random points while it executes ``note`` commands (each one an
   outbox write), restarted each time.

After each part: events lost, duplicated after id de-duplication and corrupted; whether every
loss is a visible ``seq`` gap; ``PRAGMA integrity_check``.

    .venv/bin/python bench/fleet_faults.py [--rounds 20] [--daemon-kills 100] [--seed 8]
        [--delivery end_to_end]

``--delivery end_to_end`` runs the daemon with ``mqtt.delivery = "end_to_end"`` and the ingest
acknowledging what it recorded (appliance/fleet/acker.py): outbox rows are deleted only on the
ingest's acknowledgement, so a broker ``kill -9`` must lose nothing either (writes
bench/results/fleet_faults_end_to_end.json).

Every fault is drawn from a seeded generator, so a run repeats exactly with the same seed
(timings differ, so the byte-level interleavings do not).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import types
from collections import Counter
from pathlib import Path
from typing import Any

from _common import ROOT, emit

sys.path.insert(0, str(ROOT))

from appliance.devtools.broker import Mosquitto
from appliance.devtools.controller import Controller
from appliance.fleet.ingest import Ingest
from appliance.store import Store
from tests.fleet.faultproxy import FaultProxy
from tests.fleet.faults import Producer, Rig
from tests.helpers import DaemonProcess, wait_for

FAULTS = ["cut", "blackhole", "long_blackhole", "broker_restart", "broker_kill"]
# Everything started, so that a failing run leaves no broker or daemon behind.
STARTED: list[Mosquitto | DaemonProcess] = []


def delivery_env(delivery: str) -> dict[str, str]:
    if delivery == "broker":
        return {}
    return {"APPLIANCE_MQTT__DELIVERY": delivery, "APPLIANCE_MQTT__DELIVERY_RESEND_S": "5"}


def part_a(work: Path, rounds: int, rnd: random.Random, delivery: str) -> dict[str, Any]:
    broker = Mosquitto(work / "broker-a").start()
    STARTED.append(broker)
    proxy = FaultProxy(broker.host, broker.port).start()
    e2e = delivery == "end_to_end"
    ingest = Ingest(
        broker.host, broker.port, client_id="faults-a", keep_payloads=True, ack=e2e
    ).start()
    via = types.SimpleNamespace(host=proxy.host, port=proxy.port)
    d = DaemonProcess(work / "daemon-a", via, "kiosk-faults-a",  # type: ignore[arg-type]
                      env={"APPLIANCE_MQTT__KEEPALIVE_S": "5",
                           **delivery_env(delivery)}, dev=True).start()  # fmt: skip
    STARTED.append(d)
    wait_for(lambda: d.device_id in ingest.snapshot().devices_seen, 20, "birth")
    producer = Producer(d.state_dir, d.device_id).start()
    rig = Rig(broker, proxy, ingest, d, producer)
    done: Counter[str] = Counter()
    kills_at: list[int] = []
    noticed: list[float] = []  # seconds until a long blackhole was noticed
    t0 = time.monotonic()
    for _ in range(rounds):
        fault = rnd.choice(FAULTS)
        done[fault] += 1
        if fault == "long_blackhole":
            # Longer than 1.5 x keepalive (5 s): only the keepalive can notice the dead link.
            before = d.log().count("mqtt: disconnected")
            proxy.set_mode("blackhole")
            t_hole = time.monotonic()
            wait_for(lambda b=before: d.log().count("mqtt: disconnected") > b, 60, "dead link")
            noticed.append(round(time.monotonic() - t_hole, 1))
            proxy.heal()
            continue
        if fault == "broker_kill":
            kills_at.append(max((s for s, _n in list(producer.stored.values())), default=0))
        rig.inject(fault)
    report = rig.finish(expect_all=e2e)
    seen = ingest.snapshot()
    gaps = set(seen.gaps().get(d.device_id, []))
    lost = {s for eid, (s, _n) in producer.stored.items() if eid not in seen.payloads}
    reconnects = d.log().count("mqtt: connected to") - 1
    d.terminate()
    store = Store(d.state_dir)
    integrity = store.integrity_check()
    store.close()
    ingest.stop()
    proxy.close()
    broker.stop()
    return {
        "delivery": delivery,
        "rounds": rounds,
        "faults": dict(done),
        "duration_s": round(time.monotonic() - t0, 1),
        "daemon_reconnects": reconnects,
        "long_blackhole_noticed_after_s": noticed,
        **report,
        "losses_all_visible_as_seq_gaps": lost == gaps,
        "lost_per_broker_kill": round(len(lost) / max(1, done["broker_kill"]), 1),
        "integrity_check": integrity,
    }


def part_b(work: Path, kills: int, rnd: random.Random, delivery: str) -> dict[str, Any]:
    broker = Mosquitto(work / "broker-b").start()
    STARTED.append(broker)
    ingest = Ingest(
        broker.host,
        broker.port,
        client_id="faults-b",
        keep_payloads=True,
        ack=delivery == "end_to_end",
    ).start()
    ctl = Controller(broker.host, broker.port).connect()
    d = DaemonProcess(
        work / "daemon-b", broker, "kiosk-faults-b", env=delivery_env(delivery), dev=True
    )
    STARTED.append(d)
    sent: dict[str, str] = {}  # command id -> note text
    replies: dict[str, dict[str, Any]] = {}
    pending: dict[str, Any] = {}
    t0 = time.monotonic()
    integrity_failures = 0

    def collect() -> None:
        for cid, q in list(pending.items()):
            if not q.empty():
                replies[cid] = q.get_nowait()
                del pending[cid]

    for k in range(kills):
        births = len(ingest.snapshot().births)
        d.start()
        wait_for(lambda b=births: len(ingest.snapshot().births) > b, 30, "the daemon online")
        for j in range(rnd.randint(5, 40)):
            cid = f"k{k}-{j}"
            sent[cid] = f"note {k}/{j}"
            pending[cid] = ctl.send(d.device_id, "note", {"text": sent[cid]}, cid=cid)
        time.sleep(rnd.uniform(0, 0.25))  # a random point in the stream of outbox writes
        d.kill9()
        collect()
        if k % 10 == 9:
            store = Store(d.state_dir)
            integrity_failures += store.integrity_check() != "ok"
            store.close()
    # Last start: queued commands run; every unanswered id is asked again (same id): it gets
    # the stored reply or "interrupted", and is never executed twice.
    d.start()
    for cid in list(pending):
        pending[cid] = ctl.send(d.device_id, "note", {"text": sent[cid]}, cid=cid)
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        collect()
        time.sleep(0.05)
    ok = {cid: r["result"]["event_id"] for cid, r in replies.items() if r.get("ok")}
    wait_for(lambda: set(ok.values()) <= set(ingest.snapshot().payloads), 60, "stored notes")
    seen = ingest.snapshot()
    events_by_cid: Counter[str] = Counter()
    corrupted = 0
    for ev in seen.payloads.values():
        if ev.get("type") != "note":
            continue
        cid = ev["data"].get("command_id")
        events_by_cid[cid] += 1
        corrupted += ev["data"].get("text") != sent.get(cid)
    outcomes = Counter(
        "ok" if r.get("ok") else r.get("error", {}).get("code") for r in replies.values()
    )
    d.terminate()
    store = Store(d.state_dir)
    integrity = store.integrity_check()
    store.close()
    ctl.close()
    ingest.stop()
    broker.stop()
    return {
        "delivery": delivery,
        "daemon_kills": kills,
        "duration_s": round(time.monotonic() - t0, 1),
        "commands": len(sent),
        "unanswered": len(pending),
        "reply_outcomes": dict(outcomes),
        "stored_notes_lost": len(set(ok.values()) - set(seen.payloads)),
        "commands_executed_twice": sum(1 for n in events_by_cid.values() if n > 1),
        "corrupted": corrupted,
        "duplicates_dropped_by_id": seen.duplicates,
        "seq_gaps": sum(len(v) for v in seen.gaps().values()),
        "integrity_check": integrity,
        "integrity_failures_during_loop": integrity_failures,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20, help="network/broker faults in part A")
    ap.add_argument("--daemon-kills", type=int, default=100, help="kill -9 of the daemon (B)")
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument(
        "--delivery",
        choices=["broker", "end_to_end"],
        default="broker",
        help="the daemon's mqtt.delivery (default broker: rows deleted on the broker's PUBACK)",
    )
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result: dict[str, Any] = {"seed": args.seed}
        try:
            if args.rounds:
                result["network_and_broker"] = part_a(work, args.rounds, rnd, args.delivery)
            if args.daemon_kills:
                result["daemon_kill9"] = part_b(work, args.daemon_kills, rnd, args.delivery)
        finally:
            for thing in STARTED:
                if isinstance(thing, Mosquitto):
                    thing.stop()
                elif thing.proc is not None and thing.proc.poll() is None:
                    thing.proc.kill()
                    thing.proc.wait(10)
    suffix = "" if args.delivery == "broker" else f"_{args.delivery}"
    emit(f"fleet_faults{suffix}", result)
    print(json.dumps({"done": True}))


if __name__ == "__main__":
    main()
