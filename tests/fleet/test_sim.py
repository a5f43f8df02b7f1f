"""The fleet simulator against a real mosquitto: birth, Will, heartbeats, events, commands,
and the reconnect storm after a broker restart, checked by the controller-side ingest."""

from __future__ import annotations

import json
import time
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.devtools.broker import Mosquitto, free_port
from appliance.devtools.controller import Controller
from appliance.devtools.pki import TestCA
from appliance.fleet.ingest import Ingest
from appliance.fleet.sim import FleetConfig, FleetSim
from tests.helpers import get_json, wait_for


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:6]}"


@pytest.fixture
def fleet_factory() -> Iterator[Callable[..., FleetSim]]:
    made: list[FleetSim] = []

    def make(broker: Mosquitto, **kw: Any) -> FleetSim:
        cfg = FleetConfig(
            host=broker.host,
            port=broker.port,
            reconnect_min_s=0.05,
            reconnect_max_s=1.0,
            connect_rate=2000,
            **kw,
        )
        sim = FleetSim(cfg).start()
        made.append(sim)
        return sim

    yield make
    for sim in made:
        sim.stop()


def _ingest(broker: Mosquitto, prefix: str, **kw: Any) -> Ingest:
    return Ingest(broker.host, broker.port, prefix=prefix, **kw).start()


def test_fifty_kiosks_birth_heartbeat_events(
    broker: Mosquitto, fleet_factory: Callable[..., FleetSim]
) -> None:
    prefix = _prefix()
    ingest = _ingest(broker, prefix)
    try:
        sim = fleet_factory(
            broker, devices=50, topic_prefix=prefix, heartbeat_s=1.0, event_rate=2.0
        )
        wait_for(lambda: sim.connected_count() == 50, 20, "50 kiosks connected")
        wait_for(lambda: len(ingest.snapshot().births) == 50, 10, "50 births")
        wait_for(lambda: ingest.snapshot().events() >= 200, 20, "200 events")
        stats = sim.stop()
        wait_for(lambda: ingest.snapshot().events() == stats.events_acked, 10, "every acked event")
        # The clean stop leaves an offline status with reason "shutdown" for every kiosk.
        wait_for(lambda: len(ingest.snapshot().deaths) == 50, 10, "50 shutdown statuses")
        seen = ingest.snapshot()
    finally:
        ingest.stop()
    assert {reason for _d, reason in seen.deaths} == {"shutdown"}
    assert stats.events_pending == 0
    assert stats.events_created == stats.events_acked
    assert seen.duplicates == 0
    assert seen.gaps() == {}
    assert seen.malformed == 0
    assert len(seen.devices_seen) == 50
    assert len(seen.telemetry_latency) >= 50


def test_birth_is_retained_and_will_fires_on_abrupt_loss(
    broker: Mosquitto, fleet_factory: Callable[..., FleetSim]
) -> None:
    prefix = _prefix()
    sim = fleet_factory(broker, devices=3, topic_prefix=prefix)
    wait_for(lambda: sim.connected_count() == 3, 10, "3 kiosks connected")
    with Controller(broker.host, broker.port, prefix=prefix) as ctl:
        q = ctl.subscribe(f"{prefix}/+/status")
        births = [get_json(q, 5) for _ in range(3)]
        assert {b["device"] for b in births} == {k.id for k in sim.kiosks}
        assert all(b["online"] is True for b in births)
        victim = sim.kiosks[1]
        before = victim.fleet.stats.connects
        # Cut the TCP connection without DISCONNECT: the broker must publish the Will.
        sim.call(victim.writer.transport.abort)  # type: ignore[union-attr]
        will = get_json(q, 10, lambda m: m["device"] == victim.id and m["online"] is False)
        assert will["reason"] == "lost"
        again = get_json(q, 10, lambda m: m["device"] == victim.id and m["online"] is True)
        assert again["ts"] > births[0]["ts"] - 60
        assert sim.stats.connects == before + 1


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_kiosks_answer_commands_like_the_daemon(
    broker: Mosquitto, fleet_factory: Callable[..., FleetSim], protocol: str
) -> None:
    prefix = _prefix()
    sim = fleet_factory(broker, devices=5, topic_prefix=prefix, protocol=protocol)
    wait_for(lambda: sim.connected_count() == 5, 10, "5 kiosks connected")
    with Controller(broker.host, broker.port, prefix=prefix, protocol=protocol) as ctl:
        for k in sim.kiosks:
            reply = ctl.request(k.id, "ping", {"echo": "xin chào"}, timeout=5)
            assert reply["ok"] is True
            assert reply["result"]["pong"] is True
            assert reply["result"]["echo"] == "xin chào"
        dev = sim.kiosks[0].id
        assert ctl.request(dev, "status", timeout=5)["result"]["device"] == dev
        bad = ctl.request(dev, "selfdestruct", cid="c-unknown", timeout=5)
        assert bad["error"]["code"] == "unknown_command"
        if protocol == "5":
            broken = ctl.request(dev, "ping", raw=b'{"id":"c-broken","cmd":', timeout=5)
        else:  # no correlation data on 3.1.1: an unreadable request's reply has id null
            replies = ctl.subscribe(f"{prefix}/{dev}/reply")
            ctl.publish(f"{prefix}/{dev}/cmd", b'{"id":"c-broken","cmd":')
            broken = get_json(replies, 5, lambda m: m["id"] is None)
        assert broken["ok"] is False
        assert broken["error"]["code"] == "invalid_json"


