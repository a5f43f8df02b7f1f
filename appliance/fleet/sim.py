"""Fleet simulator: thousands of virtual kiosks in one process, each on its own MQTT connection.

Why not paho: a paho ``Client`` wants a thread (``loop_start``) or a hand-driven ``loop()`` per
client, and 5,000 Python threads on a 2-core kiosk-controller box measure the scheduler, not the
broker. Here every kiosk is a coroutine on one asyncio event loop (epoll underneath) speaking MQTT
3.1.1 or 5 through a small codec of its own (OASIS MQTT 3.1.1 §2-3 and MQTT 5.0 §2-3: only the
packets a kiosk needs: CONNECT with Will, CONNACK, PUBLISH QoS 0/1, PUBACK, SUBSCRIBE, SUBACK,
PINGREQ/PINGRESP, DISCONNECT).

Each virtual kiosk behaves like the daemon on the wire (docs/protocol.md):

* persistent session (3.1.1 ``clean_session=0``; 5 ``clean_start=0`` + Session Expiry Interval);
* a retained Last Will ``{"online": false, "reason": "lost"}`` on ``{prefix}/{id}/status`` and a
  retained birth ``{"online": true, ...}`` on every connect;
* a heartbeat on ``{prefix}/{id}/telemetry`` (QoS 0) every ``heartbeat_s`` seconds, at a random
  phase so the fleet does not beat in lockstep;
* durable-looking events on ``{prefix}/{id}/events/{type}`` (QoS 1) with a unique ``id`` and a
  per-kiosk strictly increasing ``seq``, kept in an in-memory outbox until PUBACK and re-sent
  in ``seq`` order after a reconnect (at least once, like the daemon's SQLite outbox);
* commands on ``{prefix}/{id}/cmd``: ``ping`` and ``status`` are answered with the daemon's reply
  shape, anything else with the daemon's error codes (``invalid_json``, ``invalid_request``,
  ``unknown_command``), to the MQTT 5 response topic with correlation data or to
  ``{prefix}/{id}/reply``;
* reconnection with the daemon's own full-jitter ``backoff_delay`` (imported, not copied), the
  attempt counter reset once a CONNACK was received.

With ``FleetConfig.identities`` (appliance/fleet/simidentity.py) every kiosk presents its own
client certificate (CN = its id, as the shipped ACL wants) and signs everything it publishes,
Last Will included, with its own device key (the ``sig`` user property, MQTT 5 only), so the
simulated fleet runs on the production path; given the fleet's root keys, it also verifies
signed commands with the daemon's own ``CommandVerifier`` (refusals answered with its codes).

What it does not simulate: the SQLite outbox (its durability is the daemon's, tested there),
devices. It is a load and protocol generator, not a second daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import socket
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from ..agent.mqtt import backoff_delay, broker_order
from ..dispatch import CommandReply, ErrorBody
from ..errors import ConfigError, DeviceDisconnected, DeviceTimeout, ProtocolError
from ..protocol.codes import ErrorCode, EventType
from ..protocol.messages import EventMessage, StatusMessage
from ..protocol.topics import Topics
from .simidentity import SimIdentities

log = logging.getLogger(__name__)

# --- MQTT codec (pure, no I/O) -----------------------------------------------------------------
# Packet types, MQTT 3.1.1 §2.2.1 / MQTT 5.0 §2.1.2.
CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14

# MQTT 5.0 §2.2.2.2 property identifiers and their value types.
_PROP_TYPES: dict[int, str] = {
    0x01: "byte",  # Payload Format Indicator
    0x02: "u32",  # Message Expiry Interval
    0x03: "str",  # Content Type
    0x08: "str",  # Response Topic
    0x09: "bin",  # Correlation Data
    0x0B: "varint",  # Subscription Identifier
    0x11: "u32",  # Session Expiry Interval
    0x12: "str",  # Assigned Client Identifier
    0x13: "u16",  # Server Keep Alive
    0x15: "str",  # Authentication Method
    0x16: "bin",  # Authentication Data
    0x17: "byte",  # Request Problem Information
    0x18: "u32",  # Will Delay Interval
    0x19: "byte",  # Request Response Information
    0x1A: "str",  # Response Information
    0x1C: "str",  # Server Reference
    0x1F: "str",  # Reason String
    0x21: "u16",  # Receive Maximum
    0x22: "u16",  # Topic Alias Maximum
    0x23: "u16",  # Topic Alias
    0x24: "byte",  # Maximum QoS
    0x25: "byte",  # Retain Available
    0x26: "pair",  # User Property
    0x27: "u32",  # Maximum Packet Size
    0x28: "byte",  # Wildcard Subscription Available
    0x29: "byte",  # Subscription Identifier Available
    0x2A: "byte",  # Shared Subscription Available
}
MAX_REMAINING = 268_435_455  # §2.2.3: four varint bytes


def encode_varint(n: int) -> bytes:
    """Variable Byte Integer (MQTT 3.1.1 §2.2.3, MQTT 5.0 §1.5.5)."""
    if not 0 <= n <= MAX_REMAINING:
        raise ValueError(f"varint out of range: {n}")
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position); ProtocolError on a truncated or over-long integer."""
    value, mult = 0, 1
    for i in range(4):
        if pos + i >= len(data):
            raise ProtocolError("truncated variable byte integer", device="mqtt")
        b = data[pos + i]
        value += (b & 0x7F) * mult
        if not b & 0x80:
            return value, pos + i + 1
        mult *= 128
    raise ProtocolError("variable byte integer longer than 4 bytes", device="mqtt")


