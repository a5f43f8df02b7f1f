"""The agent's batched hand-back (``Incoming.handover``): replies and PUBACKs queued from
another thread reach mosquitto through the network thread, the PUBACKs included (a broker that
keeps at most 5 unacknowledged QoS 1 messages in flight to a client stalls without them). The
broker's PUBACKs of those replies do not wake the outbox drain, which has nothing in flight."""

from __future__ import annotations

import json
import queue
import socket
import threading
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from appliance.agent.mqtt import MqttAgent
from appliance.config import AppConfig
from appliance.devtools.broker import Mosquitto
from appliance.inbound import Incoming
from appliance.store import Store
from tests.helpers import wait_for

N = 60  # many times the broker's in-flight window below


def wait_birth(client: paho.Client, agent: MqttAgent) -> None:
    """Wait for the agent's retained birth on ``client`` (a started paho client): the broker
    handled the agent's SUBSCRIBE, which goes out before the birth on the same connection."""
    born = threading.Event()
    client.message_callback_add(agent.topics.status, lambda *_a: born.set())
    client.subscribe(agent.topics.status, qos=1)
    assert born.wait(20), "no birth message"


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
        wait_birth(sub, agent)
        # Count the drain's wake-ups from here on: a reply's PUBACK must not wake it (one
        # outbox query per reply at 1 command in flight, for nothing).
        kicks: list[str] = []
        kick = agent._kick
        agent._kick = lambda: (kicks.append("kick"), kick())[1]  # type: ignore[method-assign]
        t = threading.Thread(target=worker, name="handover-worker", daemon=True)
        t.start()
        topic = agent.topics.cmd
        for i in range(N):
            sub.publish(topic, json.dumps({"id": f"h{i}", "cmd": "ping"}), qos=1)
        assert done.wait(30), f"{len(got)} of {N} replies: the PUBACKs did not reach the broker"
        assert got == [f"h{i}" for i in range(N)], "replies in order"
        t.join(5)
        assert worker_names == {"handover-worker"}
        assert len(kicks) < N // 4, f"the drain was woken {len(kicks)} times by {N} replies"
        # paho's wake-up pair (a TCP connection on loopback) sends each byte at once: without
        # TCP_NODELAY the second byte of a reply and its PUBACK is held back by Nagle and
        # wakes the network thread once more, later, for nothing.
        wake_w = agent._client._sockpairW  # type: ignore[union-attr]
        assert wake_w.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        # Its own rows still get their PUBACKs: an event put now is sent and deleted.
        store.outbox.put("test", "", {"n": 1})
        agent.kick()
        wait_for(lambda: store.outbox.depth() == 0, 20, "the event acknowledged and deleted")
    finally:
        sub.disconnect()
        sub.loop_stop()
        agent.stop()
        store.close()
        broker.stop()


def test_ingest_acknowledgements_are_applied_off_the_network_thread_then_acknowledged(
    tmp_path: Path,
) -> None:
    """End-to-end delivery: the ingest's outbox acknowledgements are verified and applied on
    the ``outbox-ack`` thread, in order, each PUBACKed after it was applied (with a broker
    window of 5, the stream of 20 stalls without the PUBACKs)."""
    broker = Mosquitto(tmp_path / "broker", extra_conf="max_inflight_messages 5\n").start()
    cfg = AppConfig.model_validate(
        {
            "device": {"id": "kiosk-ingest-ack"},
            "mqtt": {"host": broker.host, "port": broker.port, "delivery": "end_to_end"},
        }
    )
    store = Store(tmp_path / "state")
    seen: list[tuple[str, bytes]] = []
    all_seen = threading.Event()

    def verify(payload: bytes) -> list[tuple[int, int, str]]:
        seen.append((threading.current_thread().name, payload))
        if len(seen) == 20:
            all_seen.set()
        return []  # nothing to delete: the rows are not the point here

    agent = MqttAgent(cfg, store, on_message=lambda _m: None, birth=dict, ack_verifier=verify)
    pub = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="ingest-ack-sender",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    agent.start()
    try:
        assert agent.wait_connected(20)
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        wait_birth(pub, agent)
        for i in range(20):
            pub.publish(agent.topics.outbox_ack, f"ack-{i}".encode(), qos=1)
        assert all_seen.wait(30), f"{len(seen)} of 20 applied: the PUBACKs did not follow"
        assert {name for name, _p in seen} == {"outbox-ack"}
        assert [p for _n, p in seen] == [f"ack-{i}".encode() for i in range(20)]
    finally:
        pub.disconnect()
        pub.loop_stop()
        agent.stop()
        store.close()
        broker.stop()
