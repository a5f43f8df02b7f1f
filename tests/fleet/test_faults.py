"""Fault injection against the real daemon's outbox while a local producer keeps writing events
into the kiosk's SQLite outbox: the network cut (RST) and blackholed through a TCP proxy, the
broker restarted, and the broker killed with -9.

What holds, and is asserted:

* partitions and broker restarts: events lost, duplicated (after id de-duplication) and
  corrupted are all zero; ``PRAGMA integrity_check`` is ok; the outbox drains to empty;
* broker ``kill -9`` with ``mqtt.delivery = "broker"`` (the default): mosquitto acknowledges a
  QoS 1 PUBLISH before the message is on disk or at the subscriber, so the events it held for
  the controller at the instant of the kill are lost *after* the kiosk deleted them. None is
  corrupted or duplicated, and every one of them is a gap in the device's ``seq`` that the
  controller sees;
* broker ``kill -9`` with ``mqtt.delivery = "end_to_end"`` and an acknowledging ingest: the
  kiosk keeps each row until the ingest acknowledged it and sends again what the broker lost:
  nothing lost, nothing duplicated after id de-duplication, no gap.

This is the short CI version; bench/fleet_faults.py runs the long loop and counts."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator

import pytest

from appliance.devtools.broker import Mosquitto
from appliance.fleet.ingest import Ingest
from tests.helpers import DaemonProcess, wait_for

from .faultproxy import FaultProxy
from .faults import Producer, Rig


@contextlib.contextmanager
def _rig(
    make_broker: Callable[..., Mosquitto],
    daemon_factory: Callable[..., DaemonProcess],
    device: str,
    *,
    end_to_end: bool = False,
) -> Iterator[Rig]:
    """Broker, fault proxy, daemon behind it, a controller-side ingest and the producer. With
    ``end_to_end`` the daemon keeps each event until the ingest acknowledges it (development
    mode: the sim profile accepts unsigned acknowledgements)."""
    broker = make_broker()
    proxy = FaultProxy(broker.host, broker.port).start()
    ingest = Ingest(
        broker.host, broker.port, client_id=f"ing-{device}", keep_payloads=True, ack=end_to_end
    ).start()
    via_proxy = types.SimpleNamespace(host=proxy.host, port=proxy.port)
    env = {"APPLIANCE_MQTT__KEEPALIVE_S": "5"}
    if end_to_end:
        env |= {"APPLIANCE_MQTT__DELIVERY": "end_to_end", "APPLIANCE_MQTT__DELIVERY_RESEND_S": "2"}
    d = daemon_factory(via_proxy, device, env=env, dev=True)  # agent-level faults
    d.start()
    producer = Producer(d.state_dir, d.device_id)
    try:
        wait_for(lambda: d.device_id in ingest.snapshot().devices_seen, 20, "the birth")
        producer.start()
        yield Rig(broker, proxy, ingest, d, producer)
    finally:
        producer.stop()
        d.terminate()
        ingest.stop()
        proxy.close()


@pytest.fixture
def rig(
    make_broker: Callable[..., Mosquitto], daemon_factory: Callable[..., DaemonProcess]
) -> Iterator[Rig]:
    with _rig(make_broker, daemon_factory, "kiosk-faults") as r:
        yield r


@pytest.fixture
def e2e_rig(
    make_broker: Callable[..., Mosquitto], daemon_factory: Callable[..., DaemonProcess]
) -> Iterator[Rig]:
    with _rig(make_broker, daemon_factory, "kiosk-e2e", end_to_end=True) as r:
        yield r


def test_partitions_and_broker_restarts_lose_nothing(rig: Rig) -> None:
    for fault in ["cut", "blackhole", "broker_restart", "cut", "broker_restart"]:
        rig.inject(fault)
    report = rig.finish(expect_all=True)
    assert report["stored"] >= 500
    assert report["lost"] == 0, report
    assert report["corrupted"] == 0
    assert report["duplicated_after_dedupe"] == 0
    assert report["unknown"] == 0
    # Each cut and restart dropped the daemon's connection (the blackhole was shorter than
    # the keepalive and went unnoticed, as it should): 1 + 4 sessions at least.
    assert rig.daemon.log().count("mqtt: connected to") >= 5


def test_broker_kill9_losses_are_all_visible_as_seq_gaps(rig: Rig) -> None:
    for fault in ["broker_kill", "cut", "broker_kill"]:
        rig.inject(fault)
    report = rig.finish(expect_all=False)
    assert report["corrupted"] == 0
    assert report["duplicated_after_dedupe"] == 0
    assert report["unknown"] == 0
    seen = rig.ingest.snapshot()
    gaps = set(seen.gaps().get(rig.daemon.device_id, []))
    lost = {seq for eid, (seq, _n) in rig.producer.stored.items() if eid not in seen.payloads}
    assert lost == gaps, "every lost event must show as a gap in seq, and nothing else"


def test_broker_kill9_loses_nothing_with_end_to_end_delivery(e2e_rig: Rig) -> None:
    for fault in ["broker_kill", "cut", "broker_kill", "broker_restart"]:
        e2e_rig.inject(fault)
    report = e2e_rig.finish(expect_all=True)
    assert report["lost"] == 0, report
    assert report["corrupted"] == 0
    assert report["duplicated_after_dedupe"] == 0
    assert report["unknown"] == 0
    assert e2e_rig.ingest.snapshot().gaps() == {}
    assert e2e_rig.ingest.acker is not None and e2e_rig.ingest.acker.sent > 0
