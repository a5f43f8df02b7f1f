"""Outbox drain after a broker outage: 10,000 events queued while the broker is down, drained
by the daemon after it returns, against raw paho QoS 1 publishing of the same number of
messages measured in the same run (issue: >= 5,000 messages/s, zero loss).

    .venv/bin/python bench/core_outbox.py [--n 10000] [--delivery end_to_end]

``--delivery end_to_end``: the daemon keeps every row until the fleet's ingest acknowledges it
(a real ``appliance.fleet.ingest.Ingest`` in this process, signing with an ``ingest``
certificate of a fleet root the daemon trusts); also reported: the time from the broker's
return until the outbox is empty, i.e. every event acknowledged end to end
(bench/results/core_outbox_end_to_end.json).

The subscriber holds a persistent session on the (persistent) broker so nothing published
while it reconnects is lost. Rates are measured from the first to the last message received.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import ROOT, daemon_config, emit, start_daemon, stop

sys.path.insert(0, str(ROOT))

from appliance.devtools.broker import Mosquitto
from appliance.fleet.ingest import Ingest
from appliance.store import Store
from appliance.trust.certs import ROOT_PUB_FILE, FleetRoot
from appliance.trust.keys import DeviceIdentity
from tests.trust.fleet import live_key

PAYLOAD = {"kind": "bench", "text": "x" * 200}

RAW = r"""
import socket, sys, json
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
port, n = int(sys.argv[1]), int(sys.argv[2])
c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="raw-pub",
                protocol=MQTTProtocolVersion.MQTTv5)
c.on_socket_open = lambda _c, _u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
c.max_inflight_messages_set(200)
c.max_queued_messages_set(0)
c.connect("127.0.0.1", port)
c.loop_start()
body = lambda i: json.dumps({"id": i, "seq": i, "data": {"text": "x" * 200}})
infos = [c.publish("raw/events", body(i), qos=1) for i in range(n)]
for i in infos:
    i.wait_for_publish(60)
c.disconnect(); c.loop_stop()
"""


class Sub:
    """A subscriber that is not the bottleneck: mosquitto_sub (C) with a persistent session,
    printing each message with its arrival time (%U); we parse after the fact."""

    def __init__(self, port: int, topic: str, client_id: str) -> None:
        self.port, self.topic, self.client_id = port, topic, client_id
        self.ids: set[str] = set()
        self.dups = 0
        self.first = self.last = 0.0
        self.seqs: list[int] = []
        self.want = 0
        self.done = threading.Event()
        self.proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def _cmd(self) -> list[str]:
        return [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-c",
            "-i",
            self.client_id,
            "-x",
            "3600",
            "-t",
            self.topic,
            "-F",
            "%U %p",
        ]

    def create_session(self) -> None:
        """Connect once so the broker keeps the subscription (and queues) while we are away."""
        subprocess.run([*self._cmd(), "-W", "1"], capture_output=True, check=False)

    def connect(self) -> None:
        self.proc = subprocess.Popen(self._cmd(), stdout=subprocess.PIPE, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            stamp, _, payload = line.partition(" ")
            body = json.loads(payload)
            now = float(stamp)
            eid = str(body["id"])
            if not self.first:
                self.first = now
            if eid in self.ids:
                self.dups += 1
                continue
            self.ids.add(eid)
            self.seqs.append(int(body["seq"]))
            self.last = now
            if len(self.ids) >= self.want:
                self.done.set()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--delivery", choices=["broker", "end_to_end"], default="broker")
    args = ap.parse_args()
    n = args.n
    e2e = args.delivery == "end_to_end"
    t_empty = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker").start()
        # --- baseline: raw paho QoS 1 -------------------------------------------------------
        raw_sub = Sub(broker.port, "raw/events", "raw-sub")
        raw_sub.want = n
        raw_sub.create_session()
        raw_sub.connect()
        subprocess.run([sys.executable, "-c", RAW, str(broker.port), str(n)], check=True)
        raw_sub.done.wait(120)
        raw_sub.stop()
        raw_rate = len(raw_sub.ids) / (raw_sub.last - raw_sub.first)
        # --- the daemon ---------------------------------------------------------------------
        cfg = daemon_config(work / "d", broker.port, "bench-ob")
        sub = Sub(broker.port, "kiosk/bench-ob/events/#", "ob-sub")
        sub.want = n
        sub.create_session()
        ingest = None
        env = None
        if e2e:
            root = FleetRoot.create(work / "fleet")
            cfg.write_text(
                cfg.read_text() + f'[trust]\nroot_keys = ["{work / "fleet" / ROOT_PUB_FILE}"]\n'
            )
            env = {"APPLIANCE_MQTT__DELIVERY": "end_to_end"}
            key = live_key(root, ("ingest",), "bench-ob")
            ingest = Ingest(broker.host, broker.port, client_id="ob-ingest", ack=True, ack_key=key)
            ingest.start()
        daemon = start_daemon(cfg, work / "d" / "state", env=env)
        try:
            state = work / "d" / "state"
            store = None
            while store is None or not (state / "device.key").exists():
                try:
                    store = store or Store(state)
                except Exception:  # the daemon is still creating it
                    store = None
                time.sleep(0.05)  # ok: polling for the files
            # The local producer (the kiosk UI, say) stores events as the daemon does: rendered
            # and signed with the device key at once, so the drain only sends.
            identity = DeviceIdentity.load(state)
            store.outbox.set_signer("bench-ob", lambda b: identity.sign(b).to_header())
            broker.stop()  # the outage
            for i in range(0, n, 1000):
                store.outbox.put_many(
                    [
                        ("bench", "kiosk/bench-ob/events/bench", {**PAYLOAD, "n": k})
                        for k in range(i, min(n, i + 1000))
                    ]
                )
            depth = store.outbox.depth()
            store.close()
            broker.start()
            t_up = time.time()
            sub.connect()
            sub.done.wait(300)
            if e2e:
                check = Store(state)
                deadline = time.time() + 120
                while check.outbox.depth() and time.time() < deadline:
                    time.sleep(0.01)  # ok: polling the outbox until it is empty
                t_empty = time.time() if not check.outbox.depth() else 0.0
                check.close()
        finally:
            stop(daemon)
            sub.stop()
            if ingest is not None:
                ingest.stop()
            broker.stop()
    rate = len(sub.ids) / (sub.last - sub.first) if sub.last > sub.first else 0.0
    in_order = sub.seqs == sorted(sub.seqs)
    extra = {}
    if e2e:
        extra = {
            "delivery": "end_to_end",
            "broker_up_to_outbox_empty_s": round(t_empty - t_up, 3) if t_empty else None,
            "acknowledged_end_to_end_msgs_per_s": round(n / (t_empty - t_up)) if t_empty else 0,
        }
    emit(
        "core_outbox" + ("_end_to_end" if e2e else ""),
        {
            **extra,
            "events": n,
            "queued_during_outage": depth,
            "raw_paho_qos1_msgs_per_s": round(raw_rate),
            "daemon_drain_msgs_per_s": round(rate),
            "ratio_vs_raw": round(rate / raw_rate, 2),
            "received_unique": len(sub.ids),
            "duplicates": sub.dups,
            "lost": n - len(sub.ids),
            "in_order": in_order,
            "broker_up_to_last_event_s": round(sub.last - t_up, 3),
            "target": ">= 5000 msg/s, zero loss",
            "met": rate >= 5000 and len(sub.ids) == n,
        },
    )


if __name__ == "__main__":
    main()