def _str(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    if len(raw) > 0xFFFF:
        raise ValueError("MQTT string longer than 65535 bytes")
    return struct.pack("!H", len(raw)) + raw


def _packet(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([(ptype << 4) | flags]) + encode_varint(len(body)) + body


def encode_properties(props: dict[int, Any]) -> bytes:
    """MQTT 5 property block (length-prefixed) from {identifier: value}."""
    out = bytearray()
    for pid, value in props.items():
        kind = _PROP_TYPES[pid]
        out += encode_varint(pid)
        if kind == "byte":
            out.append(int(value))
        elif kind == "u16":
            out += struct.pack("!H", int(value))
        elif kind == "u32":
            out += struct.pack("!I", int(value))
        elif kind == "varint":
            out += encode_varint(int(value))
        elif kind in ("str", "bin"):
            out += _str(value)
        else:  # pair
            out += _str(value[0]) + _str(value[1])
    return encode_varint(len(out)) + bytes(out)


def decode_properties(data: bytes, pos: int) -> tuple[dict[int, Any], int]:
    """({identifier: value}, next position) of an MQTT 5 property block."""
    length, pos = decode_varint(data, pos)
    end = pos + length
    if end > len(data):
        raise ProtocolError("property block runs past the packet", device="mqtt")
    props: dict[int, Any] = {}
    while pos < end:
        pid, pos = decode_varint(data, pos)
        kind = _PROP_TYPES.get(pid)
        if kind is None:
            raise ProtocolError(f"unknown MQTT 5 property 0x{pid:02x}", device="mqtt")
        value: Any
        width = {"byte": 1, "u16": 2, "u32": 4}.get(kind, 0)
        if pos + width > end:
            raise ProtocolError(f"property 0x{pid:02x} runs past its block", device="mqtt")
        if kind == "byte":
            value, pos = data[pos], pos + 1
        elif kind == "u16":
            (value,), pos = struct.unpack_from("!H", data, pos), pos + 2
        elif kind == "u32":
            (value,), pos = struct.unpack_from("!I", data, pos), pos + 4
        elif kind == "varint":
            value, pos = decode_varint(data, pos)
        elif kind in ("str", "bin"):
            value, pos = _read_str(data, pos)
            if kind == "str":
                value = value.decode("utf-8", "replace")
        else:
            k, pos = _read_str(data, pos)
            v, pos = _read_str(data, pos)
            value = (k.decode("utf-8", "replace"), v.decode("utf-8", "replace"))
        if pos > end:
            raise ProtocolError("property runs past its block", device="mqtt")
        props[pid] = value
    return props, end


def _read_str(data: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 2 > len(data):
        raise ProtocolError("truncated string length", device="mqtt")
    (n,) = struct.unpack_from("!H", data, pos)
    if pos + 2 + n > len(data):
        raise ProtocolError("truncated string", device="mqtt")
    return data[pos + 2 : pos + 2 + n], pos + 2 + n


def encode_connect(
    client_id: str,
    *,
    keepalive: int,
    v5: bool,
    clean: bool = False,
    session_expiry: int = 0,
    will_topic: str | None = None,
    will_payload: bytes = b"",
    will_qos: int = 1,
    will_retain: bool = True,
    will_props: dict[int, Any] | None = None,
) -> bytes:
    """CONNECT (3.1.1 §3.1, 5.0 §3.1)."""
    flags = 0x02 if clean else 0
    if will_topic is not None:
        flags |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
    body = _str("MQTT") + bytes([5 if v5 else 4, flags]) + struct.pack("!H", keepalive)
    if v5:
        body += encode_properties({0x11: session_expiry} if session_expiry else {})
    body += _str(client_id)
    if will_topic is not None:
        if v5:
            body += encode_properties(will_props or {})
        body += _str(will_topic) + _str(will_payload)
    return _packet(CONNECT, 0, body)


def encode_publish(
    topic: str,
    payload: bytes,
    *,
    qos: int = 0,
    retain: bool = False,
    packet_id: int = 0,
    v5: bool,
    props: dict[int, Any] | None = None,
    dup: bool = False,
) -> bytes:
    """PUBLISH (3.1.1 §3.3, 5.0 §3.3)."""
    flags = (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    body = _str(topic)
    if qos:
        body += struct.pack("!H", packet_id)
    if v5:
        body += encode_properties(props or {})
    return _packet(PUBLISH, flags, body + payload)


def encode_subscribe(packet_id: int, filters: list[tuple[str, int]], *, v5: bool) -> bytes:
    """SUBSCRIBE (3.1.1 §3.8, 5.0 §3.8): fixed header flags must be 0b0010."""
    body = struct.pack("!H", packet_id) + (encode_properties({}) if v5 else b"")
    for topic, qos in filters:
        body += _str(topic) + bytes([qos])
    return _packet(SUBSCRIBE, 0x02, body)


def encode_puback(packet_id: int) -> bytes:
    """PUBACK with success (5.0 §3.4.2.1: remaining length 2 means reason 0x00)."""
    return _packet(PUBACK, 0, struct.pack("!H", packet_id))


PINGREQ_BYTES = bytes([PINGREQ << 4, 0])
DISCONNECT_BYTES = bytes([DISCONNECT << 4, 0])


@dataclass(frozen=True)
class Publish:
    """An incoming PUBLISH."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    packet_id: int
    props: dict[int, Any]


def decode_publish(flags: int, body: bytes, *, v5: bool) -> Publish:
    """PUBLISH variable header and payload; ProtocolError on malformed input."""
    qos = (flags >> 1) & 3
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3", device="mqtt")
    raw_topic, pos = _read_str(body, 0)
    packet_id = 0
    if qos:
        if pos + 2 > len(body):
            raise ProtocolError("truncated packet identifier", device="mqtt")
        (packet_id,) = struct.unpack_from("!H", body, pos)
        pos += 2
    props: dict[int, Any] = {}
    if v5:
        props, pos = decode_properties(body, pos)
    try:
        topic = raw_topic.decode()
    except UnicodeDecodeError:
        raise ProtocolError("topic is not UTF-8", device="mqtt") from None
    return Publish(topic, body[pos:], qos, bool(flags & 1), packet_id, props)


def decode_connack(body: bytes, *, v5: bool) -> tuple[bool, int]:
    """(session present, return/reason code) of a CONNACK (3.1.1 §3.2, 5.0 §3.2)."""
    if len(body) < 2:
        raise ProtocolError("truncated CONNACK", device="mqtt")
    return bool(body[0] & 1), body[1]


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    """(type, flags, body) of the next packet on a stream."""
    head = await reader.readexactly(1)
    length, mult = 0, 1
    for _ in range(4):
        b = (await reader.readexactly(1))[0]
        length += (b & 0x7F) * mult
        if not b & 0x80:
            break
        mult *= 128
    else:
        raise ProtocolError("remaining length longer than 4 bytes", device="mqtt")
    body = await reader.readexactly(length) if length else b""
    return head[0] >> 4, head[0] & 0x0F, body


# --- configuration and statistics ------------------------------------------------------------


@dataclass
class FleetConfig:
    """Everything one simulated fleet needs. Defaults follow the daemon's (config.py)."""

    host: str = "127.0.0.1"
    port: int = 1883
    # Several brokers (host, port), as the daemon's mqtt.brokers with broker_order "device":
    # each kiosk its own order, the next one after a failed connect or a lost connection.
    brokers: list[tuple[str, int]] | None = None
    devices: int = 10
    id_prefix: str = "sim"
    first_index: int = 0
    topic_prefix: str = "kiosk"
    protocol: str = "5"
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    heartbeat_s: float = 10.0
    event_rate: float = 0.0  # simulated enrollments per kiosk per second (Poisson)
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 60.0
    connect_rate: float = 500.0  # initial ramp, connections per second
    max_inflight: int = 20
    connect_timeout_s: float = 10.0
    seed: int = 1
    tls_ca: str | None = None  # CA bundle of the broker certificate: TLS when set
    tls_cert: str | None = None  # client certificate (mutual TLS), shared by every kiosk
    tls_key: str | None = None
    # a certificate and a device key per kiosk (the production path); replaces tls_cert/tls_key
    identities: SimIdentities | None = None

    def validate(self) -> FleetConfig:
        problems: list[tuple[str, str]] = []
        if self.protocol not in ("5", "3.1.1"):
            problems.append(("protocol", "must be 5 or 3.1.1"))
        if self.brokers is not None and not self.brokers:
            problems.append(("brokers", "give at least one (host, port), or None for host/port"))
        if self.devices < 1:
            problems.append(("devices", "must be at least 1"))
        if self.heartbeat_s <= 0:
            problems.append(("heartbeat_s", "must be positive"))
        if self.event_rate < 0:
            problems.append(("event_rate", "must not be negative"))
        if not 5 <= self.keepalive_s <= 3600:
            problems.append(("keepalive_s", "must be 5-3600 like the daemon's"))
        if self.reconnect_min_s <= 0 or self.reconnect_max_s < self.reconnect_min_s:
            problems.append(("reconnect_min_s", "need 0 < reconnect_min_s <= reconnect_max_s"))
        if self.connect_rate <= 0:
            problems.append(("connect_rate", "must be positive"))
        if self.max_inflight < 1:
            problems.append(("max_inflight", "must be at least 1"))
        if (self.tls_cert is None) != (self.tls_key is None):
            problems.append(("tls_cert/tls_key", "give both or neither"))
        if self.tls_cert is not None and self.tls_ca is None:
            problems.append(("tls_ca", "needed with a client certificate"))
        if self.identities is not None:
            problems += self.identities.problems(
                [f"{self.id_prefix}-{self.first_index + i:05d}" for i in range(self.devices)],
                v5=self.protocol == "5",
                shared_cert=self.tls_cert is not None,
            )
        try:
            Topics(self.topic_prefix, f"{self.id_prefix}-0")
        except ValueError as exc:
            problems.append(("topic_prefix/id_prefix", str(exc)))
        if problems:
            raise ConfigError(f"{len(problems)} fleet simulator problem(s)", problems)
        return self

    @property
    def v5(self) -> bool:
        return self.protocol == "5"


@dataclass
class FleetStats:
    """Counters of the whole simulated fleet (one event loop, so no locks needed inside it)."""

    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    connected: int = 0
    heartbeats: int = 0
    events_created: int = 0
    events_acked: int = 0
    events_resent: int = 0
    commands: int = 0
    protocol_errors: int = 0
    events_pending: int = 0  # still in the kiosks' in-memory outboxes when the run ended
    connect_times: list[float] = field(default_factory=list)  # time.time() of each CONNACK

    def snapshot(self) -> dict[str, Any]:
        return {
            "connects": self.connects,
            "connect_failures": self.connect_failures,
            "disconnects": self.disconnects,
            "connected": self.connected,
            "heartbeats": self.heartbeats,
            "events_created": self.events_created,
            "events_acked": self.events_acked,
            "events_resent": self.events_resent,
            "commands": self.commands,
            "protocol_errors": self.protocol_errors,
            "events_pending": self.events_pending,
        }


def peak_rate(times: list[float], window_s: float = 1.0) -> float:
    """Largest number of timestamps in any sliding window of ``window_s``, per second."""
    s = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(s):
        while t - s[lo] > window_s:
            lo += 1
        best = max(best, hi - lo + 1)
    return best / window_s


# --- one virtual kiosk --------------------------------------------------------------------------


class _Lost(Exception):
    """The connection ended (internal control flow of one kiosk; never escapes it)."""


class _Refused(Exception):
    """A signed command the kiosk's verifier refused (internal control flow of _on_command)."""


class VirtualKiosk:
    """One kiosk: a coroutine that stays connected, beats, raises events and answers pings."""

    def __init__(self, fleet: FleetSim, index: int) -> None:
        cfg = fleet.cfg
        self.fleet = fleet
        self.cfg = cfg
        self.id = f"{cfg.id_prefix}-{index:05d}"
        self.topics = Topics(cfg.topic_prefix, self.id)
        self.rnd = random.Random(f"{cfg.seed}-{index}")  # noqa: S311 - simulation, not crypto
        self.brokers = broker_order(cfg.brokers or [(cfg.host, cfg.port)], self.id, "device")
        self.broker = self.brokers[0]  # of the current (or next) connection
        self.started = time.monotonic()
        self.seq = 0
        self.outbox: dict[int, bytes] = {}  # seq -> rendered event, until PUBACK
        self.inflight: dict[int, int] = {}  # packet id -> seq
        self.sent_before: set[int] = set()  # seqs sent on an earlier connection, unacked
        self.writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()
        self.capacity = asyncio.Event()
        self._pids = itertools.cycle(range(1, 65536))
        self.last_sent = 0.0
        self.last_received = 0.0
        self.had_connack = False
        self.closing = False
        self.acked = asyncio.Event()

    # -- helpers -----------------------------------------------------------------------------

    def _next_pid(self) -> int:
        while True:
            pid = next(self._pids)
            if pid not in self.inflight:
                return pid

    def _send(self, data: bytes, *, final: bool = False) -> None:
        w = self.writer
        if w is None or w.is_closing():
            raise _Lost("not connected")
        if self.closing and not final:
            # After the clean-stop sequence began nothing else may follow the DISCONNECT:
            # the broker would discard it and the counters would show phantom losses.
            raise _Lost("shutting down")
        w.write(data)
        self.last_sent = time.monotonic()

    def _sig(self, payload: bytes, props: dict[int, Any] | None = None) -> dict[int, Any]:
        """``props`` plus the device signature (User Property ``sig``) with identities."""
        out = dict(props or {})
        ids = self.cfg.identities
        if ids is not None:
            out[0x26] = ("sig", ids.sign(self.id, payload))
        return out

    def _publish(self, topic: str, obj: Any, *, qos: int = 0, retain: bool = False) -> None:
        payload = json.dumps(obj, separators=(",", ":")).encode()
        pid = self._next_pid() if qos else 0
        self._send(
            encode_publish(
                topic,
                payload,
                qos=qos,
                retain=retain,
                packet_id=pid,
                v5=self.cfg.v5,
                props=self._sig(payload),
            )
        )

    # -- main loop ------------------------------------------------------------------------------

    async def run(self, start_delay: float) -> None:
        await asyncio.sleep(start_delay)
        attempt = 0
        events = asyncio.create_task(self._raise_events())
        try:
            while not self.fleet.stopping:
                self.had_connack = False
                try:
                    await self._session()
                except (OSError, EOFError, asyncio.IncompleteReadError, _Lost):
                    pass
                except (ProtocolError, DeviceTimeout) as exc:
                    self.fleet.stats.protocol_errors += exc.code == ErrorCode.PROTOCOL_ERROR
                    log.debug("%s: %s", self.id, exc)
                finally:
                    self._close()
                if self.had_connack:
                    self.fleet.stats.disconnects += 1
                    attempt = 0  # as the daemon: a session that reached CONNACK resets backoff
                if self.fleet.is_stopping():
                    break
                delay = backoff_delay(
                    attempt, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s, self.rnd
                )
                attempt += 1
                nxt = (self.brokers.index(self.broker) + 1) % len(self.brokers)
                self.broker = self.brokers[nxt]
                await self.fleet.wait_stop(delay)
        finally:
            events.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await events

    def _close(self) -> None:
        if self.connected.is_set():
            self.connected.clear()
            self.fleet.stats.connected -= 1
        self.inflight.clear()
        w, self.writer = self.writer, None
        if w is not None:
            # abort, not close: the session is over (a clean stop drained its DISCONNECT
            # first). close() would wait to flush a buffer a dead or blackholed broker never
            # takes, and the transport and its socket would outlive the event loop (leaked,
            # a ResourceWarning when collected).
            w.transport.abort()

    async def _session(self) -> None:
        """One connection, from TCP connect to its end (always by an exception)."""
        cfg = self.cfg
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    *self.broker,
                    ssl=self.fleet.ssl_for(self.id),
                    server_hostname=self.broker[0] if self.fleet.ssl_for(self.id) else None,
                ),
                cfg.connect_timeout_s,
            )
        except (TimeoutError, OSError):
            self.fleet.stats.connect_failures += 1
            raise _Lost("connect failed") from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Without TCP_NODELAY every small publish waits for Nagle (specs: ~88 ms).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.writer = writer
        will = _json(StatusMessage(online=False, device=self.id, reason="lost"))
        self._send(
            encode_connect(
                self.id,
                keepalive=cfg.keepalive_s,
                v5=cfg.v5,
                clean=False,
                session_expiry=cfg.session_expiry_s,
                will_topic=self.topics.status,
                will_payload=will,
                will_props=self._sig(will),
            )
        )
        try:
            ptype, _flags, body = await asyncio.wait_for(read_packet(reader), cfg.connect_timeout_s)
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            # No CONNACK: the broker is swamped, or refused us (with TLS 1.3 a rejected client
            # certificate shows here, on the first read, not in the handshake).
            self.fleet.stats.connect_failures += 1
            raise _Lost("no CONNACK") from None
        if ptype != CONNACK:
            raise ProtocolError(f"expected CONNACK, got packet type {ptype}", device="mqtt")
        _present, code = decode_connack(body, v5=cfg.v5)
        if code != 0:
            self.fleet.stats.connect_failures += 1
            log.warning("%s: broker refused the connection (code %d)", self.id, code)
            raise _Lost("refused")
        self.last_received = time.monotonic()
        self.had_connack = True
        stats = self.fleet.stats
        stats.connects += 1
        stats.connect_times.append(time.time())
        stats.connected += 1
        self.connected.set()
        subs = [(self.topics.cmd, 1), (self.topics.config_desired, 1)]
        for ext in self.fleet.extensions:  # e.g. fleet/simjobs.py
            subs += [(t, 1) for t in ext.subscriptions(self)]
        self._send(encode_subscribe(self._next_pid(), subs, v5=cfg.v5))
        self._publish(
            self.topics.status,
            StatusMessage(
                online=True,
                device=self.id,
                ts=time.time(),
                broker=f"{self.broker[0]}:{self.broker[1]}",
                version="fleet-sim",
                profile="sim",
                devices={"camera": "ok", "fingerprint": "ok", "card": "ok"},
            ).model_dump(exclude_none=True),
            qos=1,
            retain=True,
        )
        self._drain_outbox()
        ticker = asyncio.create_task(self._tick())
        try:
            while True:
                ptype, flags, body = await read_packet(reader)
                self.last_received = time.monotonic()
                self._on_packet(ptype, flags, body)
                if self.writer is not None and self.writer.transport.get_write_buffer_size() > (
                    1 << 16
                ):
                    await self.writer.drain()
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError, _Lost, OSError):
                await ticker

    async def _tick(self) -> None:
        """Heartbeats and keepalive, the way paho (hence the daemon) keeps it: a PINGREQ when
        nothing was sent *or nothing was received* for ``keepalive`` seconds, and the broker
        declared dead when that PINGREQ is unanswered for another ``keepalive`` (so a silent
        link is noticed within 2 x keepalive; MQTT 3.1.1 §3.1.2.10)."""
        cfg = self.cfg
        ka = float(cfg.keepalive_s)
        next_beat = time.monotonic() + self.rnd.uniform(0, cfg.heartbeat_s)
        ping_sent = 0.0  # monotonic time of the unanswered PINGREQ, 0 when none
        while True:
            now = time.monotonic()
            if ping_sent and self.last_received >= ping_sent:
                ping_sent = 0.0  # PINGRESP (or anything) arrived after it
            if ping_sent and now - ping_sent >= ka:
                log.info("%s: no PINGRESP within the keepalive, reconnecting", self.id)
                self._close()
                return
            if now >= next_beat:
                self._heartbeat()
                next_beat = now + cfg.heartbeat_s
            if not ping_sent and (now - self.last_sent >= ka or now - self.last_received >= ka):
                self._send(PINGREQ_BYTES)
                ping_sent = now
            if ping_sent:
                wake = min(next_beat, ping_sent + ka)
            else:
                wake = min(next_beat, min(self.last_sent, self.last_received) + ka)
            await asyncio.sleep(min(max(wake - time.monotonic(), 0.01), 5.0))

    def _heartbeat(self) -> None:
        self._publish(
            self.topics.telemetry,
            {
                "device": self.id,
                "ts": time.time(),
                "uptime_s": round(time.monotonic() - self.started, 3),
                "load": [0.1, 0.1, 0.1],
                "mem_total": None,
                "mem_available": None,
                "rss": None,
                "disk_free": None,
                "soc_temp_c": None,
                "outbox_depth": len(self.outbox),
                "devices": {"camera": "ok", "fingerprint": "ok", "card": "ok"},
            },
        )
        self.fleet.stats.heartbeats += 1

    # -- events -----------------------------------------------------------------------------

    async def _raise_events(self) -> None:
        rate = self.cfg.event_rate
        if rate <= 0:
            return
        while not self.fleet.stopping:
            await asyncio.sleep(self.rnd.expovariate(rate))
            if self.fleet.is_stopping():
                return
            self.raise_event(
                EventType.ENROLLMENT_SIMULATED, {"session": self.seq + 1, "outcome": "completed"}
            )

    def raise_event(self, type_: str, data: dict[str, Any]) -> int:
        """Queue a durable event (QoS 1) and send it when possible. Returns its seq."""
        self.seq += 1
        event = EventMessage(
            id=uuid.UUID(int=self.rnd.getrandbits(128)).hex,
            seq=self.seq,
            device=self.id,
            type=type_,
            ts=time.time(),
            data=data,
        )
        self.outbox[self.seq] = _json(event)
        self.fleet.stats.events_created += 1
        if self.connected.is_set():
            with contextlib.suppress(_Lost, OSError):
                self._drain_outbox()
        return self.seq

    def _drain_outbox(self) -> None:
        """Send queued events in seq order, at most ``max_inflight`` unacknowledged."""
        sending = set(self.inflight.values())
        for seq, payload in list(self.outbox.items()):
            if len(self.inflight) >= self.cfg.max_inflight:
                return
            if seq in sending:
                continue
            pid = self._next_pid()
            topic = self.topics.event(json.loads(payload)["type"])
            self._send(
                encode_publish(
                    topic, payload, qos=1, packet_id=pid, v5=self.cfg.v5, props=self._sig(payload)
                )
            )
            self.inflight[pid] = seq
            if seq in self.sent_before:
                self.fleet.stats.events_resent += 1
            self.sent_before.add(seq)

    # -- incoming -----------------------------------------------------------------------------

    def _on_packet(self, ptype: int, flags: int, body: bytes) -> None:
        if ptype == PUBACK:
            if len(body) < 2:
                raise ProtocolError("truncated PUBACK", device="mqtt")
            (pid,) = struct.unpack_from("!H", body)
            seq = self.inflight.pop(pid, None)
            if seq is not None and self.outbox.pop(seq, None) is not None:
                self.sent_before.discard(seq)
                self.fleet.stats.events_acked += 1
                if not self.outbox:
                    self.acked.set()
                with contextlib.suppress(_Lost):
                    self._drain_outbox()
        elif ptype == PUBLISH:
            msg = decode_publish(flags, body, v5=self.cfg.v5)
            if msg.qos == 1:
                self._send(encode_puback(msg.packet_id))
            if msg.topic == self.topics.cmd:
                self._on_command(msg)
            for ext in self.fleet.extensions:
                ext.on_message(self, msg)
        elif ptype in (SUBACK, PINGRESP):
            pass
        elif ptype == DISCONNECT:
            raise _Lost("broker sent DISCONNECT")
        else:
            raise ProtocolError(f"unexpected packet type {ptype} from broker", device="mqtt")

    def _on_command(self, msg: Publish) -> None:
        """Answer like the daemon's dispatcher (docs/protocol.md, "Commands")."""
        self.fleet.stats.commands += 1
        cid: Any = None
        name: Any = None
        reply: CommandReply
        raw: bytes | None = msg.payload
        ids = self.cfg.identities
        refusal: tuple[str, str] | None = None
        if ids is not None and ids.verifies_commands:
            raw, refusal = ids.open_command(self.id, msg.payload)
        try:
            if refusal is not None or raw is None:
                raise _Refused
            req = json.loads(raw)
        except _Refused:
            code, reason = refusal or (ErrorCode.INVALID_REQUEST, "refused")
            reply = _error(None, None, code, reason)
        except (ValueError, UnicodeDecodeError):
            reply = _error(None, None, ErrorCode.INVALID_JSON, "payload is not valid JSON")
        else:
            if isinstance(req, dict):
                cid = req.get("id") if isinstance(req.get("id"), str) else None
                name = req.get("cmd") if isinstance(req.get("cmd"), str) else None
            if cid is None or name is None or not isinstance(req.get("args", {}), dict):
                reply = _error(
                    cid, name, ErrorCode.INVALID_REQUEST, "request does not match {id, cmd, args}"
                )
            elif name == "ping":
                result: dict[str, Any] = {"pong": True, "ts": time.time()}
                echo = req.get("args", {}).get("echo")
                if isinstance(echo, str):
                    result["echo"] = echo
                reply = CommandReply(id=cid, cmd=name, ok=True, result=result)
            elif name == "status":
                result = {
                    "online": True,
                    "device": self.id,
                    "outbox_depth": len(self.outbox),
                    "last_seq": self.seq,
                }
                reply = CommandReply(id=cid, cmd=name, ok=True, result=result)
            else:
                reply = _error(cid, name, ErrorCode.UNKNOWN_COMMAND, f"no command {name!r}")
        props: dict[int, Any] = {}
        topic = self.topics.reply
        rt = msg.props.get(0x08)
        if self.cfg.v5 and isinstance(rt, str) and rt and not any(c in rt for c in "+#\x00"):
            topic = rt
            if 0x09 in msg.props:
                props[0x09] = msg.props[0x09]
        payload = reply.to_json().encode()
        self._send(
            encode_publish(
                topic,
                payload,
                qos=1,
                packet_id=self._next_pid(),
                v5=self.cfg.v5,
                props=self._sig(payload, props),
            )
        )

    async def shutdown(self, grace_s: float = 2.0) -> None:
        """Clean stop: wait up to ``grace_s`` for the events in flight to be acknowledged, then
        the retained offline status and DISCONNECT (so no Will), like the daemon."""
        if not self.connected.is_set():
            self.closing = True
            return
        if self.outbox:
            self.acked.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.acked.wait(), grace_s)
        self.closing = True
        with contextlib.suppress(_Lost, OSError, TimeoutError):
            status = StatusMessage(online=False, device=self.id, reason="shutdown", ts=time.time())
            payload = _json(status)
            self._send(
                encode_publish(
                    self.topics.status,
                    payload,
                    qos=1,
                    retain=True,
                    packet_id=self._next_pid(),
                    v5=self.cfg.v5,
                    props=self._sig(payload),
                ),
                final=True,
            )
            self._send(DISCONNECT_BYTES, final=True)
            if self.writer is not None:
                await asyncio.wait_for(self.writer.drain(), grace_s)


