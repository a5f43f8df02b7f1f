"""Controller-side ingest: what arrives from the fleet, how late, and what is missing or repeated.

One ``Ingest`` is one MQTT client (paho, MQTT 5, its own network thread). With ``share_group``
it subscribes through MQTT 5 shared subscriptions (``$share/{group}/{filter}``, MQTT 5.0
§4.8.2), so several ingest instances split the fleet's messages between them; their
``IngestStats`` merge into one (``IngestStats.merge``), which is where gaps must be judged: a
single instance of a shared group sees only a part of every kiosk's ``seq`` range.

Latency is ``arrival time - ts`` of the message, both wall clock (``time.time()``); it is only
meaningful when the kiosks and the ingest share a clock (one machine, or NTP-disciplined hosts:
then add the clocks' offset to the error bars).

Every message is parsed once with the wire contract's models (appliance/protocol/messages.py);
one that does not parse is counted in ``IngestStats.malformed`` and logged with the fields at
fault (``malformed_message``).

Per kiosk, durable events are checked as docs/protocol.md prescribes: an ``id`` seen before is a
duplicate (at-least-once re-send), a ``seq`` never seen between 1 and the highest seen is a gap.

With ``ack=True`` the ingest acknowledges every durable event it recorded (fleet/acker.py) to
kiosks running ``mqtt.delivery = "end_to_end"``, signed with ``ack_key`` (an ``ingest``
certificate) or unsigned for kiosks in development mode.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..errors import DeviceTimeout
from ..mqttclient import connect_properties, make_client
from ..protocol.codes import ErrorCode
from ..protocol.messages import (
    EventMessage,
    MessageInvalid,
    StatusMessage,
    TelemetryMessage,
    parse_message,
)
from ..protocol.topics import TopicKind, Topics, parse, shared, validate_segment
from ..trust.certs import OperatorKey
from .acker import OutboxAcker

log = logging.getLogger(__name__)


def _pct(samples: list[float], p: float) -> float | None:
    if not samples:
        return None
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def latency_summary(samples: list[float]) -> dict[str, Any]:
    """n, p50, p99 and max in milliseconds (None when there are no samples)."""

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 2)

    return {
        "n": len(samples),
        "p50_ms": ms(_pct(samples, 50)),
        "p99_ms": ms(_pct(samples, 99)),
        "max_ms": ms(max(samples) if samples else None),
    }


#: What the ingest records, by the kind of topic it subscribed to: (kind, the contract's model).
_KINDS: dict[TopicKind, tuple[str, type[TelemetryMessage | EventMessage | StatusMessage]]] = {
    TopicKind.TELEMETRY: ("telemetry", TelemetryMessage),
    TopicKind.EVENT: ("event", EventMessage),
    TopicKind.STATUS: ("status", StatusMessage),
}


@dataclass
class IngestStats:
    """Everything one ingest (or a merged group of them) observed."""

    telemetry_latency: list[float] = field(default_factory=list)
    event_latency: list[float] = field(default_factory=list)
    births: list[tuple[str, float]] = field(default_factory=list)  # (device, arrival time)
    deaths: list[tuple[str, str]] = field(default_factory=list)  # (device, reason)
    seqs: dict[str, set[int]] = field(default_factory=dict)  # device -> seqs seen
    ids: set[str] = field(default_factory=set)
    duplicates: int = 0
    # New events whose seq is below one already seen from the device: a gap filled later
    # (end-to-end delivery re-sending what a broker lost), or shared subscriptions interleaving.
    late: int = 0
    top_seq: dict[str, int] = field(default_factory=dict)
    malformed: int = 0
    messages: int = 0
    devices_seen: set[str] = field(default_factory=set)
    payloads: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> event (optional)

    def merge(self, other: IngestStats) -> IngestStats:
        """Combine two instances' observations (shared subscriptions split the stream)."""
        out = IngestStats(
            telemetry_latency=self.telemetry_latency + other.telemetry_latency,
            event_latency=self.event_latency + other.event_latency,
            births=self.births + other.births,
            deaths=self.deaths + other.deaths,
            duplicates=self.duplicates + other.duplicates + len(self.ids & other.ids),
            late=self.late + other.late,
            malformed=self.malformed + other.malformed,
            messages=self.messages + other.messages,
            devices_seen=self.devices_seen | other.devices_seen,
            ids=self.ids | other.ids,
            payloads={**self.payloads, **other.payloads},
        )
        for src in (self.seqs, other.seqs):
            for dev, seqs in src.items():
                out.seqs.setdefault(dev, set()).update(seqs)
        for tops in (self.top_seq, other.top_seq):
            for dev, top in tops.items():
                out.top_seq[dev] = max(top, out.top_seq.get(dev, 0))
        return out

    def gaps(self) -> dict[str, list[int]]:
        """Per device, the seqs missing between 1 and the highest seen."""
        out: dict[str, list[int]] = {}
        for dev, seqs in self.seqs.items():
            if seqs:
                missing = sorted(set(range(1, max(seqs) + 1)) - seqs)
                if missing:
                    out[dev] = missing
        return out

    def events(self) -> int:
        return sum(len(s) for s in self.seqs.values())

    def summary(self) -> dict[str, Any]:
        gaps = self.gaps()
        return {
            "messages": self.messages,
            "devices_seen": len(self.devices_seen),
            "telemetry_latency": latency_summary(self.telemetry_latency),
            "event_latency": latency_summary(self.event_latency),
            "events_unique": self.events(),
            "duplicates": self.duplicates,
            "arrived_after_a_higher_seq": self.late,
            "gaps": sum(len(v) for v in gaps.values()),
            "devices_with_gaps": len(gaps),
            "malformed": self.malformed,
            "births": len(self.births),
            "deaths": len(self.deaths),
        }


