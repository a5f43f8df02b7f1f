"""Signed commands through the real daemon and a real mosquitto: accepted, and every refusal
with its code; the device's signature on replies verifies with its public key."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from nacl.signing import SigningKey
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.devtools.broker import Mosquitto
from appliance.devtools.controller import Controller
from appliance.store import Store
from appliance.trust.certs import ROOT_PUB_FILE, FleetRoot, OperatorKey
from appliance.trust.envelope import EnvelopeBuilder
from appliance.trust.keys import (
    DeviceSignature,
    b64decode,
    load_public_key,
    verify_device_message,
)
from tests.helpers import DaemonProcess, wait_for, wait_online

DEV = "kiosk-signed"


class SignedClient:
    """Publishes raw payloads with a response topic and collects replies with their 'sig'."""

    def __init__(self, broker: Mosquitto) -> None:
        self.c = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.replies: dict[bytes, tuple[bytes, str | None]] = {}
        self.topic = f"ctl/{uuid.uuid4().hex}/reply"
        self.c.on_message = self._on_message
        self.c.connect(broker.host, broker.port)
        self.c.subscribe(self.topic, qos=1)
        self.c.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        props = msg.properties
        sig = dict(getattr(props, "UserProperty", []) or []).get("sig")
        self.replies[bytes(props.CorrelationData)] = (bytes(msg.payload), sig)

    def request(self, payload: bytes, timeout: float = 10) -> tuple[dict[str, Any], bytes, str]:
        corr = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.topic
        props.CorrelationData = corr
        self.c.publish(f"kiosk/{DEV}/cmd", payload, qos=1, properties=props)
        raw, sig = wait_for(lambda: self.replies.get(corr), timeout, "a reply")
        return json.loads(raw), raw, sig

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def fleet(tmp_path: Path) -> FleetRoot:
    return FleetRoot.create(tmp_path / "fleet")


def operator(
    root: FleetRoot,
    roles: tuple[str, ...],
    devices: tuple[str, ...] = (DEV,),
    not_after: float | None = None,
) -> EnvelopeBuilder:
    sk = SigningKey.generate()
    now = int(time.time())
    end = int(not_after or now + 3600)
    cert = root.issue(
        bytes(sk.verify_key),
        roles=roles,
        devices=devices,
        not_after=end,
        issued_at=min(now - 60, end - 3600),
        name="t",
    )
    return EnvelopeBuilder(OperatorKey(sk, cert))


def request(cmd: str, cid: str, args: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"id": cid, "cmd": cmd, "args": args or {}}).encode()


def _inner(message: bytes) -> bytes:
    """The request inside an envelope (or the message itself when it is a plain request)."""
    obj = json.loads(message)
    if "body" not in obj:
        return message
    return b64decode(json.loads(b64decode(obj["body"], what="body"))["payload"], what="payload")


def test_signed_commands_accepted_and_every_refusal_has_its_code(
    broker: Mosquitto,
    daemon_factory: Callable[..., DaemonProcess],
    fleet: FleetRoot,
    tmp_path: Path,
    controller: Controller,
) -> None:
    d = daemon_factory(broker, DEV)
    root_pub = tmp_path / "fleet" / ROOT_PUB_FILE
    d.config_path.write_text(
        d.config_path.read_text()
        + f'[commands]\nallow_unsigned = false\n[trust]\nroot_keys = ["{root_pub}"]\n'
    )
    t0 = time.time()
    d.start()
    wait_online(controller, DEV, after=t0)
    client = SignedClient(broker)
    try:
        op = operator(fleet, ("operator",))
        admin = operator(fleet, ("admin",))
        wait_for((d.state_dir / "device.pub").exists, 15, "the device key")
        device_pub = load_public_key(d.state_dir / "device.pub")

        # accepted, and the reply is signed by the device
        reply, raw, sig = client.request(op.build("ping", request("ping", "s1"), DEV))
        assert reply["ok"] is True, reply
        verify_device_message(device_pub, raw, DeviceSignature.from_header(sig))

        cases: list[tuple[bytes, str]] = [
            (request("ping", "u1"), "unsigned"),
            (op.build("ping", request("ping", "w1"), "kiosk-other"), "wrong_target"),
            (op.build("diagnostics", request("diagnostics", "r1"), DEV), "forbidden_role"),
            (
                op.build(
                    "ping",
                    request("ping", "e1"),
                    DEV,
                    issued_at=int(time.time()) - 4000,
                    lifetime_s=60,
                ),
                "expired",
            ),
            (op.build("ping", request("status", "m1"), DEV), "malformed_envelope"),
        ]
        # a forged envelope: the signature of one body over another
        env = json.loads(op.build("ping", request("ping", "f1"), DEV))
        other = json.loads(op.build("ping", request("ping", "f2"), DEV))
        env["sig"] = other["sig"]
        cases.append((json.dumps(env).encode(), "bad_signature"))
        # an untrusted root
        stranger = FleetRoot.create(tmp_path / "stranger")
        cases.append(
            (
                operator(stranger, ("operator",)).build("ping", request("ping", "x1"), DEV),
                "untrusted_issuer",
            )
        )
        # an expired certificate
        old = operator(fleet, ("operator",), not_after=time.time() - 3600)
        cases.append((old.build("ping", request("ping", "c1"), DEV), "cert_expired"))
        # a signed command this kiosk does not have: unknown_command, once authenticated
        cases.append(
            (admin.build("format.disk", request("format.disk", "k1"), DEV), "unknown_command")
        )
        for payload, code in cases:
            reply, _raw, _sig = client.request(payload)
            assert reply["ok"] is False, (code, reply)
            assert reply["error"]["code"] == code, (code, reply)
            # every refusal names the request id, read from the envelope when it is one
            assert reply["id"] == json.loads(_inner(payload))["id"], (code, reply)
        reply, _raw, _sig = client.request(b"\x00 not a command")
        assert (reply["id"], reply["error"]["code"]) == (None, "malformed_envelope")

        # the same envelope delivered again (a broker re-delivery, a second publish): the
        # stored first reply, byte for byte, and signed by the device; never "replayed"
        first = admin.build("diagnostics", request("diagnostics", "d1"), DEV)
        reply1, raw1, _sig = client.request(first)
        assert reply1["ok"] is True
        reply2, raw2, sig2 = client.request(first)
        assert raw2 == raw1, reply2
        verify_device_message(device_pub, raw2, DeviceSignature.from_header(sig2))
    finally:
        client.close()
    d.terminate()
    store = Store(d.state_dir)
    audited = {r["outcome"] for r in store.audit_tail(200)}
    store.close()
    for code in (
        "unsigned",
        "wrong_target",
        "forbidden_role",
        "expired",
        "bad_signature",
        "untrusted_issuer",
        "cert_expired",
        "unknown_command",
        "repeat",
    ):
        assert code in audited, code
    assert "replayed" not in audited


def test_redelivery_after_a_kill_gets_the_stored_first_reply(
    broker: Mosquitto,
    daemon_factory: Callable[..., DaemonProcess],
    fleet: FleetRoot,
    tmp_path: Path,
    controller: Controller,
) -> None:
    """A signed command that ran, delivered again after ``kill -9`` and a restart (what the
    broker does with a message whose PUBACK the crash cut off): the stored first reply, and
    the command (a note, which emits an event) does not run twice."""
    d = daemon_factory(broker, DEV)
    root_pub = tmp_path / "fleet" / ROOT_PUB_FILE
    d.config_path.write_text(
        d.config_path.read_text()
        + f'[commands]\nallow_unsigned = false\n[trust]\nroot_keys = ["{root_pub}"]\n'
    )
    t0 = time.time()
    d.start()
    wait_online(controller, DEV, after=t0)
    tech = operator(fleet, ("technician",))
    env = tech.build("note", request("note", "n1", {"text": "once"}), DEV)
    client = SignedClient(broker)
    try:
        first, raw1, _sig = client.request(env)
        assert first["ok"] is True, first
    finally:
        client.close()
    d.kill9()
    t1 = time.time()
    d.start()
    wait_online(controller, DEV, after=t1)
    client = SignedClient(broker)
    try:
        again, raw2, _sig = client.request(env)
    finally:
        client.close()
    d.terminate()
    assert raw2 == raw1, again
    store = Store(d.state_dir)
    try:
        with store.lock:
            notes = store.conn.execute(
                "SELECT count(*) FROM audit WHERE action = 'note' AND outcome = 'accepted'"
            ).fetchone()[0]
        outcomes = [r["outcome"] for r in store.audit_tail(50) if r["action"] == "note"]
    finally:
        store.close()
    assert notes == 1
    assert "repeat" in outcomes and "replayed" not in outcomes


def test_unprovisioned_kiosk_refuses_everything(
    broker: Mosquitto, daemon_factory: Callable[..., DaemonProcess], controller: Controller
) -> None:
    d = daemon_factory(broker, DEV)
    d.config_path.write_text(d.config_path.read_text() + "[commands]\nallow_unsigned = false\n")
    t0 = time.time()
    d.start()
    wait_online(controller, DEV, after=t0)
    client = SignedClient(broker)
    try:
        reply, _raw, _sig = client.request(request("ping", "p1"))
        assert reply["error"]["code"] == "untrusted_issuer"
        assert "provision" in reply["error"]["message"]
    finally:
        client.close()
    d.terminate()


def test_events_are_signed_by_the_device_when_stored(
    broker: Mosquitto, daemon_factory: Callable[..., DaemonProcess], controller: Controller
) -> None:
    d = daemon_factory(broker, DEV, dev=True)  # the note is sent unsigned
    t0 = time.time()
    d.start()
    wait_online(controller, DEV, after=t0)
    got: list[tuple[bytes, str | None]] = []
    c = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
    )

    def on_message(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        sig = dict(getattr(msg.properties, "UserProperty", []) or []).get("sig")
        got.append((bytes(msg.payload), sig))

    subscribed: list[bool] = []
    c.on_message = on_message
    c.on_subscribe = lambda *_a: subscribed.append(True)
    c.connect(broker.host, broker.port)
    c.subscribe(f"kiosk/{DEV}/events/note", qos=1)
    c.loop_start()
    try:
        wait_for(lambda: subscribed, 10, "SUBACK")
        assert controller.request(DEV, "note", {"text": "signed?"})["ok"]
        payload, sig = wait_for(lambda: got and got[0], 10, "the note event")
        assert sig is not None
        pub = load_public_key(d.state_dir / "device.pub")
        verify_device_message(pub, payload, DeviceSignature.from_header(sig))
        tampered = payload.replace(b"signed?", b"signed!")
        with pytest.raises(Exception, match=r"signature|verify"):
            verify_device_message(pub, tampered, DeviceSignature.from_header(sig))
    finally:
        c.disconnect()
        c.loop_stop()
        reset = getattr(c, "_reset_sockets", None)
        if callable(reset):
            reset()
    d.terminate()
