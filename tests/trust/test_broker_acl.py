"""The broker side of provisioning against a REAL mosquitto: mutual TLS and per-device ACLs.

Certificates come from provisioning/issue-device-cert and the broker configuration from
provisioning/render-broker-config, both run here on temporary directories. The ACL read check
happens at delivery, so "cannot read" is proven by a marker: after a forbidden message, a
message the client may read is published; per-client delivery is ordered, so once the marker
arrived the forbidden one would have arrived before it.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from appliance.errors import TrustError
from appliance.trust.certs import FleetRoot
from appliance.trust.envelope import EnvelopeBuilder
from appliance.trust.keys import DeviceIdentity, DeviceSignature, verify_device_message

from .fleet import NOW, Fleet, make_verifier, open_db

REPO = Path(__file__).resolve().parents[2]
PROVISIONING = REPO / "provisioning"
NOT_AUTHORIZED = 0x87
# PUBACK success codes: 0x00, and 0x10 "no matching subscribers" (MQTT 5, 3.4.2.1).
OK = (0x00, 0x10)

# mosquitto and openssl are required tools of the test environment: a missing one fails here
# loudly instead of skipping the broker checks.
assert shutil.which("mosquitto") and shutil.which("openssl"), "mosquitto and openssl are required"


@dataclass
class Broker:
    port: int
    certs: Path
    ca_dir: Path
    proc: subprocess.Popen[bytes]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _issue(ca: Path, out: Path, name: str, *extra: str) -> None:
    subprocess.run(
        [str(PROVISIONING / "issue-device-cert"), "--ca-dir", str(ca), "--out", str(out),
         *extra, name],
        check=True, capture_output=True,
    )  # fmt: skip


def _raw_connect(port: int, ca: Path, cert: Path | None, key: Path | None) -> bytes:
    """TLS handshake + MQTT 3.1.1 CONNECT; returns the first bytes the broker answers."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    connect = bytes.fromhex("101000044d5154540402003c0004") + b"test"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(connect)
                return tls.recv(4)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return b""


