"""The agent's batched hand-back (``Incoming.handover``): replies and PUBACKs queued from
another thread reach mosquitto through the network thread, the PUBACKs included (a broker that
keeps at most 5 unacknowledged QoS 1 messages in flight to a client stalls without them)."""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from appliance.agent.mqtt import MqttAgent
from appliance.config import AppConfig
from appliance.devtools.broker import Mosquitto
from appliance.inbound import Incoming
from appliance.store import Store

N = 60  # many times the broker's in-flight window below


def test_replies_and_acks_handed_over_together_reach_the_broker(tmp_path: Path) -> None:
    # mosquitto.conf(5) max_inflight_messages: QoS 1 messages in flight to a client (the later
    # line overrides the devtools default of 0, unlimited).
    broker = Mosquitto(tmp_path / "broker", extra_conf="max_inflight_messages 5\n").start()
    cfg = AppConfig.model_validate(
        {
            "device": {"id": "kiosk-handover"},
            "mqtt": {"host": broker.host, "port": broker.port},
        }
    )
    store = Store(tmp_path / "state")
    taken: queue.SimpleQueue[Incoming] = queue.SimpleQueue()
    worker_names: set[str] = set()

    def on_message(msg: Incoming) -> bool:
        taken.put(msg)
        return True  # acknowledged later, by the worker's handover

    def worker() -> None:
        for _ in range(N):
            msg = taken.get(timeout=20)
            assert msg.handover is not None and msg.ack is not None
            worker_names.add(threading.current_thread().name)
            reply = json.dumps({"id": json.loads(msg.payload)["id"], "ok": True}).encode()
            msg.handover([("test/handover/replies", reply, None)], [msg.ack])

    agent = MqttAgent(cfg, store, on_message=on_message, birth=dict)
    got: list[str] = []
    done = threading.Event()
    sub = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="handover-requester",
        protocol=MQTTProtocolVersion.MQTTv5,
    )

    def on_reply(_c: paho.Client, _u: object, m: paho.MQTTMessage) -> None:
        got.append(json.loads(m.payload)["id"])
        if len(got) == N:
            done.set()

    sub.on_message = on_reply
    subscribed = threading.Event()
    sub.on_subscribe = lambda *_a: subscribed.set()
    agent.start()
    try:
        assert agent.wait_connected(20)
        sub.connect(broker.host, broker.port)
        sub.loop_start()
        sub.subscribe("test/handover/replies", qos=1)
        assert subscribed.wait(20)
        t = threading.Thread(target=worker, name="handover-worker", daemon=True)
        t.start()
        topic = agent.topics.cmd
        for i in range(N):
            sub.publish(topic, json.dumps({"id": f"h{i}", "cmd": "ping"}), qos=1)
        assert done.wait(30), f"{len(got)} of {N} replies: the PUBACKs did not reach the broker"
        assert got == [f"h{i}" for i in range(N)], "replies in order"
        t.join(5)
        assert worker_names == {"handover-worker"}
    finally:
        sub.disconnect()
        sub.loop_stop()
        agent.stop()
        store.close()
        broker.stop()
