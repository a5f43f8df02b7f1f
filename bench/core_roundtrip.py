"""Command round trip through mosquitto: the daemon's `ping` against a bare paho echo
responder measured in the same run, at 1, 10 and 50 requests in flight (issue 19: p50 <= 1.5x
the bare echo with the machine quiet; throughput at 50 in flight >= 3x the throughput at 1).

    .venv/bin/python bench/core_roundtrip.py [--n 2000] [--inflight 1,10,50]

Both responders are separate processes on loopback with TCP_NODELAY on every socket and on the
broker. The requester (paho, MQTT 5 response topic + correlation data, QoS 1) keeps
``inflight`` requests outstanding: a new one goes out as soon as a reply comes back. Per level,
the two responders alternate in rounds so machine noise hits both alike; the latency of each
request is from its PUBLISH to its reply, the throughput is replies per second over the round.
The daemon is a development run (unsigned commands; bench/trust_signed_roundtrip.py has the
signed path) with its store at the default synchronous=FULL.

Also reported per level: the CPU time each responder process used per reply (user + system,
from /proc/<pid>/stat, over its rounds): on a machine shared with other work the latencies
move with the load, the CPU a reply costs much less.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
from _common import daemon_config, emit, start_daemon, stop, summary_ms
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.devtools.broker import Mosquitto

ECHO = r"""
import socket, sys
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
port = int(sys.argv[1])
c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bare-echo",
                protocol=MQTTProtocolVersion.MQTTv5)
c.on_socket_open = lambda _c, _u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
c.max_inflight_messages_set(0)
def on_message(cl, _u, msg):
    props = Properties(PacketTypes.PUBLISH)
    props.CorrelationData = msg.properties.CorrelationData
    cl.publish(msg.properties.ResponseTopic, msg.payload, qos=1, properties=props)
c.on_message = on_message
def on_connect(cl, *_):
    cl.subscribe("kiosk/bare-echo/cmd", qos=1)
    print("ready", flush=True)
