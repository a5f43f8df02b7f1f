"""MQTT agent on paho-mqtt 2.x: connection supervisor, birth and death, outbox drain.

Design (after aiomqtt's explicit supervisor, ../shared/STYLE.md):

* One network thread owns the paho client and runs ``client.loop()``; other threads only call
  ``publish``, which paho queues and signals through its socket pair (we install a no-op
  ``on_socket_register_write`` so paho never writes from the caller's thread).
* Reconnection is our loop, not paho's: exponential backoff with *full jitter*
  (delay = uniform(0, min(max, min * 2**attempt))), so a fleet does not reconnect in lockstep
  after a broker restart. A new paho ``Client`` is made per connection so paho never replays
  its in-memory queue: the durable outbox is the only source of truth
  (../shared/specs/mqtt-systemd-notes.md: "the durable outbox, not paho's memory").
* Several brokers (``mqtt.brokers``): each failed connect and each lost connection moves to
  the next broker in the kiosk's order (:func:`broker_order`), after the same backoff; a
  connection that reached CONNACK resets it, so a kiosk whose node dies tries another one
  within ``reconnect_min_s``. No fail-back: a kiosk stays where it is until that connection
  ends. The birth message names the broker (``broker``).
* Persistent session: MQTT 5 ``clean_start=False`` with ``SessionExpiryInterval``; MQTT 3.1.1
  ``clean_session=False``. Commands published while the kiosk was offline are queued by the
  broker and arrive on reconnect.
* TCP_NODELAY on every socket (``on_socket_open`` runs on every connect): without it a round
  trip costs ~88 ms instead of ~0.4 ms on loopback (same spec, "Latency").
* Birth: a retained status message on every connect. Death: a retained Last Will
  ``{"online": false, "reason": "lost", "connected_at": T, "last_seen": T}`` rendered and
  signed with the device key just before the CONNECT that carries it (MQTT 5.0 section
  3.1.3.2: Will Properties carry User Properties, so the signature travels as the same ``sig``
  user property as on every other message), T being that connect time; a clean shutdown
  publishes a signed retained offline status itself (reason ``shutdown`` or ``restart``,
  ``last_seen`` = now) because the broker sends no will on a clean DISCONNECT. The fleet
  tools verify both like the birth, so a disconnect is never shown as a forgery.
* The outbox drains in ``seq`` order on each connection, up to ``max_inflight`` QoS 1 messages
  in flight; rows are deleted only after the broker's PUBACK. A row published but not
  acknowledged before a disconnect is sent again (at-least-once): the controller drops
  duplicates by ``id`` and detects gaps by ``seq``. A row stays in the window until its
  PUBACK is *on disk*, so after a ``kill -9`` or a power cut at most ``max_inflight`` rows are
  sent a second time (docs/reliability.md, "Duplicates after a crash").
* ``mqtt.delivery = "end_to_end"``: a broker acknowledges QoS 1 before the message is on disk
  (a broker crash loses what only it held; docs/reliability.md section 1), so rows are kept
  after the PUBACK until the fleet's ingest acknowledges them on ``{prefix}/{device}/outbox/ack``
  (a signed document, ``trust/outboxack.py``). Every reconnection starts the drain from the
  oldest unacknowledged row, and so does a row that stays the oldest for ``delivery_resend_s``
  (the pause doubling while it stays): what a broker lost is sent again. The broker's PUBACKs
  are recorded as a watermark (``Outbox.published_through``), so the first connection after a
  process start skips the rows the broker already acknowledged: a crash re-sends at most the
  in-flight window, not the whole backlog the ingest has not acknowledged yet.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import logging
import queue
import random
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..config import AppConfig, Endpoint
from ..errors import ApplianceError
from ..inbound import Incoming, Reply
from ..mqttclient import make_client, tls_files
from ..protocol.messages import OfflineReason, StatusMessage
from ..protocol.topics import Topics
from ..store import OutboxRow, Store, render_event

log = logging.getLogger(__name__)
_T = TypeVar("_T")


def backoff_delay(attempt: int, lo: float, hi: float, rnd: random.Random | None = None) -> float:
    """Full-jitter exponential backoff (AWS architecture blog, "Exponential Backoff And Jitter")."""
    ceiling = min(hi, lo * (2 ** min(attempt, 30)))
    return (rnd or random).uniform(0, ceiling)


def broker_order(endpoints: Sequence[_T], device_id: str, order: str) -> list[_T]:
    """The order in which a kiosk tries its brokers (``mqtt.broker_order``): as listed, or a
    permutation seeded by the device id, stable across restarts, so that a fleet spreads over
    the nodes and, when one is lost, its kiosks spread over the others instead of all moving to
    the next one in the list (docs/scaling.md, "Several brokers")."""
    if order == "listed" or len(endpoints) < 2:
        return list(endpoints)
    seed = int.from_bytes(hashlib.sha256(device_id.encode()).digest()[:8], "big")
    out = list(endpoints)
    random.Random(seed).shuffle(out)  # noqa: S311 - a spread, not cryptography
    return out


class PackedProperties:
    """MQTT 5 PUBLISH properties already encoded (MQTT 5.0 section 3.3.2.3): paho's publish
    only calls ``pack()`` on the object it is given, and building its ``Properties`` (a
    validating ``__setattr__`` per attribute, then ``pack`` walking every property name) cost
    ~44 us of the ~250 us per event of the outbox drain."""

    __slots__ = ("_packed",)

    def __init__(self, packed: bytes) -> None:
        self._packed = packed

    def pack(self) -> bytes:
        return self._packed

    def __repr__(self) -> str:
        return f"PackedProperties({self._packed!r})"


_SIG_KEY = struct.pack("!H", 3) + b"sig"


def _varint(n: int) -> bytes:
    """MQTT Variable Byte Integer (MQTT 5.0 section 1.5.5)."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_properties(
    sig: str | None, correlation_data: bytes | None = None, response_topic: str | None = None
) -> PackedProperties | None:
    """The properties of a PUBLISH we send, in paho's order: Response Topic (identifier 0x08,
    UTF-8 String), Correlation Data (0x09, Binary Data) and the device signature as User
    Property ("sig", value) (0x26, UTF-8 String Pair) (MQTT 5.0 sections 2.2.2.2, 3.3.2.3.5,
    3.3.2.3.6, 3.3.2.3.7)."""
    if sig is None and correlation_data is None and response_topic is None:
        return None
    buf = b""
    if response_topic is not None:
        topic = response_topic.encode()
        buf += b"\x08" + struct.pack("!H", len(topic)) + topic
    if correlation_data is not None:
        buf += b"\x09" + struct.pack("!H", len(correlation_data)) + correlation_data
    if sig is not None:
        value = sig.encode()
        buf += b"\x26" + _SIG_KEY + struct.pack("!H", len(value)) + value
    return PackedProperties(_varint(len(buf)) + buf)


