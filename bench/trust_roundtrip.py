"""Signed command round trip through mosquitto against an unsigned bare echo in the same run.

    .venv/bin/python bench/trust_roundtrip.py [--n 2000]

Three responder processes on one loopback broker (TCP_NODELAY on the broker and every socket):
  bare           echoes the request (the unsigned baseline)
  signed_normal  verifies the signed envelope (CommandVerifier, replay state in a SQLite WAL
                 file at synchronous=NORMAL) and answers with a reply signed by its device key
  signed_full    the same with synchronous=FULL (one fsync per accepted command; the daemon's
                 Store defaults to FULL)
The requester signs every request with an operator key (EnvelopeBuilder) and verifies every
signed reply's device signature, so both ends of the trust cost are inside the measured time.
This is the trust layer's overhead on a bare responder; the issue's figure (signed daemon
round trip vs the unsigned daemon ping, target <= 1.5x) needs the daemon wiring.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
from _common import emit, summary_ms
from nacl.signing import SigningKey
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.devtools.broker import Mosquitto
from appliance.trust.certs import FleetRoot, OperatorKey
from appliance.trust.envelope import EnvelopeBuilder
from appliance.trust.keys import DeviceSignature, b64decode, verify_device_message

RESPONDER = r"""
import json, socket, sqlite3, sys, threading
from pathlib import Path
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from appliance.trust.adapter import request_command
from appliance.trust.envelope import TRUST_SCHEMA_SQL, CommandVerifier
from appliance.trust.keys import DeviceIdentity, b64encode, load_public_key

name, port, work, sync = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
signed = name != "bare"
pub = ""
if signed:
    conn = sqlite3.connect(work / f"{name}.db", isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={sync}")
    for stmt in TRUST_SCHEMA_SQL:
        conn.execute(stmt)
    verifier = CommandVerifier(roots=[load_public_key(work / "root" / "root.pub")],
                               device_id=name, role_table={"ping": "operator"},
                               conn=conn, lock=threading.Lock())
    ident = DeviceIdentity.create(work / f"{name}-key")
    pub = b64encode(ident.public_key)

c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=name,
                protocol=MQTTProtocolVersion.MQTTv5)
c.on_socket_open = lambda _c, _u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

def on_message(cl, _u, msg):
    props = Properties(PacketTypes.PUBLISH)
    props.CorrelationData = msg.properties.CorrelationData
    if signed:
        d = verifier.check(msg.payload, payload_command=request_command)
        body = json.dumps({"ok": d.accepted, "code": d.code}).encode()
        props.UserProperty = [("sig", ident.sign(body).to_header())]
    else:
        body = msg.payload
    cl.publish(msg.properties.ResponseTopic, body, qos=1, properties=props)

c.on_message = on_message
def on_connect(cl, *_):
    cl.subscribe(f"kiosk/{name}/cmd", qos=1)
    print("ready", pub, flush=True)
c.on_connect = on_connect
c.connect("127.0.0.1", port)
c.loop_forever()
"""


class Requester:
    def __init__(self, port: int) -> None:
        self.c = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id="bench-requester",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.c.on_socket_open = lambda _c, _u, s: s.setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )
        self.c.on_message = self._on_message
        self._cv = threading.Condition()
        self._replies: dict[bytes, tuple[bytes, list[tuple[str, str]]]] = {}
        ready = threading.Event()
        self.c.on_subscribe = lambda *_a: ready.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.c.subscribe("bench/replies", qos=1)
        if not ready.wait(10):
            raise SystemExit("requester did not subscribe")

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        with self._cv:
            corr = bytes(msg.properties.CorrelationData)
            self._replies[corr] = (msg.payload, list(getattr(msg.properties, "UserProperty", [])))
            self._cv.notify_all()

    def request(self, topic: str, payload: bytes) -> tuple[bytes, list[tuple[str, str]]]:
        corr = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "bench/replies"
        props.CorrelationData = corr
        self.c.publish(topic, payload, qos=1, properties=props)
        with self._cv:
            if not self._cv.wait_for(lambda: corr in self._replies, timeout=10):
                raise SystemExit(f"no reply on {topic}")
            return self._replies.pop(corr)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="requests per responder (default 2000)")
    args = ap.parse_args()
    names = ("bare", "signed_normal", "signed_full")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = FleetRoot.create(work / "root")
        sk = SigningKey.generate()
        cert = root.issue(
            bytes(sk.verify_key), roles=["operator"], devices=["*"],
            not_after=int(time.time()) + 86400, name="bench",
        )  # fmt: skip
        builder = EnvelopeBuilder(OperatorKey(sk, cert))
        broker = Mosquitto(work / "broker").start()
        procs: list[subprocess.Popen[str]] = []
        device_keys: dict[str, bytes] = {}
        try:
            for name in names:
                sync = "FULL" if name == "signed_full" else "NORMAL"
                p = subprocess.Popen(
                    [sys.executable, "-c", RESPONDER, name, str(broker.port), str(work), sync],
                    stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                procs.append(p)
                assert p.stdout is not None
                line = p.stdout.readline().split()
                if not line or line[0] != "ready":
                    raise SystemExit(f"responder {name} failed to start")
                if name != "bare":
                    device_keys[name] = b64decode(line[1], what="device key")
            req = Requester(broker.port)
            samples: dict[str, list[float]] = {n: [] for n in names}

            def one(name: str, i: int) -> float:
                request = json.dumps({"id": f"r{i}", "cmd": "ping", "args": {}}).encode()
                t0 = time.perf_counter()
                if name == "bare":
                    body, _props = req.request(f"kiosk/{name}/cmd", request)
                    ok = body == request
                else:
                    env = builder.build("ping", request, name)
                    body, props = req.request(f"kiosk/{name}/cmd", env)
                    sig = DeviceSignature.from_header(dict(props)["sig"])
                    verify_device_message(device_keys[name], body, sig)
                    ok = json.loads(body)["ok"] is True
                elapsed = time.perf_counter() - t0
                if not ok:
                    raise SystemExit(f"{name} refused request {i}: {body!r}")
                return elapsed

            for name in names:  # warm-up
                for i in range(50):
                    one(name, -1 - i)
            rounds = 5
            i = 0
            for _ in range(rounds):  # interleave so machine noise hits all alike
                for name in names:
                    for _k in range(args.n // rounds):
                        samples[name].append(one(name, i))
                        i += 1
            req.close()
        finally:
            for p in procs:
                p.terminate()
                p.wait()
            broker.stop()
    s = {n: summary_ms(v) for n, v in samples.items()}
    r_norm = s["signed_normal"]["p50_ms"] / s["bare"]["p50_ms"]
    r_full = s["signed_full"]["p50_ms"] / s["bare"]["p50_ms"]
    emit(
        "trust_roundtrip",
        {
            **s,
            "ratio_p50_signed_normal": round(r_norm, 2),
            "ratio_p50_signed_full": round(r_full, 2),
            "ratio_p99_signed_normal": round(s["signed_normal"]["p99_ms"] / s["bare"]["p99_ms"], 2),
            "target": "signed p50 <= 1.5x unsigned (issue target is daemon vs daemon)",
            "met_normal": r_norm <= 1.5,
            "met_full": r_full <= 1.5,
        },
    )


if __name__ == "__main__":
    main()