c.on_connect = on_connect
c.connect("127.0.0.1", port)
c.loop_forever()
"""


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its threads (proc(5), stat fields 14
    and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class Requester:
    """Keeps ``inflight`` requests outstanding on one MQTT 5 connection."""

    def __init__(self, port: int) -> None:
        self.c = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"bench-rt-{uuid.uuid4().hex[:6]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.c.on_socket_open = lambda _c, _u, s: s.setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )
        self.c.max_inflight_messages_set(0)
        self.c.on_message = self._on_message
        self._cv = threading.Condition()
        self._sent: dict[bytes, float] = {}
        self._lat: list[float] = []
        self._bad: list[bytes] = []
        self.online: set[str] = set()
        ready = threading.Event()
        self.c.on_subscribe = lambda *_a: ready.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.c.subscribe([("bench/replies", 1), ("kiosk/+/status", 1)])
        if not ready.wait(10):
            raise SystemExit("requester did not subscribe")

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        with self._cv:
            if msg.topic.endswith("/status"):
                if b'"online": true' in msg.payload:
                    self.online.add(msg.topic.split("/")[1])
            else:
                t0 = self._sent.pop(bytes(msg.properties.CorrelationData), None)
                if t0 is not None:
                    self._lat.append(now - t0)
                    if b'"ok":false' in msg.payload or b'"ok": false' in msg.payload:
                        self._bad.append(bytes(msg.payload))
            self._cv.notify_all()

    def wait_online(self, device: str, timeout: float = 60) -> None:
        with self._cv:
            if not self._cv.wait_for(lambda: device in self.online, timeout):
                raise SystemExit(f"{device} did not come online")

    def run(self, device: str, n: int, inflight: int) -> tuple[list[float], float]:
        """``n`` pings with ``inflight`` outstanding; (latencies, replies per second)."""
        with self._cv:
            self._lat = []
        t_start = time.perf_counter()
        for _ in range(n):
            with self._cv:
                if not self._cv.wait_for(lambda: len(self._sent) < inflight, timeout=30):
                    raise SystemExit(f"{device}: no reply within 30 s")
            corr = uuid.uuid4().bytes
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = "bench/replies"
            props.CorrelationData = corr
            body = json.dumps({"id": corr.hex(), "cmd": "ping"}).encode()
            with self._cv:
                self._sent[corr] = time.perf_counter()
            self.c.publish(f"kiosk/{device}/cmd", body, qos=1, properties=props)
        with self._cv:
            if not self._cv.wait_for(lambda: not self._sent, timeout=30):
                raise SystemExit(f"{device}: replies missing")
            lat = list(self._lat)
        if self._bad:
            raise SystemExit(f"{device}: refused: {self._bad[0]!r}")
        return lat, n / (time.perf_counter() - t_start)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000, help="requests per responder and level")
    ap.add_argument("--inflight", default="1,10,50")
    args = ap.parse_args()
    levels = [int(x) for x in args.inflight.split(",")]
    rounds = 5
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker").start()
        echo = subprocess.Popen(
            [sys.executable, "-c", ECHO, str(broker.port)], stdout=subprocess.PIPE, text=True
        )
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        cfg = daemon_config(work / "d", broker.port, "bench-rt", dev=True)  # unsigned path
        daemon = start_daemon(cfg, work / "d" / "state")
        try:
            req = Requester(broker.port)
            req.wait_online("bench-rt")
            for dev in ("bare-echo", "bench-rt"):
                req.run(dev, 100, 1)  # warm-up
            for k in levels:
                lat: dict[str, list[float]] = {"bare-echo": [], "bench-rt": []}
                rate: dict[str, list[float]] = {"bare-echo": [], "bench-rt": []}
                cpu: dict[str, float] = {"bare-echo": 0.0, "bench-rt": 0.0}
                pids = {"bare-echo": echo.pid, "bench-rt": daemon.pid}
                for _ in range(rounds):
                    for dev in ("bare-echo", "bench-rt"):
                        c0 = cpu_s(pids[dev])
                        samples, per_s = req.run(dev, args.n // rounds, k)
                        cpu[dev] += cpu_s(pids[dev]) - c0
                        lat[dev] += samples
                        rate[dev].append(per_s)
                b, d = summary_ms(lat["bare-echo"]), summary_ms(lat["bench-rt"])
                results[str(k)] = {
                    "bare_echo": {
                        **b,
                        "per_s": round(sorted(rate["bare-echo"])[rounds // 2]),
                        "cpu_ms_per_reply": round(
                            cpu["bare-echo"] * 1000 / len(lat["bare-echo"]), 3
                        ),
                    },
                    "daemon_ping": {
                        **d,
                        "per_s": round(sorted(rate["bench-rt"])[rounds // 2]),
                        "cpu_ms_per_reply": round(cpu["bench-rt"] * 1000 / len(lat["bench-rt"]), 3),
                    },
                    "ratio_p50": round(d["p50_ms"] / b["p50_ms"], 2),
                    "ratio_p99": round(d["p99_ms"] / b["p99_ms"], 2),
                }
            req.close()
        finally:
            stop(daemon)
            echo.terminate()
            echo.wait()
            broker.stop()
    first, last = str(levels[0]), str(levels[-1])
    scale = {
        dev: round(results[last][dev]["per_s"] / results[first][dev]["per_s"], 2)  # type: ignore[index]
        for dev in ("bare_echo", "daemon_ping")
    }
    ratio1 = results[first]["ratio_p50"]
    emit(
        "core_roundtrip",
        {
            "inflight": results,
            f"throughput_{last}_vs_{first}": scale,
            "targets": "p50 at 1 in flight <= 1.5x bare echo; daemon throughput at 50 >= 3x at 1",
            "met": float(ratio1) <= 1.5 and scale["daemon_ping"] >= 3.0,  # type: ignore[arg-type]
        },
    )


if __name__ == "__main__":
    main()