class Ingest:
    """Subscribe to the fleet's telemetry, events and status and keep ``IngestStats``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        prefix: str = "kiosk",
        share_group: str | None = None,
        client_id: str | None = None,
        protocol: str = "5",
        session_expiry_s: int = 3600,
        keep_payloads: bool = False,
        ack: bool = False,
        ack_key: OperatorKey | None = None,
    ) -> None:
        validate_segment(prefix, "topic prefix")
        if share_group is not None:
            validate_segment(share_group, "share group")
            if protocol != "5":
                raise ValueError("shared subscriptions need MQTT 5")
        self.host, self.port, self.prefix, self.share_group = host, port, prefix, share_group
        self.client_id = client_id or f"ingest-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.v5 = protocol == "5"
        self.stats = IngestStats()
        self.keep_payloads = keep_payloads
        self.subacks = 0  # one per (re)subscription: a test can wait for a resubscribe
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.client = make_client(self.client_id, protocol=protocol, persistent=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        # paho reconnects by itself (loop_start); keep the pauses short for a controller.
        self.client.reconnect_delay_set(1, 2)
        self.session_expiry_s = session_expiry_s
        self.acker = OutboxAcker(self._publish_ack, key=ack_key, prefix=prefix) if ack else None

    def _publish_ack(self, topic: str, payload: bytes) -> bool:
        info = self.client.publish(topic, payload, qos=1)
        return info.rc == paho.MQTT_ERR_SUCCESS

    def filters(self) -> list[str]:
        every = Topics.anyone(self.prefix)
        base = [every.telemetry, every.events, every.status]
        if self.share_group is None:
            return base
        return [shared(self.share_group, f) for f in base]

    def start(self, timeout: float = 10.0) -> Ingest:
        # A persistent session, so durable events published while the ingest is away (its
        # own reconnect after a broker restart) are queued by the broker, not lost to it.
        if self.v5:
            props = connect_properties(self.session_expiry_s)
            self.client.connect(self.host, self.port, 30, clean_start=False, properties=props)
        else:
            self.client.connect(self.host, self.port, 30)
        self.client.loop_start()
        if self.acker is not None:
            self.acker.start()
        if not self._subscribed.wait(timeout):
            self.client.loop_stop()
            raise DeviceTimeout(f"ingest: no SUBACK from {self.host}:{self.port}", device="ingest")
        return self

    def stop(self, *, end_session: bool = True) -> IngestStats:
        """Disconnect; by default also end the persistent session on the broker."""
        if self.acker is not None:
            self.acker.stop()
        if self.v5 and end_session:
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
            self.client.disconnect(properties=props)
        else:
            self.client.disconnect()
        self.client.loop_stop()
        return self.stats

    def snapshot(self) -> IngestStats:
        """A consistent copy of the statistics so far."""
        with self._lock:
            return IngestStats().merge(self.stats)

    def _on_subscribe(self, *_a: Any) -> None:
        self.subacks += 1
        self._subscribed.set()

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.error("ingest: broker refused the connection: %s", rc)
            return
        self._connected.set()
        opts = SubscribeOptions(qos=1) if self.v5 else None
        if opts is not None:
            client.subscribe([(f, opts) for f in self.filters()])
        else:
            client.subscribe([(f, 1) for f in self.filters()])

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        now = time.time()
        parsed = parse(self.prefix, msg.topic)
        if parsed is None or parsed.kind not in _KINDS:
            return
        kind, model = _KINDS[parsed.kind]
        try:
            message = parse_message(model, msg.payload, kind)
        except MessageInvalid as exc:
            with self._lock:
                self.stats.malformed += 1
            log.warning("%s: %s (%s)", msg.topic, exc, ErrorCode.MALFORMED_MESSAGE)
            return
        with self._lock:
            self._record(now, parsed.device, message, bool(msg.retain))

    def _record(
        self,
        now: float,
        device: str,
        message: TelemetryMessage | EventMessage | StatusMessage,
        retained: bool,
    ) -> None:
        st = self.stats
        st.messages += 1
        st.devices_seen.add(device)
        ts = message.ts
        late = None if ts is None else now - ts
        if isinstance(message, TelemetryMessage):
            if late is not None:
                st.telemetry_latency.append(late)
        elif isinstance(message, EventMessage):
            eid, seq = message.id, message.seq
            if seq is None:
                return  # progress events carry no seq: transient by design
            duplicate = eid in st.ids
            if duplicate:
                st.duplicates += 1
            else:
                st.ids.add(eid)
                st.seqs.setdefault(device, set()).add(seq)
                top = st.top_seq.get(device, 0)
                if seq < top:
                    st.late += 1
                else:
                    st.top_seq[device] = seq
                if self.keep_payloads:
                    st.payloads[eid] = message.model_dump(mode="json", exclude_unset=True)
                if late is not None:
                    st.event_latency.append(late)
            if self.acker is not None:  # recorded now or before: acknowledge it
                self.acker.stored(device, seq, eid)
        elif not retained:
            if message.online:
                st.births.append((device, now))
            else:
                st.deaths.append((device, str(message.reason)))
