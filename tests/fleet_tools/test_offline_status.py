"""Offline is not forgery (issue 12 point 5): the REAL daemon on the mutual-TLS mosquitto of
provisioning/ (the shipped ACL), signed commands only. Its Last Will (delivered by the broker
after a ``kill -9``) and its clean-stop status are signed with the device key, so ``fleet
watch`` and ``fleet devices`` show the kiosk as lost / offline with a valid signature and when
it was last seen; an altered copy of the same status is still flagged."""

from __future__ import annotations

import json
import queue
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.fleet import devicescli
from appliance.fleet.conn import FleetMqtt
from appliance.fleet.registry import DeviceRecord, FleetRegistry
from appliance.fleet.watch import EventStream, Seen
from appliance.fleet.watchcli import SeenRecorder
from appliance.store import Store
from appliance.trust.certs import ROOT_PUB_FILE, FleetRoot
from appliance.trust.keys import encode_public_key, key_id, load_public_key
from tests.helpers import DaemonProcess, wait_for
from tests.provisioning.tlsbroker import TlsBroker, issue, tls_broker

DEV = "kiosk-off1"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    with tls_broker(tmp_path_factory.mktemp("offline")) as b:
        issue(b.ca_dir, b.certs, DEV)
        yield b


def _daemon(base: Path, broker: TlsBroker, home: Path) -> DaemonProcess:
    certs = broker.certs
    via = types.SimpleNamespace(host="localhost", port=broker.port)
    return DaemonProcess(
        base,
        via,  # type: ignore[arg-type]
        DEV,
        extra_toml="[commands]\nallow_unsigned = false\n"
        f'[trust]\nroot_keys = ["{home / ROOT_PUB_FILE}"]\n'
        "[mqtt.tls]\nenabled = true\n"
        f'ca_file = "{certs / "ca.crt"}"\n'
        f'cert_file = "{certs / f"{DEV}.crt"}"\n'
        f'key_file = "{certs / f"{DEV}.key"}"\n',
    )


def _next_status(q: queue.Queue[Seen], want: str, timeout: float = 30.0) -> Seen:
    """The next status the watcher showed whose state is ``want`` (skips the others)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = q.get(timeout=max(0.01, deadline - time.monotonic()))
        if seen.kind == "status" and seen.to_json()["state"] == want:
            return seen


def _devices_row(broker: TlsBroker, home: Path, capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    capsys.readouterr()
    args = ["--json", "--listen", "0.5", "--home", str(home), *broker.flags()]
    assert devicescli.main(args) == 0
    rows = {r["device"]: r for r in json.loads(capsys.readouterr().out)}
    return rows[DEV]  # type: ignore[no-any-return]


def test_lost_and_stopped_kiosks_are_signed_and_show_last_seen(
    broker: TlsBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    FleetRoot.create(home)
    d = _daemon(tmp_path / "kiosk", broker, home)
    seen: queue.Queue[Seen] = queue.Queue()
    # Before the device key is registered the watcher shows "unknown"; the stream reads the
    # keys it was given, so it is started after registration below.
    d.start()
    stream: EventStream | None = None
    try:
        wait_for((d.state_dir / "device.pub").exists, 30, "the device key")
        pub = load_public_key(d.state_dir / "device.pub")
        FleetRegistry(home).save_device(
            DeviceRecord(
                device_id=DEV,
                public_key=encode_public_key(pub).decode().strip(),
                key_id=key_id(pub),
            )
        )
        stream = EventStream(
            broker.opts(), FleetRegistry(home).device_keys(), seen.put, status=True
        ).start()
        birth = _next_status(seen, "online")
        assert birth.verified.status == "ok", birth.verified
        connected_at = birth.body["connected_at"]
        # An event after the connect: later contact than the will (written at connect) knows.
        store = Store(d.state_dir)
        try:
            store.outbox.put("ui.tap", f"kiosk/{DEV}/events/ui.tap", {"n": 1})
        finally:
            store.close()
        event = seen.get(timeout=30)
        while event.kind != "event":  # e.g. the live birth after the retained one
            event = seen.get(timeout=30)
        assert event.verified.status == "ok", event.verified

        # kill -9: the broker sends the Last Will written (and signed) at connect time.
        t_kill = time.time()
        d.kill9()
        will = _next_status(seen, "lost")
        assert will.verified.status == "ok", will.verified
        assert will.body["reason"] == "lost" and will.body["connected_at"] == connected_at
        assert will.body["last_seen"] == connected_at
        # Last seen: the latest contact this watcher had, the event, not the stale will.
        assert will.last_seen is not None and event.received_at <= will.last_seen <= t_kill
        assert "SIGNATURE INVALID" not in will.line() and "last seen" in will.line()
        row = _devices_row(broker, home, capsys)
        assert row["state"] == "lost" and row["signature"] == "ok", row
        assert row["last_seen"] == pytest.approx(connected_at)  # all a one-shot look can know
        # What a running watcher records in the fleet home (fleet watch does every 10 s).
        SeenRecorder(FleetRegistry(home), stream).flush()
        row = _devices_row(broker, home, capsys)
        assert row["state"] == "lost" and row["last_seen"] == pytest.approx(will.last_seen)

        # A clean stop: signed offline status with reason shutdown and the stop time.
        d.start()
        again = _next_status(seen, "online")
        assert again.verified.status == "ok" and again.body["connected_at"] > connected_at
        t_stop = time.time()
        assert d.terminate() == 0
        off = _next_status(seen, "offline")
        assert off.verified.status == "ok", off.verified
        assert off.body["reason"] == "shutdown" and off.last_seen is not None
        assert off.last_seen >= t_stop
        row = _devices_row(broker, home, capsys)
        assert row["state"] == "offline" and row["signature"] == "ok", row
        assert row["last_seen"] >= t_stop and row["connected_at"] > connected_at

        # The same retained status, altered (last seen moved, signature kept): flagged.
        with FleetMqtt(broker.opts()) as reader:
            q = reader.collector(f"kiosk/{DEV}/status")
            reader.subscribe([f"kiosk/{DEV}/status"])
            original = q.get(timeout=10)
        # Published with the kiosk's own certificate (the ACL lets only it write its status).
        with FleetMqtt(broker.opts(DEV)) as raw:
            body = json.loads(original.payload)
            body["last_seen"] = body["last_seen"] + 86400
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = [("sig", original.user_properties["sig"])]
            info = raw.client.publish(
                f"kiosk/{DEV}/status", json.dumps(body).encode(), 1, True, props
            )
            info.wait_for_publish(10)
            forged = _next_status(seen, "offline")
        assert forged.verified.status == "bad"
        assert "SIGNATURE INVALID" in forged.line()
        # A forged status is no contact: last seen stays what the genuine messages said.
        assert forged.last_seen == off.last_seen
        row = _devices_row(broker, home, capsys)
        assert row["signature"] == "bad", row
        # Neither the forged status nor the recorded contact is taken for a forged kiosk.
        assert row.get("last_seen") is None, row
    finally:
        if stream is not None:
            stream.stop()
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)
