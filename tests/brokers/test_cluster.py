"""A three-node RabbitMQ cluster (Debian's rabbitmq-server 3.10, joined with ``rabbitmqctl
join_cluster``) carrying a simulated fleet and a real daemon, each kiosk with the three nodes in
``mqtt.brokers``; a ``kill -9`` of one node: every kiosk is back on the other two within the
outage budget, and with ``mqtt.delivery = "end_to_end"`` no event is lost.

The outage budget: a killed node's sockets are reset by the kernel at once, so a kiosk notices
immediately (a host that vanishes silently: up to 2 x ``keepalive_s`` more), waits its first
backoff (uniform(0, ``reconnect_min_s``): the connection had reached CONNACK) and connects to the
next node in its order, which is alive. Only if that one failed too would the backoff ceiling
double per attempt, up to ``reconnect_max_s``; so the budget asserted here is
``reconnect_max_s`` plus the surviving nodes' time to admit the fleet (docs/scaling.md)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest

from appliance.agent.mqtt import broker_order
from appliance.central.keys import load_central_keys
from appliance.devtools.fleetkit import FleetKit
from appliance.fleet.ingest import Ingest
from appliance.fleet.sim import FleetConfig, FleetSim
from appliance.store import Store
from tests.helpers import DaemonProcess, get_json, wait_for

from .rabbit import RabbitCluster, available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not available(), reason="rabbitmq-server is not installed"),
]

KIOSKS = 40
RECONNECT_MIN_S = 0.2
RECONNECT_MAX_S = 2.0
# kiosks back within: the backoff ceiling + the two surviving nodes admitting the fleet (their
# sessions are quorum queues: a CONNECT is a Raft round trip on a loaded 2-core machine)
BUDGET_S = RECONNECT_MAX_S + 20.0
DEVICE = "clu-kiosk"
SIM_CN = "clu-sim"  # the simulated kiosks share one client certificate


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, fleet_kit: FleetKit
) -> Iterator[RabbitCluster]:
    """Mutual TLS for every kiosk and the controller (``mqtt.ssl_cert_login``: the certificate's
    CN is the RabbitMQ user); the ingest, which has no TLS option, uses the plain loopback
    listener and signs its acknowledgements with the fleet's ``ingest`` key."""
    for cn in (DEVICE, SIM_CN):
        if not (fleet_kit.certs / f"{cn}.crt").exists():
            fleet_kit.issue_cert(cn)
    c = RabbitCluster(
        tmp_path_factory.mktemp("rabbit-cluster"),
        tls=fleet_kit.broker_tls(),
        users=["controller", DEVICE, SIM_CN],
    ).start()
    yield c
    c.stop()