class MqttAgent:
    """Keeps the kiosk connected and its outbox flowing. Thread-safe public methods."""

    def __init__(
        self,
        config: AppConfig,
        store: Store,
        *,
        on_message: Callable[[Incoming], bool | None],
        birth: Callable[[], dict[str, Any]],
        on_state: Callable[[str], None] | None = None,
        signer: Callable[[bytes], str] | None = None,
        extra_subscriptions: list[str] | None = None,
        ack_verifier: Callable[[bytes], list[tuple[int, int, str]]] | None = None,
    ) -> None:
        self.cfg = config.mqtt
        self.device_id = config.device.id
        self.groups = list(config.device.groups)
        self.topics = Topics(self.cfg.topic_prefix, self.device_id)
        self.store = store
        self._on_message_cb = on_message
        self._birth = birth
        self._on_state = on_state or (lambda _s: None)
        self._extra_subs = list(extra_subscriptions or [])
        # Device signature of a payload (MQTT 5 user property "sig"); None: unsigned.
        self._signer = signer if self.cfg.protocol == "5" else None
        self._stop = threading.Event()
        self._closing = threading.Event()  # stop() began: publish the offline status, no reconnect
        self._connected = threading.Event()
        self._client: paho.Client | None = None
        self._connected_at = 0.0  # time of the current connection's CONNECT (in its will)
        self._epoch = 0
        self._lock = threading.Lock()
        self._acks: collections.deque[int] = collections.deque()
        # Set by the drain while it has outbox rows in flight: only then does a PUBACK wake
        # it. The PUBACKs of replies and telemetry (most of them at 1 command in flight) are
        # only queued; the drain drops them at its next pass.
        self._drain_waits_for_acks = False
        # Batches of (replies with their properties, acknowledgements) for the network thread
        # (handover); a deque append/popleft is atomic.
        self._handed: collections.deque[
            tuple[list[tuple[str, bytes, Any]], list[Callable[[], None]]]
        ] = collections.deque()
        self._wake = threading.Condition(threading.Lock())
        self._nodelay_wake: socket.socket | None = None  # paho's wake-up socket set TCP_NODELAY
        self._net_thread: threading.Thread | None = None
        self._drain_thread: threading.Thread | None = None
        # end_to_end: the ingest's acknowledgements with their PUBACK, for the outbox-ack
        # thread (verified and applied off the network thread); None stops it.
        self._ingest_acks: queue.SimpleQueue[tuple[bytes, Callable[[], None]] | None] = (
            queue.SimpleQueue()
        )
        self._ingest_ack_thread: threading.Thread | None = None
        self.connects = 0
        self.last_error: str | None = None
        self.published_events = 0  # acknowledged by the broker (PUBACK)
        self.sent_events = 0  # outbox rows published (PUBLISH), re-sends included
        # end_to_end: the PUBACK watermark (read at the first connection, then as written)
        self._resume_after: int | None = None
        # End-to-end delivery: rows stay until the ingest's acknowledgement (verified by
        # ack_verifier, which raises TrustError on a refused document).
        self.end_to_end = self.cfg.delivery == "end_to_end"
        self._ack_verifier = ack_verifier
        self.acked_events = 0  # deleted on the ingest's acknowledgement
        self.refused_acks = 0
        self._rnd = random.Random()  # noqa: S311 - jitter, not cryptography
        # The brokers in this kiosk's order; the one of the current (or last) attempt.
        self.endpoints = broker_order(self.cfg.endpoints(), self.device_id, self.cfg.broker_order)
        self._endpoint_index = 0
        if self.cfg.brokers:
            log.info("mqtt: brokers in order: %s", ", ".join(e.name for e in self.endpoints))

    @property
    def broker(self) -> Endpoint:
        """The broker of the current connection (or of the next attempt, when offline)."""
        return self.endpoints[self._endpoint_index]

    # -- public ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        self._net_thread = threading.Thread(target=self._run, name="mqtt-net", daemon=True)
        self._drain_thread = threading.Thread(target=self._drain, name="outbox", daemon=True)
        self._net_thread.start()
        self._drain_thread.start()
        if self.end_to_end:
            self._ingest_ack_thread = threading.Thread(
                target=self._ingest_ack_worker, name="outbox-ack", daemon=True
            )
            self._ingest_ack_thread.start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def offline_status(self, reason: OfflineReason, now: float, connected_at: float) -> bytes:
        """The offline status document: the Last Will (``reason="lost"``, ``now`` = the
        connect time, no ``ts``: the broker sends it later) or the clean-stop status."""
        status = StatusMessage(online=False, device=self.device_id, reason=reason)
        if reason != "lost":
            status.ts = now
        status.connected_at = connected_at
        status.last_seen = now
        return status.to_json()

    def stop(self, reason: OfflineReason = "shutdown") -> None:
        """Publish the retained, signed offline status, disconnect cleanly, stop the threads."""
        # From here on a dropped connection is not re-established: a reconnect in the moment
        # between the DISCONNECT and the end of the process would leave a Last Will ("lost")
        # over the clean-stop status.
        self._closing.set()
        client = self._client
        if client is not None and self.connected:
            body = self.offline_status(reason, time.time(), self._connected_at)
            info = client.publish(
                self.topics.status,
                body,
                qos=1,
                retain=True,
                properties=self._properties(body),
            )
            deadline = time.monotonic() + 2.0
            while not info.is_published() and time.monotonic() < deadline and self.connected:
                time.sleep(0.01)
            client.disconnect()
        self._stop.set()
        self._kick()
        self._ingest_acks.put(None)
        for t in (self._net_thread, self._drain_thread, self._ingest_ack_thread):
            if t is not None:
                t.join(timeout=5)

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        correlation_data: bytes | None = None,
        response_topic: str | None = None,
    ) -> bool:
        """Publish now if connected (no durability: for replies, telemetry, progress). On MQTT 5
        the payload carries the device's signature in the user property ``sig`` (and
        ``response_topic`` its property, for the kiosk's own requests)."""
        client = self._client
        if client is None or not self.connected:
            return False
        body = payload.encode() if isinstance(payload, str) else payload
        props = self._properties(body, correlation_data, response_topic)
        info = client.publish(topic, body, qos=qos, retain=retain, properties=props)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def _properties(
        self, body: bytes, correlation_data: bytes | None = None, response_topic: str | None = None
    ) -> Any:
        if self.cfg.protocol != "5" or (
            correlation_data is None and self._signer is None and response_topic is None
        ):
            return None
        sig = self._signer(body) if self._signer is not None else None
        return publish_properties(sig, correlation_data, response_topic)

    def handover(self, replies: list[Reply], acks: list[Callable[[], None]]) -> None:
        """Send ``replies`` (QoS 1) and then run ``acks`` (PUBACKs), waking the network thread
        ONCE for all of them (``Incoming.handover``): queued from another thread one by one,
        each paho call writes its own wake-up byte, and the network thread often wakes, writes
        one packet and goes back to sleep before the next is queued. The replies' properties
        (and device signatures) are made here, in the caller's thread; the network thread only
        queues the packets and writes them together."""
        if not replies and not acks:
            return
        client = self._client
        prepared = [(t, body, self._properties(body, corr)) for t, body, corr in replies]
        wake = getattr(client, "_sockpairW", None)  # paho's own wake-up of its select()
        if client is None or wake is None or not self.connected:
            # Offline or between connections: no network thread to hand to; the calls are
            # thread-safe, and a reply that cannot go is answered to a repeat from the store.
            self._send_handed(client, prepared, acks)
            return
        self._handed.append((prepared, acks))
        try:
            wake.send(b"\0")
        except BlockingIOError:  # the pair is full of wake-ups already: it is awake
            pass
        except OSError:  # closed under us: the next loop() of the next connection sends them
            log.debug("mqtt: waking the network thread failed", exc_info=True)

    def _run_handed(self, client: paho.Client) -> None:
        """In the network thread, after each ``loop()``: what :meth:`handover` queued, then
        one write of all of it."""
        wake = getattr(client, "_sockpairW", None)
        if wake is not None and wake is not self._nodelay_wake:
            self._wake_nodelay(wake)
        if not self._handed:
            return
        while self._handed:
            prepared, acks = self._handed.popleft()
            self._send_handed(client, prepared, acks)
        # paho wrote a wake-up byte for each packet queued just now (from this thread): taken
        # out here, the next select() does not return at once for them. Every packet whose
        # byte is taken is already queued (paho queues, then writes the byte), so the
        # loop_write below sends it.
        wake = getattr(client, "_sockpairR", None)
        if wake is not None:
            with contextlib.suppress(OSError):  # BlockingIOError: none there
                wake.recv(10000)
        if client.want_write():
            client.loop_write()

    def _wake_nodelay(self, wake: socket.socket) -> None:
        """paho's wake-up pair is a TCP connection on loopback without ``TCP_NODELAY``: a wake-up
        byte sent while the previous one is not yet acknowledged is held back by Nagle's
        algorithm (RFC 896), so one of the two bytes a reply and its PUBACK write arrives after
        they were sent and wakes this thread once more for nothing, and a hand-over's byte can
        wait behind such a byte. Set once per pair (paho makes a new one with a new client)."""
        self._nodelay_wake = wake
        try:
            wake.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not TCP (a later paho may use socket.socketpair): nothing to do
            log.debug("mqtt: TCP_NODELAY on the wake-up pair failed", exc_info=True)

    @staticmethod
    def _send_handed(
        client: paho.Client | None,
        prepared: list[tuple[str, bytes, Any]],
        acks: list[Callable[[], None]],
    ) -> None:
        for topic, body, props in prepared:
            try:
                rc = (
                    client.publish(topic, body, qos=1, properties=props).rc
                    if client is not None
                    else MQTTErrorCode.MQTT_ERR_NO_CONN
                )
            except Exception:  # never breaks the network thread
                log.exception("mqtt: reply to %s failed", topic)
                continue
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                log.info("reply to %s not sent (offline); a repeat of the command gets it", topic)
        for ack in acks:
            try:
                ack()
            except Exception:
                log.exception("mqtt: acknowledging a message failed")

    def kick(self) -> None:
        """Tell the drainer that the outbox has new rows."""
        self._kick()

    # -- connection supervisor --------------------------------------------------------------

    def _make_client(self) -> paho.Client:
        tls = self.broker.tls
        client = make_client(
            self.cfg.client_id or self.device_id,
            protocol=self.cfg.protocol,
            tls=tls_files(tls.ca_file, tls.cert_file, tls.key_file) if tls.enabled else None,
            insecure=tls.insecure,
            persistent=True,
        )
        client.max_inflight_messages_set(0)  # we pace the outbox ourselves
        client.max_queued_messages_set(0)
        client.on_socket_register_write = lambda _c, _u, _s: None
        client.on_socket_unregister_write = lambda _c, _u, _s: None
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        if self.cfg.username:
            password = None
            if self.cfg.password_file is not None:
                password = self.cfg.password_file.read_text().strip()
            client.username_pw_set(self.cfg.username, password)
        # The will is fixed at CONNECT: signed now, with this connect time as last seen (the
        # fleet side knows later contact from the heartbeats and events it received).
        self._connected_at = time.time()
        will = self.offline_status("lost", self._connected_at, self._connected_at)
        will_props = None
        if self._signer is not None:
            will_props = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
            will_props.UserProperty = [("sig", self._signer(will))]
        client.will_set(self.topics.status, will, qos=1, retain=True, properties=will_props)
        return client

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            ep = self.broker
            client = self._make_client()
            # Messages are acknowledged by _on_message (or by whoever it hands one to), not by
            # paho when the callback returns.
            client.manual_ack_set(True)
            self._client = client
            self._had_connack = False
            try:
                props = None
                if self.cfg.protocol == "5":
                    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                    props.SessionExpiryInterval = self.cfg.session_expiry_s
                    client.connect(
                        ep.host, ep.port, self.cfg.keepalive_s, clean_start=False, properties=props
                    )
                else:
                    client.connect(ep.host, ep.port, self.cfg.keepalive_s)
            except (OSError, ssl.SSLError, ValueError) as exc:
                self.last_error = f"connect to {ep.name}: {exc}"
                log.warning("mqtt: %s", self.last_error)
            else:
                while not self._stop.is_set():
                    rc = client.loop(timeout=1.0)
                    if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        break
                    self._run_handed(client)
                if self._had_connack:
                    attempt = 0  # a session that got as far as CONNACK resets the backoff
                elif self.cfg.protocol == "5":
                    log.warning(
                        "mqtt: %s closed the connection before accepting it; a broker that "
                        "speaks only MQTT 3.1.1 (e.g. RabbitMQ's plugin) needs mqtt.protocol = "
                        '"3.1.1"',
                        ep.name,
                    )
            was = self._connected.is_set()
            self._connected.clear()
            self._kick()
            if was:
                self._on_state("disconnected")
            try:
                if client.socket() is not None:
                    client.disconnect()
            except Exception:  # tearing down a dead socket must never raise
                log.debug("mqtt: error closing a dead connection", exc_info=True)
            if self._stop.is_set() or self._closing.is_set():
                break
            delay = backoff_delay(
                attempt, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s, self._rnd
            )
            attempt += 1
            # A failed connect or a lost connection moves to the next broker (with one broker,
            # the same one again), after the same backoff.
            self._endpoint_index = (self._endpoint_index + 1) % len(self.endpoints)
            log.info(
                "mqtt: reconnecting in %.2f s to %s (attempt %d)", delay, self.broker.name, attempt
            )
            self._stop.wait(delay)

    _had_connack = False

    def _on_connect(self, client: paho.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self.last_error = f"broker refused the connection: {rc}"
            if self.cfg.protocol == "5":
                self.last_error += (
                    " (if this broker speaks only MQTT 3.1.1, e.g. RabbitMQ's "
                    'plugin, set mqtt.protocol = "3.1.1")'
                )
            log.error("mqtt: %s", self.last_error)
            self._had_connack = False
            client.disconnect()
            return
        self._had_connack = True
        self.connects += 1
        self.last_error = None
        subs = [(self.topics.cmd, 1), (self.topics.config_desired, 1)]
        subs += [(self.topics.group_cmd(g), 1) for g in self.groups]
        subs += [(t, 1) for t in self._extra_subs]
        if self.end_to_end:
            subs.append((self.topics.outbox_ack, 1))
        client.subscribe(subs)
        body = StatusMessage(
            online=True,
            device=self.device_id,
            ts=time.time(),
            connected_at=self._connected_at,
            broker=self.broker.name,
            **self._birth(),
        ).to_json()
        client.publish(
            self.topics.status, body, qos=1, retain=True, properties=self._properties(body)
        )
        log.info(
            "mqtt: connected to %s (session present: %s)", self.broker.name, flags.session_present
        )
        with self._lock:
            self._epoch += 1
        self._connected.set()
        self._kick()
        self._on_state("connected")

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not self._stop.is_set():
            self.last_error = f"disconnected: {rc}"
            log.warning("mqtt: %s", self.last_error)

    @staticmethod
    def _ack(client: paho.Client, mid: int, qos: int) -> None:
        """PUBACK (QoS 1) or PUBCOMP (QoS 2) of a received message; safe from any thread (paho
        queues it for the network thread). On a connection that has gone since, nothing: the
        broker delivers the message again on the next one (persistent session)."""
        if qos == 0:
            return
        try:
            client.ack(mid, qos)
        except Exception:  # a dead client must not break the caller
            log.debug("mqtt: acknowledging message %d failed", mid, exc_info=True)

    def _on_message(self, client: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        if self.end_to_end and msg.topic == self.topics.outbox_ack:
            # Verified (Ed25519) and applied on the outbox-ack thread, which acknowledges it
            # once applied: a crash before that gets it delivered again.
            ack = functools.partial(self._ack, client, msg.mid, msg.qos)
            self._ingest_acks.put((bytes(msg.payload), ack))
            return
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        expiry = getattr(props, "MessageExpiryInterval", None) if props else None
        incoming = Incoming(
            topic=msg.topic,
            payload=bytes(msg.payload),
            retained=bool(msg.retain),
            response_topic=response_topic or None,
            correlation_data=correlation,
            message_expiry=expiry,
            ack=functools.partial(self._ack, client, msg.mid, msg.qos),
            handover=self.handover,
        )
        taken = False
        try:
            taken = bool(self._on_message_cb(incoming))
        except Exception:
            # The daemon never dies of input: the dispatcher answers errors itself; anything
            # reaching here is a bug, logged with its traceback, and the loop goes on.
            log.exception("mqtt: message handler failed on %s", msg.topic)
        finally:
            if not taken:
                self._ack(client, msg.mid, msg.qos)

    def _ingest_ack_worker(self) -> None:
        """The ``outbox-ack`` thread: the ingest's acknowledgements in arrival order, each
        acknowledged to the broker (PUBACK) only after it was applied. Stopped with the agent:
        what it did not apply was not acknowledged, and the broker delivers it again."""
        while True:
            item = self._ingest_acks.get()
            if item is None or self._stop.is_set():
                return
            payload, ack = item
            try:
                self._on_outbox_ack(payload)
            except Exception:  # a bug here must not stop the next acknowledgements
                log.exception("mqtt: applying an outbox acknowledgement failed")
            finally:
                ack()

    def _on_outbox_ack(self, payload: bytes) -> None:
        """The ingest's acknowledgement, applied before its PUBACK (on the ``outbox-ack``
        thread): a crash here gets the acknowledgement delivered again."""
        if self._ack_verifier is None:
            log.warning("mqtt: outbox acknowledgement ignored: no verifier configured")
            return
        try:
            ranges = self._ack_verifier(payload)
            deleted = self.store.outbox.ack_ranges(ranges)
        except ApplianceError as exc:
            self.refused_acks += 1
            log.warning("mqtt: outbox acknowledgement refused (%s): %s", exc.code, exc.message)
            return
        if deleted:
            self.acked_events += deleted
            self._kick()

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        # Runs in the network thread with paho's message lock held: never take a lock that
        # a publishing thread may hold. A deque append is atomic.
        self._acks.append(mid)
        # Appended before the flag is read, and the drain sets the flag before it looks at
        # the deque and sleeps: either it sees this PUBACK or this wakes it.
        if self._drain_waits_for_acks:
            self._kick()

    # -- outbox drain ------------------------------------------------------------------------

    def _kick(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def _render(self, row: OutboxRow) -> tuple[bytes, Any]:
        """The event's bytes and MQTT properties: as signed when stored, or rendered (and
        signed) now for rows stored without the device key (another local process)."""
        if row.payload is not None:
            body = bytes(row.payload)
            if row.sig is None or self.cfg.protocol != "5":
                return body, self._properties(body)
            return body, publish_properties(row.sig)
        body = render_event(row.id, row.seq, self.device_id, row.type, row.created, row.data)
        return body, self._properties(body)

    def _drain(self) -> None:
        while not self._stop.is_set():
            if not self._connected.is_set():
                with self._wake:
                    self._wake.wait(0.5)
                continue
            with self._lock:
                epoch = self._epoch
            client = self._client
            if client is None:
                continue
            self._acks.clear()
            self._drain_connection(client, epoch)

    def _drain_connection(self, client: paho.Client, epoch: int) -> None:  # noqa: C901, PLR0912  one loop owns the in-flight window, PUBACK flushes, the resend timer and stop; split, the parts would share their state through self
        inflight: dict[int, int] = {}  # mid -> seq
        # Every connection starts from the oldest row still in the outbox, except the first
        # one of this process with end-to-end delivery: rows the broker acknowledged before
        # a crash or a restart wait for the ingest's acknowledgement (or the resend timer)
        # instead of all being sent again at once.
        last_seq = 0
        if self.end_to_end and self._resume_after is None:
            self._resume_after = self.store.outbox.published_through()
            last_seq = self._resume_after
            if last_seq:
                log.info(
                    "mqtt: events up to seq %d were acknowledged by the broker before this "
                    "start; not sending them again unless the ingest does not acknowledge them",
                    last_seq,
                )
        # The in-flight window (mqtt.max_inflight) bounds what a crash can make us send twice:
        # a row counts against it from its PUBLISH until its PUBACK is on disk (deleted, or
        # with end-to-end delivery recorded in the PUBACK watermark), not only until the
        # PUBACK arrives.
        limit = self.cfg.max_inflight
        acked: list[int] = []
        last_flush = time.monotonic()
        # PUBACK watermark: seqs in the order sent; the front advances while acknowledged.
        sent_order: collections.deque[int] = collections.deque()
        puback_seen: set[int] = set()
        watermark = 0
        # end_to_end: the oldest row, since when it is the oldest, and the resend pause.
        resend_base = self.cfg.delivery_resend_s
        resend_after = resend_base
        oldest, oldest_since, next_check = 0, time.monotonic(), 0.0
        while not self._stop.is_set() and self._connected.is_set() and self._epoch == epoch:
            while self._acks:
                seq = inflight.pop(self._acks.popleft(), None)
                if seq is not None:
                    acked.append(seq)
                    if self.end_to_end:
                        puback_seen.add(seq)
            while sent_order and sent_order[0] in puback_seen:
                puback_seen.discard(front := sent_order.popleft())
                watermark = max(watermark, front)
            now = time.monotonic()
            # Flushed at half the window at the latest, so the other half stays in flight while
            # the flush's fsync runs (a full window would stall until it is on disk).
            if acked and (
                len(acked) >= 256
                or now - last_flush > 0.02
                or not inflight
                or len(acked) >= max(1, limit // 2)
            ):
                self._flush_acked(acked, watermark)
                acked = []
                last_flush = now
            if self.end_to_end and now >= next_check:
                # A row the broker accepted but the ingest never acknowledges (lost by a broker
                # crash, or by an ingest that was away) stays the oldest row: send it again,
                # with everything after it that is still waiting.
                next_check = now + 1.0
                head = self.store.outbox.oldest_seq()
                if head != oldest:
                    oldest, oldest_since, resend_after = head, now, resend_base
                elif (
                    head
                    and head <= last_seq
                    and head not in inflight.values()
                    and now - oldest_since > resend_after
                ):
                    log.warning(
                        "mqtt: event seq %d not acknowledged by the ingest %.0f s after it was "
                        "published; sending the %d waiting event(s) again",
                        head,
                        now - oldest_since,
                        self.store.outbox.depth(),
                    )
                    last_seq = head - 1
                    oldest_since = now
                    resend_after = min(resend_after * 2, resend_base * 16)
            room = limit - len(inflight) - len(acked)
            sent = 0
            if room > 0:
                for row in self.store.outbox.pending(last_seq, min(room, 500)):
                    body, props = self._render(row)
                    info = client.publish(
                        row.topic or self.topics.event(row.type),
                        body,
                        qos=row.qos,
                        retain=row.retain,
                        properties=props,
                    )
                    if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        return  # connection went away; the next epoch starts over
                    inflight[info.mid] = row.seq
                    if self.end_to_end:
                        sent_order.append(row.seq)
                    last_seq = row.seq
                    sent += 1
                    self.sent_events += 1
            if sent == 0 and not self._acks:
                self._drain_waits_for_acks = bool(inflight)
                with self._wake:
                    if not self._acks:
                        self._wake.wait(0.02 if acked else 0.5)
        if acked:
            self._flush_acked(acked, watermark)

    def _flush_acked(self, acked: list[int], watermark: int) -> None:
        """Make PUBACKs durable: delete the rows, or with end-to-end delivery (rows stay until
        the ingest acknowledges them) raise the PUBACK watermark."""
        if not self.end_to_end:
            self.store.outbox.ack(acked)
        elif watermark > (self._resume_after or 0):
            self.store.outbox.set_published_through(watermark)
            self._resume_after = watermark
        self.published_events += len(acked)
