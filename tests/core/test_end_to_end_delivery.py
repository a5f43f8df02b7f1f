"""End-to-end delivery (``mqtt.delivery = "end_to_end"``) through the real daemon, a real
mosquitto and the real ingest: outbox rows stay after the broker's PUBACK until the ingest
acknowledges them, events the broker dropped are sent again without a reconnect, and only an
acknowledgement signed by an ``ingest`` certificate of the fleet root deletes anything on a
provisioned kiosk. (Broker crashes: tests/fleet/test_faults.py.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from appliance.devtools.broker import Mosquitto
from appliance.devtools.controller import Controller
from appliance.fleet.ingest import Ingest
from appliance.store import Store
from appliance.trust.certs import ROOT_PUB_FILE, FleetRoot
from appliance.trust.outboxack import build_outbox_ack
from tests.helpers import DaemonProcess, wait_for
from tests.trust.fleet import live_key

ENV = {"APPLIANCE_MQTT__DELIVERY": "end_to_end", "APPLIANCE_MQTT__DELIVERY_RESEND_S": "1"}


def _put(state_dir: Path, device: str, n: int) -> dict[int, str]:
    store = Store(state_dir)
    try:
        rows = store.outbox.put_many(
            [("ui.tap", f"kiosk/{device}/events/ui.tap", {"n": i}) for i in range(n)]
        )
    finally:
        store.close()
    return dict(rows)


def _depth(state_dir: Path) -> int:
    store = Store(state_dir)
    try:
        return store.outbox.depth()
    finally:
        store.close()


def _pubacked(controller: Controller, device: str) -> int:
    """Events the daemon's broker acknowledged (PUBACK), from its diagnostics."""
    reply = controller.request(device, "diagnostics")
    assert reply["ok"], reply
    return int(reply["result"]["mqtt"]["events_published"])


def test_events_the_broker_dropped_are_sent_again_and_deleted_only_when_acknowledged(
    broker: Mosquitto, controller: Controller, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    d = daemon_factory(broker, "kiosk-e2e-1", env=ENV, dev=True).start()
    watcher = Ingest(broker.host, broker.port, client_id="e2e-watch", keep_payloads=True).start()
    try:
        wait_for(lambda: d.device_id in watcher.snapshot().devices_seen, 20, "the birth")
        stored = _put(d.state_dir, d.device_id, 20)
        # Published and PUBACKed by the broker, seen by an ingest that does not acknowledge:
        # the kiosk keeps every row.
        wait_for(lambda: set(stored.values()) <= set(watcher.snapshot().payloads), 20, "events")
        wait_for(lambda: _pubacked(controller, d.device_id) >= 20, 20, "the 20 PUBACKs")
        assert _depth(d.state_dir) == 20
    finally:
        watcher.stop()  # ends its session: from now on the broker drops the kiosk's events
    more = _put(d.state_dir, d.device_id, 5)
    # PUBACKed by a broker with no subscriber for them: dropped there.
    wait_for(lambda: _pubacked(controller, d.device_id) >= 25, 20, "the 5 PUBACKs")
    ingest = Ingest(
        broker.host, broker.port, client_id="e2e-ack", keep_payloads=True, ack=True
    ).start()
    try:
        want = set(stored.values()) | set(more.values())
        wait_for(lambda: want <= set(ingest.snapshot().payloads), 30, "every event re-sent")
        wait_for(lambda: _depth(d.state_dir) == 0, 20, "the outbox emptied by the acks")
    finally:
        ingest.stop()
    log = d.log()
    assert log.count("mqtt: connected to") == 1, "re-sent by the timer, not by a reconnect"
    assert "not acknowledged by the ingest" in log and "sending the" in log
    d.terminate()


def test_a_provisioned_kiosk_deletes_only_on_an_ingest_signed_acknowledgement(
    broker: Mosquitto, daemon_factory: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    dev = "kiosk-e2e-2"
    root = FleetRoot.create(tmp_path / "fleet")
    d = daemon_factory(broker, dev, env=ENV)
    root_pub = tmp_path / "fleet" / ROOT_PUB_FILE
    d.config_path.write_text(
        d.config_path.read_text()
        + f'[commands]\nallow_unsigned = false\n[trust]\nroot_keys = ["{root_pub}"]\n'
    )
    d.start()
    watcher = Ingest(broker.host, broker.port, client_id="e2e-watch2", keep_payloads=True).start()
    raw = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
    )
    raw.connect(broker.host, broker.port)
    raw.loop_start()
    try:
        wait_for(lambda: dev in watcher.snapshot().devices_seen, 20, "the birth")
        stored = _put(d.state_dir, dev, 10)
        last = max(stored)
        wait_for(lambda: set(stored.values()) <= set(watcher.snapshot().payloads), 20, "events")
        topic = f"kiosk/{dev}/outbox/ack"
        forged = [
            build_outbox_ack(None, dev, [(1, last, stored[last])]),  # unsigned
            build_outbox_ack(live_key(root, ("operator",), dev), dev, [(1, last, stored[last])]),
            build_outbox_ack(
                live_key(FleetRoot.create(tmp_path / "other"), ("ingest",), dev),
                dev,
                [(1, last, stored[last])],
            ),
        ]
        for payload in forged:
            raw.publish(topic, payload, qos=1).wait_for_publish(5)
        wait_for(lambda: d.log().count("outbox acknowledgement refused") >= 3, 20, "refusals")
        log = d.log()
        for code in ("unsigned", "forbidden_role", "untrusted_issuer"):
            assert f"outbox acknowledgement refused ({code})" in log
        assert _depth(d.state_dir) == 10
        # A signed acknowledgement of a part deletes exactly that part.
        key = live_key(root, ("ingest",), dev)
        raw.publish(topic, build_outbox_ack(key, dev, [(1, 4, stored[4])]), qos=1)
        wait_for(lambda: _depth(d.state_dir) == 6, 20, "the acknowledged part deleted")
        # The real ingest with the same certificate acknowledges the rest.
        ingest = Ingest(
            broker.host, broker.port, client_id="e2e-ack2", ack=True, ack_key=key
        ).start()
        try:
            wait_for(lambda: _depth(d.state_dir) == 0, 30, "the rest acknowledged")
        finally:
            ingest.stop()
    finally:
        raw.disconnect()
        raw.loop_stop()
        watcher.stop()
    d.terminate()