def test_reconnect_storm_after_broker_restart_loses_nothing(
    make_broker: Callable[..., Mosquitto], fleet_factory: Callable[..., FleetSim]
) -> None:
    broker = make_broker()
    prefix = _prefix()
    ingest = _ingest(broker, prefix, client_id=f"ingest-{prefix}")
    try:
        sim = fleet_factory(broker, devices=50, topic_prefix=prefix, heartbeat_s=2.0, keepalive_s=5)
        wait_for(lambda: sim.connected_count() == 50, 20, "50 kiosks connected")
        first = [sim.call(lambda k=k: k.raise_event("note", {"n": 1})) for k in sim.kiosks]
        assert first == [1] * 50
        wait_for(lambda: ingest.snapshot().events() == 50, 10, "first events")
        # ... and acknowledged to the kiosks: an event whose PUBACK the stop cut off is re-sent
        # after the restart (at least once, a legitimate duplicate, not what is tested here).
        wait_for(lambda: sim.stats.events_acked == 50, 10, "the first events' PUBACKs")
        broker.stop()
        wait_for(lambda: sim.connected_count() == 0, 10, "every kiosk noticed the loss")
        # Events raised while the broker is down wait in the kiosks' outboxes.
        for k in sim.kiosks:
            sim.call(lambda k=k: k.raise_event("note", {"n": 2}))
        restarted = time.time()
        broker.start()
        wait_for(lambda: sim.connected_count() == 50, 30, "all 50 back after the restart")
        wait_for(lambda: ingest.snapshot().events() == 100, 20, "events from the outage")
        seen = ingest.snapshot()
    finally:
        ingest.stop()
    assert seen.duplicates == 0
    assert seen.gaps() == {}
    assert all(seqs == {1, 2} for seqs in seen.seqs.values())
    back = [t for t in sim.stats.connect_times if t >= restarted]
    assert len(back) == 50
    assert sim.stats.connects == 100


def test_shared_subscriptions_split_the_load(
    broker: Mosquitto, fleet_factory: Callable[..., FleetSim]
) -> None:
    prefix = _prefix()
    group = f"g{prefix}"
    a = _ingest(broker, prefix, share_group=group)
    b = _ingest(broker, prefix, share_group=group)
    try:
        sim = fleet_factory(broker, devices=20, topic_prefix=prefix, event_rate=5.0)
        wait_for(lambda: sim.connected_count() == 20, 10, "20 kiosks connected")
        wait_for(lambda: a.snapshot().merge(b.snapshot()).events() >= 300, 20, "300 events in all")
        stats = sim.stop()
        wait_for(
            lambda: a.snapshot().merge(b.snapshot()).events() == stats.events_acked,
            10,
            "every acked event at one of the two",
        )
        sa, sb = a.snapshot(), b.snapshot()
    finally:
        a.stop()
        b.stop()
    assert sa.events() > 0 and sb.events() > 0, "both members of the group got a share"
    assert not (sa.ids & sb.ids), "no event went to both members"
    merged = sa.merge(sb)
    assert merged.duplicates == 0
    assert merged.gaps() == {}
    # Each alone sees holes in every busy kiosk's seq range; only the merge is whole.
    assert sa.gaps() or sb.gaps()


def test_ingest_counts_duplicates_and_gaps(broker: Mosquitto) -> None:
    prefix = _prefix()
    ingest = _ingest(broker, prefix)
    try:
        with Controller(broker.host, broker.port, prefix=prefix) as ctl:

            def event(eid: str, seq: int) -> str:
                return json.dumps(
                    {
                        "id": eid,
                        "seq": seq,
                        "device": "k",
                        "type": "x",
                        "ts": time.time(),
                        "data": {},
                    }
                )

            for eid, seq in [("a", 1), ("b", 2), ("b", 2), ("d", 4)]:
                ctl.publish(f"{prefix}/k/events/x", event(eid, seq))
            ctl.publish(f"{prefix}/k/events/x", b"not json")
            wait_for(lambda: ingest.snapshot().messages >= 3, 5, "events at the ingest")
            wait_for(lambda: ingest.snapshot().malformed == 1, 5, "the malformed one")
            seen = ingest.snapshot()
    finally:
        ingest.stop()
    assert seen.duplicates == 1
    assert seen.gaps() == {"k": [3]}


def test_mutual_tls_kiosks(
    make_broker: Callable[..., Mosquitto], fleet_factory: Callable[..., FleetSim], tmp_path: Path
) -> None:
    ca = TestCA(tmp_path / "pki")
    server = ca.issue("broker", server=True)
    client = ca.issue("sim-kiosk")
    tls_port = free_port()
    broker = make_broker(
        extra_conf=f"listener {tls_port} 127.0.0.1\ncafile {ca.cert_path}\n"
        f"certfile {server.cert}\nkeyfile {server.key}\nrequire_certificate true\n"
    )
    prefix = _prefix()
    ingest = _ingest(broker, prefix)  # the controller on the plain listener
    tls_broker = types.SimpleNamespace(host=broker.host, port=tls_port)
    try:
        sim = fleet_factory(
            tls_broker,
            devices=5,
            topic_prefix=prefix,
            tls_ca=str(ca.cert_path),
            tls_cert=str(client.cert),
            tls_key=str(client.key),
        )
        wait_for(lambda: len(ingest.snapshot().births) == 5, 15, "5 births over mutual TLS")
        # Without a client certificate the broker refuses the handshake: nobody gets in.
        anon = fleet_factory(
            tls_broker, devices=2, topic_prefix=prefix, id_prefix="anon", tls_ca=str(ca.cert_path)
        )
        wait_for(lambda: anon.stats.connect_failures >= 2, 15, "refused handshakes")
        assert anon.stats.connects == 0
        assert sim.stats.connects == 5
    finally:
        ingest.stop()
