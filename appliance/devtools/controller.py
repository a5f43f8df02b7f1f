"""A minimal fleet-controller client: send commands, await replies, watch topics.

Used by the tests, the benchmarks and the demo; the fleet tools build on it. MQTT 5 requests
carry a response topic and correlation data; on MQTT 3.1.1 the controller listens on the
device's documented reply topic and matches replies by command id.

The production path: ``tls`` connects with a client certificate (the ``controller`` identity of
the shipped ACL) and ``signer`` signs every command (docs/trust.md envelope). Under the shipped
ACL a kiosk may publish only on its own topics, so with ``tls`` the MQTT 5 response topic is the
device's own ``reply`` topic (correlation data still matches each reply to its request).
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import threading
import uuid
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..errors import ApplianceError
from ..mqttclient import make_client
from ..protocol.codes import ErrorCode
from ..protocol.topics import TopicKind, Topics, parse
from ..trust.certs import OperatorKey
from ..trust.envelope import EnvelopeBuilder


class ControllerTimeout(ApplianceError):
    code = ErrorCode.CONTROLLER_TIMEOUT
    retryable = True


class Controller:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        prefix: str = "kiosk",
        protocol: str = "5",
        client_id: str | None = None,
        tls: dict[str, str] | None = None,
        signer: OperatorKey | None = None,
        lifetime_s: int = 300,
    ) -> None:
        """``tls``: ``{"ca_certs", "certfile", "keyfile"}`` (paho ``tls_set``); ``signer``: the
        operator key every command is signed with (``raw`` payloads are sent as given)."""
        self.host, self.port, self.prefix, self.protocol = host, port, prefix, protocol
        self.tls = tls
        self.builder = None if signer is None else EnvelopeBuilder(signer, lifetime_s=lifetime_s)
        self.client_id = client_id or f"ctl-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.client = make_client(self.client_id, protocol=protocol, tls=tls)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.response_topic = Topics.anyone(prefix).controller_reply(self.client_id)
        self._pending: dict[bytes | str, queue.Queue[dict[str, Any]]] = {}
        self._subs: list[tuple[str, queue.Queue[tuple[str, bytes, bool]]]] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._counter = itertools.count()

    # -- connection ----------------------------------------------------------------------------

    def connect(self, timeout: float = 5.0) -> Controller:
        self.client.connect(self.host, self.port, 30)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            raise ControllerTimeout(f"no CONNACK from {self.host}:{self.port}")
        return self

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        # paho closes loop_start's socket pair only in __del__; a client in a reference cycle
        # is finalised by the cyclic collector, which may warn (ResourceWarning) first.
        reset = getattr(self.client, "_reset_sockets", None)
        if callable(reset):
            reset()

    def __enter__(self) -> Controller:
        return self.connect()

    def __exit__(self, *_: object) -> None:
        self.close()

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            return
        topics = [(self.response_topic, 1)] + [(t, 1) for t, _ in self._subs]
        client.subscribe(topics)
        self._connected.set()

    # -- watching ------------------------------------------------------------------------------

    def subscribe(self, topic: str, timeout: float = 5.0) -> queue.Queue[tuple[str, bytes, bool]]:
        """Queue of (topic, payload, retained) for every message matching ``topic``."""
        q: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        with self._lock:
            self._subs.append((topic, q))
        done = threading.Event()
        self.client.on_subscribe = lambda *_a: done.set()
        self.client.subscribe(topic, qos=1)
        done.wait(timeout)
        return q

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        parsed = parse(self.prefix, msg.topic)
        if msg.topic == self.response_topic or (
            parsed is not None and parsed.kind is TopicKind.REPLY
        ):
            key: bytes | str | None = None
            props = getattr(msg, "properties", None)
            corr = getattr(props, "CorrelationData", None) if props else None
            if corr:
                key = bytes(corr)
            else:
                try:
                    key = str(json.loads(payload).get("id"))
                except (ValueError, AttributeError):
                    key = None
            with self._lock:
                q = self._pending.get(key) if key is not None else None
            if q is not None:
                try:
                    q.put(json.loads(payload))
                except ValueError:
                    q.put({"ok": False, "error": {"code": ErrorCode.UNPARSEABLE_REPLY}})
        with self._lock:
            subs = list(self._subs)
        for pattern, sq in subs:
            if paho.topic_matches_sub(pattern, msg.topic):
                sq.put((msg.topic, payload, bool(msg.retain)))

    # -- commands ------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def send(
        self,
        device: str,
        cmd: str,
        args: dict[str, Any] | None = None,
        *,
        cid: str | None = None,
        raw: bytes | None = None,
    ) -> queue.Queue[dict[str, Any]]:
        """Publish a command; returns the queue its reply will arrive on."""
        cid = cid or f"{self.client_id}-{next(self._counter)}"
        if raw is not None:
            body = raw
        else:
            body = json.dumps({"id": cid, "cmd": cmd, "args": args or {}}).encode()
            if self.builder is not None:
                body = self.builder.build(cmd, body, device)
        q: queue.Queue[dict[str, Any]] = queue.Queue()
        topic = Topics(self.prefix, device).cmd
        if self.protocol == "5":
            corr = uuid.uuid4().bytes
            response_topic = self.response_topic
            if self.tls is not None:  # the shipped ACL: a kiosk writes only its own topics
                response_topic = Topics(self.prefix, device).reply
                with self._lock:
                    known = any(t == response_topic for t, _ in self._subs)
                if not known:
                    self.subscribe(response_topic)
            with self._lock:
                self._pending[corr] = q
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = response_topic
            props.CorrelationData = corr
            self.client.publish(topic, body, qos=1, properties=props)
        else:
            reply_topic = Topics(self.prefix, device).reply
            with self._lock:
                self._pending[cid] = q
                known = any(t == reply_topic for t, _ in self._subs)
            if not known:
                self.subscribe(reply_topic)
            self.client.publish(topic, body, qos=1)
        return q

    def request(
        self,
        device: str,
        cmd: str,
        args: dict[str, Any] | None = None,
        *,
        cid: str | None = None,
        raw: bytes | None = None,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        q = self.send(device, cmd, args, cid=cid, raw=raw)
        try:
            return q.get(timeout=timeout)
        except queue.Empty:
            raise ControllerTimeout(f"no reply to {cmd} from {device} in {timeout} s") from None