def _start_broker(base: Path, certs: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Render the config for a free port and start mosquitto; retry if the port was taken."""
    for _attempt in range(3):
        port = _free_port()
        subprocess.run(
            [str(PROVISIONING / "render-broker-config"), "--out", str(base / "conf"),
             "--ca", str(certs / "ca.crt"), "--cert", str(certs / "localhost.crt"),
             "--key", str(certs / "localhost.key"), "--port", str(port),
             "--bind", "127.0.0.1", "--persistence", str(base / "persist"), "--run-as-root"],
            check=True, capture_output=True,
        )  # fmt: skip
        with (base / "mosquitto.log").open("ab") as log:
            proc = subprocess.Popen(
                ["mosquitto", "-c", str(base / "conf" / "mosquitto.conf")],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        # Ready when a real client completes CONNECT/CONNACK (not a log line, not a sleep).
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                answer = _raw_connect(
                    port, certs / "ca.crt", certs / "devA.crt", certs / "devA.key"
                )
            except OSError:
                answer = b""
            if answer[:1] == b"\x20":
                return proc, port
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.02)  # returns early only if the broker died
        proc.kill()
        proc.wait()
    pytest.fail("mosquitto did not start:\n" + (base / "mosquitto.log").read_text())


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    base = tmp_path_factory.mktemp("broker")
    ca, certs = base / "ca", base / "certs"
    _issue(ca, certs, "localhost", "--kind", "server", "--san", "DNS:localhost,IP:127.0.0.1")
    for dev in ("devA", "devB"):
        _issue(ca, certs, dev)
    _issue(ca, certs, "controller", "--kind", "controller")
    _issue(ca, certs, "directory", "--kind", "directory")
    _issue(ca, certs, "central", "--kind", "central")
    (base / "persist").mkdir()
    proc, port = _start_broker(base, certs)
    try:
        yield Broker(port=port, certs=certs, ca_dir=ca, proc=proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Client:
    """A paho MQTT 5 client with mutual TLS that records deliveries and PUBACK reason codes."""

    def __init__(self, broker: Broker, identity: str, client_id: str | None = None) -> None:
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.received: list[tuple[str, bytes, bool]] = []
        self.user_properties: dict[bytes, list[tuple[str, str]]] = {}
        self._acks: dict[int, int] = {}
        self._ack_cv = threading.Condition()
        self._suback = threading.Event()
        self._connected = threading.Event()
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"{identity}-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.c.tls_set(
            ca_certs=str(broker.certs / "ca.crt"),
            certfile=str(broker.certs / f"{identity}.crt"),
            keyfile=str(broker.certs / f"{identity}.key"),
        )
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_publish = self._on_publish
        self.c.on_subscribe = self._on_subscribe
        self.c.connect("localhost", broker.port, keepalive=30)
        self.c.loop_start()
        assert self._connected.wait(15), f"{identity} did not connect"

    def _on_connect(self, c: mqtt.Client, u: object, f: object, rc: ReasonCode, p: object) -> None:
        if not rc.is_failure:
            self._connected.set()

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        self.user_properties[msg.payload] = list(getattr(msg.properties, "UserProperty", []))
        self.messages.put((msg.topic, msg.payload, bool(msg.retain)))

    def _on_publish(
        self, c: mqtt.Client, u: object, mid: int, rc: ReasonCode, p: Properties
    ) -> None:
        with self._ack_cv:
            self._acks[mid] = rc.value
            self._ack_cv.notify_all()

    def _on_subscribe(
        self, c: mqtt.Client, u: object, mid: int, rcs: list[ReasonCode], p: Properties
    ) -> None:
        self.granted = [r.value for r in rcs]
        self._suback.set()

    def subscribe(self, topic: str, qos: int = 1) -> list[int]:
        self._suback.clear()
        self.c.subscribe(topic, qos)
        assert self._suback.wait(10)
        return self.granted

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        user_properties: list[tuple[str, str]] | None = None,
    ) -> int:
        """Publish and return the PUBACK reason code (QoS 1)."""
        props = None
        if user_properties:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = user_properties
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=props)
        with self._ack_cv:
            assert self._ack_cv.wait_for(lambda: info.mid in self._acks, timeout=10)
            return self._acks[info.mid]

    def wait_for(self, topic: str, payload: bytes, timeout: float = 10) -> None:
        """Collect deliveries until (topic, payload) arrives; everything seen is kept."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{topic} never arrived; got {self.received}"
            item = self.messages.get(timeout=remaining)
            self.received.append(item)
            if item[0] == topic and item[1] == payload:
                return

    def topics(self) -> set[str]:
        return {t for t, _p, _r in self.received}

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def clients(tls_broker: Broker) -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        c.close()


def _client(
    tls_broker: Broker, clients: list[Client], ident: str, cid: str | None = None
) -> Client:
    c = Client(tls_broker, ident, cid)
    clients.append(c)
    return c


def test_device_cannot_read_other_devices_commands(
    tls_broker: Broker, clients: list[Client]
) -> None:
    a = _client(tls_broker, clients, "devA")
    b = _client(tls_broker, clients, "devB")
    ctl = _client(tls_broker, clients, "controller")
    # Subscriptions outside A's tree are GRANTED (SUBACK 1): the ACL applies at delivery.
    assert a.subscribe("kiosk/devB/cmd") == [1]
    assert a.subscribe("kiosk/#") == [1]
    assert b.subscribe("kiosk/devB/cmd") == [1]
    assert ctl.publish("kiosk/devB/cmd", b"for-B") in OK
    assert ctl.publish("kiosk/devA/cmd", b"marker-A") in OK
    b.wait_for("kiosk/devB/cmd", b"for-B")  # delivered to its owner...
    a.wait_for("kiosk/devA/cmd", b"marker-A")  # ...and A's own command arrives,
    assert "kiosk/devB/cmd" not in a.topics()  # but B's never reached A.


def test_retained_config_of_other_device_not_delivered(
    tls_broker: Broker, clients: list[Client]
) -> None:
    ctl = _client(tls_broker, clients, "controller")
    assert ctl.publish("kiosk/devB/config/desired", b"cfg-B", retain=True) in OK
    assert ctl.publish("kiosk/devA/config/desired", b"cfg-A", retain=True) in OK
    a = _client(tls_broker, clients, "devA")
    a.subscribe("kiosk/devB/config/desired")
    a.subscribe("kiosk/devA/config/desired")
    a.wait_for("kiosk/devA/config/desired", b"cfg-A")
    assert "kiosk/devB/config/desired" not in a.topics()
    b = _client(tls_broker, clients, "devB")
    b.subscribe("kiosk/devB/config/desired")
    b.wait_for("kiosk/devB/config/desired", b"cfg-B")
    # Clean up the retained messages for other tests.
    ctl.publish("kiosk/devB/config/desired", b"", retain=True)
    ctl.publish("kiosk/devA/config/desired", b"", retain=True)


@pytest.mark.parametrize(
    "topic",
    [
        "kiosk/devB/status",
        "kiosk/devB/reply",
        "kiosk/devB/events/capture",
        "kiosk/devB/config/reported",
        "kiosk/devB/cmd",
        "kiosk/devA/cmd",  # a device cannot command itself either
        "kiosk/devA/config/desired",
        "kiosk/group/hanoi/cmd",
        "kiosk/claims/devB/request",
        "kiosk/claims/devA/response",
    ],
)
def test_device_cannot_write_outside_its_tree(
    tls_broker: Broker, clients: list[Client], topic: str
) -> None:
    ctl = _client(tls_broker, clients, "controller")
    ctl.subscribe("kiosk/#")
    a = _client(tls_broker, clients, "devA")
    assert a.publish(topic, b"forged") == NOT_AUTHORIZED
    assert a.publish("kiosk/devA/telemetry", b"marker") in OK
    ctl.wait_for("kiosk/devA/telemetry", b"marker")
    assert (topic, b"forged", False) not in ctl.received


def test_device_uses_its_own_topics(tls_broker: Broker, clients: list[Client]) -> None:
    ctl = _client(tls_broker, clients, "controller")
    ctl.subscribe("kiosk/#")
    a = _client(tls_broker, clients, "devA")
    for suffix in ("status", "telemetry", "events/fingerprint", "reply", "config/reported"):
        assert a.publish(f"kiosk/devA/{suffix}", suffix.encode()) in OK
        ctl.wait_for(f"kiosk/devA/{suffix}", suffix.encode())
    assert a.publish("kiosk/claims/devA/request", b"claim") in OK
    ctl.wait_for("kiosk/claims/devA/request", b"claim")
    a.subscribe("kiosk/group/+/cmd")
    a.subscribe("kiosk/claims/devA/response")
    assert ctl.publish("kiosk/group/hanoi/cmd", b"group") in OK
    a.wait_for("kiosk/group/hanoi/cmd", b"group")
    assert ctl.publish("kiosk/claims/devA/response", b"welcome") in OK
    a.wait_for("kiosk/claims/devA/response", b"welcome")


def test_citizen_lookup_topics(tls_broker: Broker, clients: list[Client]) -> None:
    """A kiosk asks only as itself and reads only its own answers; only the directory
    identity answers (docs/central.md "Citizen directory")."""
    directory = _client(tls_broker, clients, "directory")
    a = _client(tls_broker, clients, "devA")
    b = _client(tls_broker, clients, "devB")
    directory.subscribe("kiosk/+/lookup/request")
    a.subscribe("kiosk/+/lookup/response")
    b.subscribe("kiosk/devB/lookup/response")
    assert a.publish("kiosk/devB/lookup/request", b"as B") == NOT_AUTHORIZED
    assert a.publish("kiosk/devA/lookup/response", b"forged") == NOT_AUTHORIZED
    assert a.publish("kiosk/devA/lookup/request", b"as A") in OK
    directory.wait_for("kiosk/devA/lookup/request", b"as A")
    assert ("kiosk/devB/lookup/request", b"as B", False) not in directory.received
    assert directory.publish("kiosk/devB/lookup/response", b"for B") in OK
    assert directory.publish("kiosk/devA/lookup/response", b"for A") in OK
    b.wait_for("kiosk/devB/lookup/response", b"for B")
    a.wait_for("kiosk/devA/lookup/response", b"for A")
    assert "kiosk/devB/lookup/response" not in a.topics()
    assert ("kiosk/devA/lookup/response", b"forged", False) not in a.received
    # the directory reads nothing else, and writes nowhere else
    assert directory.publish("kiosk/devA/cmd", b"cmd") == NOT_AUTHORIZED
    assert directory.publish("kiosk/devA/upload/receipt", b"receipt") == NOT_AUTHORIZED


def test_card_issuance_topics(tls_broker: Broker, clients: list[Client]) -> None:
    """A station asks for a card's data only as itself and reads only its own issuance
    packages; only the central identity answers (docs/local-api.md "Card issuance")."""
    central = _client(tls_broker, clients, "central")
    a = _client(tls_broker, clients, "devA")
    b = _client(tls_broker, clients, "devB")
    directory = _client(tls_broker, clients, "directory")
    central.subscribe("kiosk/+/card/request")
    a.subscribe("kiosk/+/card/issuance")
    b.subscribe("kiosk/devB/card/issuance")
    assert a.publish("kiosk/devB/card/request", b"as B") == NOT_AUTHORIZED
    assert a.publish("kiosk/devA/card/issuance", b"forged") == NOT_AUTHORIZED
    assert directory.publish("kiosk/devA/card/issuance", b"not the centre") == NOT_AUTHORIZED
    assert a.publish("kiosk/devA/card/request", b"as A") in OK
    central.wait_for("kiosk/devA/card/request", b"as A")
    assert ("kiosk/devB/card/request", b"as B", False) not in central.received
    assert central.publish("kiosk/devB/card/issuance", b"for B") in OK
    assert central.publish("kiosk/devA/card/issuance", b"for A") in OK
    b.wait_for("kiosk/devB/card/issuance", b"for B")
    a.wait_for("kiosk/devA/card/issuance", b"for A")
    assert "kiosk/devB/card/issuance" not in a.topics()
    assert ("kiosk/devA/card/issuance", b"forged", False) not in a.received
    assert ("kiosk/devA/card/issuance", b"not the centre", False) not in a.received


def test_spoofed_client_id_gains_nothing(tls_broker: Broker, clients: list[Client]) -> None:
    """devA's certificate with client id "devB": %u patterns still mean devA."""
    spoof = _client(tls_broker, clients, "devA", cid="devB")
    ctl = _client(tls_broker, clients, "controller")
    ctl.subscribe("kiosk/#")
    spoof.subscribe("kiosk/devB/cmd")
    spoof.subscribe("kiosk/devA/cmd")
    assert ctl.publish("kiosk/devB/cmd", b"secret-B") in OK
    assert ctl.publish("kiosk/devA/cmd", b"marker") in OK
    spoof.wait_for("kiosk/devA/cmd", b"marker")
    assert "kiosk/devB/cmd" not in spoof.topics()
    assert spoof.publish("kiosk/devB/status", b"online") == NOT_AUTHORIZED


def test_tls_client_certificate_required(tls_broker: Broker, tmp_path: Path) -> None:
    ca = tls_broker.certs / "ca.crt"
    # The probe itself works with a fleet certificate: CONNACK (0x20).
    assert (
        _raw_connect(
            tls_broker.port, ca, tls_broker.certs / "devA.crt", tls_broker.certs / "devA.key"
        )[:1]
        == b"\x20"
    )
    # No client certificate: the TLS session is torn down, no CONNACK.
    assert _raw_connect(tls_broker.port, ca, None, None)[:1] != b"\x20"
    # A certificate from another CA with the same CN: refused.
    _issue(tmp_path / "rogue-ca", tmp_path / "rogue", "devA")
    got = _raw_connect(
        tls_broker.port, ca, tmp_path / "rogue" / "devA.crt", tmp_path / "rogue" / "devA.key"
    )
    assert got[:1] != b"\x20"


def test_signed_command_and_signed_reply_through_tls_broker(
    tls_broker: Broker, clients: list[Client], tmp_path: Path
) -> None:
    """The trust layer end to end over the real broker: the controller signs a command, the
    device verifies it (replay state in a SQLite file) and answers with a signed reply that
    the controller verifies; replayed, mis-targeted, unsigned, forged, expired and wrong-role
    commands are refused with their codes."""
    fleet = Fleet(FleetRoot.create(tmp_path / "root"), tmp_path)
    op = fleet.operator(roles=("operator",), devices=("devA",))
    builder = EnvelopeBuilder(op, clock=fleet.clock)
    device_key = DeviceIdentity.create(tmp_path / "devA-state")
    conn = open_db(tmp_path / "devA.db")
    verifier = make_verifier(fleet, conn, device_id="devA", groups=())

    a = _client(tls_broker, clients, "devA")
    ctl = _client(tls_broker, clients, "controller")
    a.subscribe("kiosk/devA/cmd")
    ctl.subscribe("kiosk/devA/reply")

    envelope = builder.build("enroll.start", b'{"session": "s-42"}', "devA")
    forged = json.loads(builder.build("enroll.start", b"{}", "devA"))
    forged["body"] = json.loads(envelope)["body"]  # another envelope's body under this signature
    batch = [
        envelope,
        envelope,  # replayed
        builder.build("enroll.start", b"{}", "devB"),  # wrong target
        b'{"id": "c1", "cmd": "enroll.start", "args": {}}',  # unsigned
        json.dumps(forged).encode(),  # forged
        builder.build("enroll.start", b"{}", "devA", issued_at=NOW - 3600),  # expired
        builder.build("config.set", b"{}", "devA"),  # operator may not configure
    ]
    for msg in batch:
        assert ctl.publish("kiosk/devA/cmd", msg) in OK
    codes = []
    for _ in batch:
        topic, payload, _retain = a.messages.get(timeout=10)
        assert topic == "kiosk/devA/cmd"
        decision = verifier.check(payload)
        codes.append(decision.code)
        if decision.accepted:
            assert decision.payload == b'{"session": "s-42"}'
            reply = json.dumps({"ok": True, "nonce": decision.nonce}).encode()
            header = device_key.sign(reply).to_header()
            assert a.publish("kiosk/devA/reply", reply, user_properties=[("sig", header)]) in OK
    assert codes == [
        "ok",
        "replayed",
        "wrong_target",
        "unsigned",
        "bad_signature",
        "expired",
        "forbidden_role",
    ]

    topic, reply, _retain = ctl.messages.get(timeout=10)
    props = dict(ctl.user_properties[reply])
    verify_device_message(device_key.public_key, reply, DeviceSignature.from_header(props["sig"]))
    with pytest.raises(TrustError):
        verify_device_message(
            device_key.public_key, reply + b" ", DeviceSignature.from_header(props["sig"])
        )
    conn.close()
