"""Losing one node of a three-node RabbitMQ cluster (issue 18 point 4): how long until every
kiosk is back on the other two, and what is lost.

A cluster of three Debian rabbitmq-server 3.10 nodes on this machine (tests/brokers/rabbit.py:
``rabbitmqctl join_cluster``, MQTT sessions as quorum queues, mutual TLS with
``ssl_cert_login``) carries N simulated kiosks (``appliance.fleet.sim``, MQTT 3.1.1, each with
the three nodes as its broker list in its own order) and one real daemon with
``mqtt.delivery = "end_to_end"`` (production configuration: its own certificate, signed
commands only) into which a producer writes ~1,000 events/s the whole time. An acknowledging
ingest on a surviving node counts what arrives, de-duplicated by event id.

Baseline, measured in the same run: the time for the same fleet to connect to the fresh
cluster (all N from nothing). Then ``kill -9`` of the node that holds the most kiosks and the
daemon: the time until every kiosk is connected again, none on the dead node; the daemon's
time to its new birth; events stored vs received (the daemon's: must be all; the simulated
kiosks keep events in memory until the broker's PUBACK, the broker delivery mode).

    .venv/bin/python bench/fleet_cluster.py [--kiosks 200] [--reconnect-min 0.5]
        [--reconnect-max 30] [--out fleet_cluster]

Writes bench/results/<out>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, emit

sys.path.insert(0, str(ROOT))

from appliance.agent.mqtt import broker_order
from appliance.central.keys import load_central_keys
from appliance.devtools.fleetkit import FleetKit
from appliance.fleet.ingest import Ingest
from appliance.fleet.sim import FleetConfig, FleetSim
from appliance.store import Store
from tests.brokers.rabbit import RabbitCluster
from tests.fleet.faults import Producer
from tests.helpers import DaemonProcess, get_json, wait_for

DEVICE = "bench-clu-kiosk"
SIM_CN = "bench-clu-sim"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kiosks", type=int, default=200)
    ap.add_argument("--reconnect-min", type=float, default=0.5, help="the daemon's default")
    ap.add_argument("--reconnect-max", type=float, default=30.0, help="the daemon's default")
    ap.add_argument("--heartbeat", type=float, default=10.0)
    ap.add_argument("--out", default="fleet_cluster")
    args = ap.parse_args()
    n = args.kiosks
    with tempfile.TemporaryDirectory(prefix="fleet-cluster-") as tmp:
        root = Path(tmp)
        kit = FleetKit(root / "kit").create()
        for cn in (DEVICE, SIM_CN):
            kit.issue_cert(cn)
        t = time.monotonic()
        cluster = RabbitCluster(
            root / "cluster", tls=kit.broker_tls(), users=["controller", DEVICE, SIM_CN]
        ).start()
        cluster_start_s = time.monotonic() - t
        print(f"cluster up in {cluster_start_s:.1f} s", file=sys.stderr, flush=True)
        try:
            result = run(args, n, root, kit, cluster)
        finally:
            cluster.stop()
    result["cluster_start_s"] = round(cluster_start_s, 1)
    emit(args.out, result)


def run(
    args: argparse.Namespace, n: int, root: Path, kit: FleetKit, cluster: RabbitCluster
) -> dict[str, Any]:
    brokers = cluster.endpoints
    victim = brokers.index(broker_order(brokers, DEVICE, "device")[0])
    home = cluster.nodes[(victim + 1) % 3]
    ingest = Ingest(
        home.host, home.port, protocol="3.1.1", client_id="bench-clu-ingest", ack=True,
        keep_payloads=True, ack_key=load_central_keys(kit.home).ingest,
    ).start()  # fmt: skip
    sim = FleetSim(
        FleetConfig(
            brokers=[(nd.host, nd.tls_port) for nd in cluster.nodes],
            tls_ca=str(kit.ca_file),
            tls_cert=str(kit.certs / f"{SIM_CN}.crt"),
            tls_key=str(kit.certs / f"{SIM_CN}.key"),
            devices=n,
            id_prefix="bclu",
            protocol="3.1.1",
            heartbeat_s=args.heartbeat,
            reconnect_min_s=args.reconnect_min,
            reconnect_max_s=args.reconnect_max,
        )
    )
    d = DaemonProcess(
        root / "daemon",
        cluster.nodes[victim],  # type: ignore[arg-type]
        DEVICE,
        "",
        {
            "APPLIANCE_MQTT__PROTOCOL": "3.1.1",
            "APPLIANCE_MQTT__DELIVERY": "end_to_end",
            "APPLIANCE_MQTT__BROKERS": json.dumps(brokers),
            "APPLIANCE_MQTT__RECONNECT_MIN_S": str(args.reconnect_min),
            "APPLIANCE_MQTT__RECONNECT_MAX_S": str(args.reconnect_max),
        },
        kit=kit,
    )
    ctl = kit.controller(home.tls_port, protocol="3.1.1").connect()
    producer: Producer | None = None
    try:
        # Baseline: the whole fleet connecting to the fresh cluster.
        t0 = time.monotonic()
        sim.start()
        wait_for(lambda: sim.connected_count() == n, 600, f"{n} kiosks on the fresh cluster")
        connect_all_s = time.monotonic() - t0
        print(f"{n} kiosks connected in {connect_all_s:.1f} s", file=sys.stderr, flush=True)
        spread = sim.connected_to()
        # RabbitMQ 3.10 keeps retained messages per node: subscribe before the daemon starts
        # to see its birth wherever it lands.
        status = ctl.subscribe(f"kiosk/{DEVICE}/status")
        t_wall = time.time()
        d.start()
        try:
            get_json(status, 120, lambda m: m.get("online") is True and m.get("ts", 0) > t_wall)
        except AssertionError:
            print(d.log()[-3000:], file=sys.stderr)
            raise
        producer = Producer(d.state_dir, DEVICE).start()
        for k in sim.kiosks:
            sim.call(lambda k=k: k.raise_event("note", {"phase": "before"}))
        wait_for(lambda: len(producer.stored) > 2000, 60, "the producer under way")  # type: ignore[union-attr]

        # kill -9 of the daemon's node (and its share of the fleet)
        on_victim = spread.get(brokers[victim], 0)
        t_kill, t_kill_wall = time.monotonic(), time.time()
        cluster.nodes[victim].kill()
        for k in sim.kiosks:
            sim.call(lambda k=k: k.raise_event("note", {"phase": "outage"}))

        def all_back() -> bool:
            now = sim.connected_to()
            return sum(now.values()) == n and brokers[victim] not in now

        wait_for(all_back, 600, "every kiosk on the surviving nodes")
        all_back_s = time.monotonic() - t_kill
        print(f"all back {all_back_s:.1f} s after the kill", file=sys.stderr, flush=True)
        birth = get_json(
            status, 120, lambda m: m.get("online") is True and m.get("ts", 0) > t_kill_wall
        )
        daemon_back_s = float(birth["ts"]) - t_kill_wall  # its birth's time (same clock)
        more = len(producer.stored) + 1000  # the producer keeps writing a moment on the new node
        wait_for(lambda: len(producer.stored) > more, 60, "events after the failover")  # type: ignore[union-attr]
        producer.stop()
        stored = dict(producer.stored)
        t_drain = time.monotonic()
        wait_for(lambda: set(stored) <= set(ingest.snapshot().payloads), 300, "daemon events")
        store = Store(d.state_dir)
        try:
            wait_for(lambda: store.outbox.depth() == 0, 300, "every row acknowledged")
        finally:
            store.close()
        drained_s = time.monotonic() - t_drain
        sim_created = 2 * n
        wait_for(lambda: ingest.snapshot().events() >= len(stored) + sim_created, 60, "sim")
        seen = ingest.snapshot()
    finally:
        if producer is not None:
            producer.stop()
        ctl.close()
        stats = sim.stop()
        fleet = stats.snapshot()
        sim_connect_times = list(stats.connect_times)
        ingest.stop()
        if d.proc is not None:
            d.terminate()
    sim_ids = {eid for eid, p in seen.payloads.items() if p["device"].startswith("bclu-")}
    # CONNACKs of the kiosks that moved, from the kill: with no failed attempt in between, the
    # spread is the backoff (at most reconnect_min_s) plus the survivors' admission.
    moved = sorted(t - t_kill_wall for t in sim_connect_times if t > t_kill_wall)
    return {
        "kiosks": n,
        "reconnect_min_s": args.reconnect_min,
        "reconnect_max_s": args.reconnect_max,
        "spread_before": spread,
        "kiosks_on_the_killed_node": on_victim,
        "baseline_connect_all_s": round(connect_all_s, 2),
        "all_back_after_kill_s": round(all_back_s, 2),
        "ratio_back_to_connect_all": round(all_back_s / connect_all_s, 2),
        "daemon_back_s": round(daemon_back_s, 2),
        "daemon_broker_after": birth.get("broker"),
        "daemon_events_stored": len(stored),
        "daemon_events_received_unique": len(set(stored) & set(seen.payloads)),
        "daemon_events_lost": len(set(stored) - set(seen.payloads)),
        "daemon_outbox_acknowledged_s_after_producer_stop": round(drained_s, 2),
        "sim_events_created": fleet.get("events_created"),
        "sim_events_received_unique": len(sim_ids),
        "duplicates": seen.duplicates,
        "gaps": seen.gaps(),
        "sim_connect_failures": fleet.get("connect_failures"),
        "moved_connacks_after_kill_s": {
            "n": len(moved),
            "first": round(moved[0], 2) if moved else None,
            "p50": round(moved[len(moved) // 2], 2) if moved else None,
            "last": round(moved[-1], 2) if moved else None,
        },
    }


if __name__ == "__main__":
    main()
