"""Signed command round trip through the REAL daemon against the unsigned one, same run
(issue 6 target: signed p50 <= 1.5x unsigned p50).

    .venv/bin/python bench/trust_signed_roundtrip.py [--n 2000]

Two daemons (``python -m appliance run``, separate processes, store at its default
synchronous=FULL) on one loopback mosquitto with TCP_NODELAY everywhere:

  unsigned   the foundation's path: ``commands.allow_unsigned = true``, no fleet root key; the
             requester sends a plain ``{"id", "cmd": "ping"}`` request
  signed     a provisioned kiosk: ``allow_unsigned = false`` and a fleet root key; the
             requester signs every request with an operator key (``EnvelopeBuilder``) and
             verifies the device signature of every reply (what ``appliance fleet send``
             does), so both ends of the trust cost are inside the measured time. The daemon
             verifies the envelope and admits the command in one SQLite transaction with the
             replay state (appliance/dispatch.py)

Requests go one at a time (QoS 1, MQTT 5 response topic + correlation data), interleaved in
rounds so machine noise hits both alike. Also reports the requester's own share (signing the
envelope and verifying the reply, measured alone) and each daemon's CPU time per reply. Writes
bench/results/trust_signed_roundtrip.json.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
from _common import daemon_config, emit, start_daemon, stop, summary_ms
from core_roundtrip import cpu_s
from nacl.signing import SigningKey
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.devtools.broker import Mosquitto
from appliance.trust.certs import ROOT_PUB_FILE, FleetRoot, OperatorKey
from appliance.trust.envelope import EnvelopeBuilder
from appliance.trust.keys import DeviceSignature, load_public_key, verify_device_message

TARGET = 1.5


class Requester:
    def __init__(self, port: int) -> None:
        self.c = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"bench-{uuid.uuid4().hex[:6]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.c.on_socket_open = lambda _c, _u, s: s.setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )
        self.c.on_message = self._on_message
        self._cv = threading.Condition()
        self._replies: dict[bytes, tuple[bytes, dict[str, str]]] = {}
        self._online: set[str] = set()
        ready = threading.Event()
        self.c.on_subscribe = lambda *_a: ready.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.c.subscribe([("bench/replies", 1), ("kiosk/+/status", 1)])
        if not ready.wait(10):
            raise SystemExit("requester did not subscribe")

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        with self._cv:
            if msg.topic.endswith("/status"):
                if b'"online": true' in msg.payload:
                    self._online.add(msg.topic.split("/")[1])
            else:
                corr = bytes(msg.properties.CorrelationData)
                props = dict(getattr(msg.properties, "UserProperty", []) or [])
                self._replies[corr] = (bytes(msg.payload), props)
            self._cv.notify_all()

    def wait_online(self, device: str, timeout: float = 60) -> None:
        with self._cv:
            if not self._cv.wait_for(lambda: device in self._online, timeout):
                raise SystemExit(f"{device} did not come online")

    def request(self, device: str, payload: bytes) -> tuple[bytes, dict[str, str]]:
        corr = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "bench/replies"
        props.CorrelationData = corr
        self.c.publish(f"kiosk/{device}/cmd", payload, qos=1, properties=props)
        with self._cv:
            if not self._cv.wait_for(lambda: corr in self._replies, timeout=10):
                raise SystemExit(f"no reply from {device}")
            return self._replies.pop(corr)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="requests per daemon (default 2000)")
    args = ap.parse_args()
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
        ucfg = daemon_config(work / "u", broker.port, "bench-unsigned")
        ucfg.write_text(ucfg.read_text() + "[commands]\nallow_unsigned = true\n")
        scfg = daemon_config(work / "s", broker.port, "bench-signed")
        scfg.write_text(
            scfg.read_text() + "[commands]\nallow_unsigned = false\n"
            f'[trust]\nroot_keys = ["{work / "root" / ROOT_PUB_FILE}"]\n'
        )
        procs = [
            start_daemon(ucfg, work / "u" / "state"),
            start_daemon(scfg, work / "s" / "state"),
        ]
        try:
            req = Requester(broker.port)
            req.wait_online("bench-unsigned")
            req.wait_online("bench-signed")
            device_pub = load_public_key(work / "s" / "state" / "device.pub")
            counter = iter(range(10**9))

            def unsigned() -> float:
                body = json.dumps({"id": f"u{next(counter)}", "cmd": "ping"}).encode()
                t0 = time.perf_counter()
                reply, _props = req.request("bench-unsigned", body)
                dt = time.perf_counter() - t0
                if b'"ok": true' not in reply and b'"ok":true' not in reply:
                    raise SystemExit(f"unsigned ping failed: {reply!r}")
                return dt

            def signed() -> float:
                body = json.dumps({"id": f"s{next(counter)}", "cmd": "ping"}).encode()
                t0 = time.perf_counter()
                env = builder.build("ping", body, "bench-signed")
                reply, props = req.request("bench-signed", env)
                verify_device_message(device_pub, reply, DeviceSignature.from_header(props["sig"]))
                dt = time.perf_counter() - t0
                if b'"ok": true' not in reply and b'"ok":true' not in reply:
                    raise SystemExit(f"signed ping refused: {reply!r}")
                return dt

            for _ in range(50):  # warm-up (JIT-free, but caches, SQLite pages, TCP windows)
                unsigned()
                signed()
            samples: dict[str, list[float]] = {"unsigned": [], "signed": []}
            cpu = {"unsigned": 0.0, "signed": 0.0}
            rounds = 10
            for _ in range(rounds):
                c0 = cpu_s(procs[0].pid)
                for _k in range(args.n // rounds):
                    samples["unsigned"].append(unsigned())
                cpu["unsigned"] += cpu_s(procs[0].pid) - c0
                c0 = cpu_s(procs[1].pid)
                for _k in range(args.n // rounds):
                    samples["signed"].append(signed())
                cpu["signed"] += cpu_s(procs[1].pid) - c0
            # Where the difference goes, part 1: the requester's own trust work (sign the
            # envelope, verify the reply's signature), measured alone on a sample reply.
            reply, props = req.request(
                "bench-signed",
                builder.build("ping", b'{"id": "probe", "cmd": "ping"}', "bench-signed"),
            )
            sig = DeviceSignature.from_header(props["sig"])
            t0 = time.perf_counter()
            for k in range(args.n):
                builder.build("ping", json.dumps({"id": f"x{k}", "cmd": "ping"}).encode(), "x")
                verify_device_message(device_pub, reply, sig)
            client_us = (time.perf_counter() - t0) / args.n * 1e6
            req.close()
        finally:
            for p in procs:
                stop(p)
            broker.stop()
    u, s = summary_ms(samples["unsigned"]), summary_ms(samples["signed"])
    ratio = round(s["p50_ms"] / u["p50_ms"], 3)
    emit(
        "trust_signed_roundtrip",
        {
            "unsigned_daemon": u,
            "signed_daemon": s,
            "ratio_p50": ratio,
            "ratio_mean": round(s["mean_ms"] / u["mean_ms"], 3),
            "requester_sign_and_verify_us": round(client_us, 1),
            # CPU time of each daemon process per reply (its threads included): less moved by
            # the load of a shared machine than the latencies.
            "daemon_cpu_ms_per_reply": {
                k: round(v * 1000 / len(samples[k]), 3) for k, v in cpu.items()
            },
            "target_ratio_p50": TARGET,
            "met": ratio <= TARGET,
        },
    )


if __name__ == "__main__":
    main()