def test_fleet_survives_the_loss_of_a_node(
    cluster: RabbitCluster,
    fleet_kit: FleetKit,
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    assert len(cluster.running_nodes()) == 3
    brokers = cluster.endpoints
    # The real daemon's first node is the one killed; the ingest and controller sit on another.
    device = DEVICE
    victim = brokers.index(broker_order(brokers, device, "device")[0])
    home = cluster.nodes[(victim + 1) % 3]
    env = {
        "APPLIANCE_MQTT__PROTOCOL": "3.1.1",
        "APPLIANCE_MQTT__DELIVERY": "end_to_end",
        "APPLIANCE_MQTT__BROKERS": json.dumps(brokers),
    }
    # Production configuration: the kiosk's own certificate, signed commands only.
    d = daemon_factory(cluster.nodes[victim], device, env=env)
    ingest = Ingest(
        home.host, home.port, protocol="3.1.1", client_id="clu-ingest", ack=True,
        keep_payloads=True, ack_key=load_central_keys(fleet_kit.home).ingest,
    ).start()  # fmt: skip
    sim = FleetSim(
        FleetConfig(
            brokers=[(n.host, n.tls_port) for n in cluster.nodes],
            tls_ca=str(fleet_kit.ca_file),
            tls_cert=str(fleet_kit.certs / f"{SIM_CN}.crt"),
            tls_key=str(fleet_kit.certs / f"{SIM_CN}.key"),
            devices=KIOSKS,
            id_prefix="clu",
            protocol="3.1.1",
            heartbeat_s=2.0,
            keepalive_s=5,
            reconnect_min_s=RECONNECT_MIN_S,
            reconnect_max_s=RECONNECT_MAX_S,
        )
    ).start()
    ctl = fleet_kit.controller(home.tls_port, protocol="3.1.1").connect()
    store: Store | None = None
    try:
        # RabbitMQ 3.10 keeps retained messages per node: the status subscription is made
        # before the daemon starts, to see its births wherever it lands.
        status_q = ctl.subscribe(f"kiosk/{device}/status")
        t0 = time.time()
        d.start()
        birth = get_json(status_q, 60, lambda m: m.get("online") is True and m["ts"] > t0)
        assert birth["broker"] == brokers[victim]
        wait_for(lambda: sim.connected_count() == KIOSKS, 60, f"{KIOSKS} kiosks connected")
        spread = sim.connected_to()
        assert set(spread) == set(brokers), f"the fleet spreads over the nodes: {spread}"
        on_victim = spread[brokers[victim]]

        # Events in flight when the node dies: the daemon's outbox drains through the victim.
        store = Store(d.state_dir)
        stored = store.outbox.put_many(
            [("ui.tap", f"kiosk/{device}/events/ui.tap", {"n": n}) for n in range(400)]
        )
        d_ids = {eid for _s, eid in stored}
        for k in sim.kiosks:
            sim.call(lambda k=k: k.raise_event("note", {"n": 1}))
        wait_for(lambda: len(d_ids & set(ingest.snapshot().payloads)) > 0, 30, "draining")
        t_kill = time.time()
        cluster.nodes[victim].kill()  # kill -9 of the node (beam.smp and its wrapper)

        for k in sim.kiosks:  # events raised during the outage
            sim.call(lambda k=k: k.raise_event("note", {"n": 2}))
        later = store.outbox.put_many(
            [("ui.tap", f"kiosk/{device}/events/ui.tap", {"n": n}) for n in range(400, 500)]
        )
        d_ids |= {eid for _s, eid in later}

        def all_back() -> bool:
            now = sim.connected_to()
            return sum(now.values()) == KIOSKS and brokers[victim] not in now

        wait_for(all_back, BUDGET_S, f"every simulated kiosk on the surviving nodes: {spread}")
        sim_back_s = time.time() - t_kill
        birth = get_json(
            status_q, BUDGET_S, lambda m: m.get("online") is True and m.get("ts", 0) > t_kill
        )
        assert birth["broker"] in brokers and birth["broker"] != brokers[victim]
        status = ctl.request(device, "status", timeout=10)
        assert status["result"]["broker"] == birth["broker"]

        # End-to-end delivery: every event of the daemon reached the acknowledging ingest and
        # left the outbox only on its acknowledgement.
        wait_for(lambda: d_ids <= set(ingest.snapshot().payloads), 60, "every daemon event")
        wait_for(lambda: store is not None and store.outbox.depth() == 0, 60, "outbox acked")
        wait_for(
            lambda: ingest.snapshot().events() >= 500 + 2 * KIOSKS, 30, "every simulated event"
        )
        seen = ingest.snapshot()
    finally:
        ctl.close()
        sim.stop()
        ingest.stop()
        if store is not None:
            store.close()
    assert len(cluster.running_nodes()) == 2
    assert seen.gaps() == {}, "no event missing, the simulated fleet's included"
    assert {p["data"]["n"] for eid, p in seen.payloads.items() if eid in d_ids} == set(range(500))
    print(f"{on_victim} kiosks moved; all back {sim_back_s:.1f} s after the kill")
    assert d.terminate() == 0
