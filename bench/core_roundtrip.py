"""Command round trip through mosquitto: the daemon's `ping` against a bare paho echo
responder measured in the same run (issue: p50 <= 4x the bare echo).

    .venv/bin/python bench/core_roundtrip.py [--n 2000]

Both responders are separate processes on loopback with TCP_NODELAY on every socket and on the
broker; the requester sends one QoS 1 request at a time (MQTT 5 response topic + correlation
data) and measures until the reply arrives.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import daemon_config, emit, start_daemon, stop, summary_ms

from appliance.devtools.broker import Mosquitto
from appliance.devtools.controller import Controller

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


def measure(ctl: Controller, device: str, n: int) -> list[float]:
    for _ in range(50):  # warm-up
        ctl.request(device, "ping")
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = ctl.request(device, "ping", timeout=10)
        samples.append(time.perf_counter() - t0)
        assert r.get("ok", True) is not False, r
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000, help="requests per responder")
    args = ap.parse_args()
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
            with Controller("127.0.0.1", broker.port) as ctl:
                q = ctl.subscribe("kiosk/bench-rt/status")
                while b'"online": true' not in q.get(timeout=30)[1]:
                    pass
                # Interleave the two in rounds so machine noise hits both alike.
                bare: list[float] = []
                dmn: list[float] = []
                rounds = 5
                for _ in range(rounds):
                    bare += measure(ctl, "bare-echo", args.n // rounds)
                    dmn += measure(ctl, "bench-rt", args.n // rounds)
        finally:
            stop(daemon)
            echo.terminate()
            echo.wait()
            broker.stop()
    b, d = summary_ms(bare), summary_ms(dmn)
    ratio = d["p50_ms"] / b["p50_ms"]
    emit(
        "core_roundtrip",
        {
            "bare_echo": b,
            "daemon_ping": d,
            "ratio_p50": round(ratio, 2),
            "ratio_p99": round(d["p99_ms"] / b["p99_ms"], 2),
            "target": "daemon p50 <= 4x bare echo p50",
            "met": ratio <= 4.0,
        },
    )


if __name__ == "__main__":
    main()