def _error(cid: str | None, name: str | None, code: str, message: str) -> CommandReply:
    return CommandReply(id=cid, cmd=name, ok=False, error=ErrorBody(code=code, message=message))


def _json(message: BaseModel) -> bytes:
    """A protocol message as the kiosk sends it: compact JSON, absent fields left out."""
    return message.model_dump_json(exclude_none=True).encode()


# --- the fleet -----------------------------------------------------------------------------------


def _ssl_context(cfg: FleetConfig) -> ssl.SSLContext | None:
    """One client TLS context for the whole fleet (a handshake per kiosk, as in the field)."""
    if cfg.tls_ca is None:
        return None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.tls_ca)
        if cfg.tls_cert is not None and cfg.tls_key is not None:
            ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"fleet simulator TLS material unusable: {exc}", [("tls", str(exc))]
        ) from None
    return ctx


class FleetSim:
    """N virtual kiosks on one asyncio loop. ``run()`` in a loop, or ``start()`` in a thread."""

    def __init__(self, cfg: FleetConfig) -> None:
        self.cfg = cfg.validate()
        self.stats = FleetStats()
        self.kiosks = [VirtualKiosk(self, cfg.first_index + i) for i in range(cfg.devices)]
        self.stopping = False
        self.ssl_context = _ssl_context(cfg)
        # with identities: a context per kiosk (its own certificate), made before the run
        self._kiosk_ssl: dict[str, ssl.SSLContext] = (
            {k.id: cfg.identities.ssl_context(k.id) for k in self.kiosks}
            if cfg.identities is not None
            else {}
        )
        self._stop_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._done = threading.Event()
        self.error: BaseException | None = None
        #: Behaviours added to every kiosk (``subscriptions(kiosk)``, ``on_message(kiosk, msg)``,
        #: called in the event loop), e.g. fleet jobs (fleet/simjobs.py).
        self.extensions: list[Any] = []

    def ssl_for(self, device: str) -> ssl.SSLContext | None:
        """The TLS context ``device`` connects with (None: plain TCP)."""
        return self._kiosk_ssl.get(device, self.ssl_context)

    def request_stop(self) -> None:
        """Ask ``run()`` to finish (call from inside the loop, e.g. a signal handler)."""
        if self._stop_event is not None:
            self._stop_event.set()

    def is_stopping(self) -> bool:
        return self.stopping

    async def wait_stop(self, delay: float) -> None:
        assert self._stop_event is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), delay)

    async def run(self, duration: float | None = None) -> FleetStats:
        """Run until ``duration`` elapses or ``stop()``; then shut every kiosk down cleanly."""
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        ramp = 1.0 / self.cfg.connect_rate
        self._tasks = [
            asyncio.create_task(k.run(i * ramp), name=k.id) for i, k in enumerate(self.kiosks)
        ]
        try:
            if duration is None:
                await self._stop_event.wait()
            else:
                await self.wait_stop(duration)
        finally:
            self.stopping = True
            self._stop_event.set()
            await asyncio.gather(*(k.shutdown() for k in self.kiosks), return_exceptions=True)
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for k in self.kiosks:
                k._close()
            await asyncio.sleep(0)  # the transports' connection_lost callbacks close the sockets
            self.stats.events_pending = sum(len(k.outbox) for k in self.kiosks)
        return self.stats

    # -- thread mode (tests, benchmarks driving a broker from the outside) -------------------

    def start(self) -> FleetSim:
        """Run the fleet on its own event-loop thread (one thread for all kiosks)."""

        def main() -> None:
            try:
                asyncio.run(self.run())
            except BaseException as exc:  # reported by stop(); a thread must not die silently
                self.error = exc
                log.exception("fleet simulator failed")
            finally:
                self._done.set()

        self._thread = threading.Thread(target=main, name="fleet-sim", daemon=True)
        self._thread.start()
        return self

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``fn`` inside the fleet's event loop (thread mode) and return its result."""
        loop = self._loop
        if loop is None:
            raise DeviceDisconnected("fleet simulator not running", device="fleet-sim")

        async def wrapper() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), loop).result(timeout)

    def connected_count(self) -> int:
        return self.stats.connected

    def connected_to(self) -> dict[str, int]:
        """``{"host:port": kiosks connected there}`` (thread mode: read in the fleet's loop)."""

        def count() -> dict[str, int]:
            out: dict[str, int] = {}
            for k in self.kiosks:
                if k.connected.is_set():
                    name = f"{k.broker[0]}:{k.broker[1]}"
                    out[name] = out.get(name, 0) + 1
            return out

        return dict(self.call(count))

    def stop(self, timeout: float = 30.0) -> FleetStats:
        loop, ev = self._loop, self._stop_event
        if loop is not None and ev is not None and not self._done.is_set():
            loop.call_soon_threadsafe(ev.set)
        if self._thread is not None:
            self._done.wait(timeout)
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.stats
