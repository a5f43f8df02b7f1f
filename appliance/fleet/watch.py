"""Live event streams for ``appliance fleet watch`` and ``appliance fleet controller``.

:class:`EventStream` subscribes to the fleet's events (and optionally status and telemetry),
filters them by device and type (shell patterns), verifies each message's device signature
with the approved key, and hands :class:`Seen` records to a callback.

With ``share_group`` the subscriptions are MQTT 5 shared subscriptions
(``$share/{group}/{filter}``, MQTT 5.0 section 4.8.2): the broker delivers each message to
exactly one member of the group, so several controller instances split the load. A
controller keeps a persistent session (``clean_start=False``) so events published while it
restarts wait for it on the broker. mosquitto keeps handing that member its share while it is
away (measured: with one of two instances killed, half of the next events queued for it and
arrived when it came back): no loss, but a delay; ``session_expiry_s=0`` trades that for
immediate fail-over.

Every message is parsed once, with the wire contract's models (appliance/protocol/messages.py:
``StatusMessage``, ``EventMessage``, ``TelemetryMessage``); one that does not parse is logged
with the fields at fault (``malformed_message``), counted in ``EventStream.malformed`` and
not shown.
"""

from __future__ import annotations

import collections
import fnmatch
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..protocol.codes import ErrorCode
from ..protocol.messages import (
    EventMessage,
    MessageInvalid,
    StatusMessage,
    TelemetryMessage,
    parse_message,
)
from ..protocol.topics import TopicKind, Topics, parse, shared
from .conn import BrokerOptions, FleetMqtt, Message
from .tools import Verification, ago, verify_from

log = logging.getLogger(__name__)

DEDUP = 50_000

Parsed = StatusMessage | EventMessage | TelemetryMessage

#: The messages a stream shows, by topic kind: (kind, the contract's model).
MODELS: dict[TopicKind, tuple[str, type[Parsed]]] = {
    TopicKind.EVENT: ("event", EventMessage),
    TopicKind.STATUS: ("status", StatusMessage),
    TopicKind.TELEMETRY: ("telemetry", TelemetryMessage),
}


def as_body(message: Parsed) -> dict[str, Any]:
    """A parsed message as the JSON object it came as (the fields it carried)."""
    return message.model_dump(mode="json", exclude_unset=True)


@dataclass(frozen=True)
class Seen:
    """One message as the tools show it: ``message`` is the parsed model, ``body`` the same
    message as a JSON object (what ``--json`` prints)."""

    kind: str  # event / status / telemetry
    device: str
    type: str  # event type, or "status" / "telemetry"
    topic: str
    body: dict[str, Any]
    verified: Verification
    received_at: float = field(default_factory=time.time)
    # status only: the kiosk's last contact known to this watcher (the status's own times,
    # or a later heartbeat/event received from it)
    last_seen: float | None = None
    message: Parsed | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "device": self.device,
            "type": self.type,
            "id": self.body.get("id"),
            "seq": self.body.get("seq"),
            "ts": self.body.get("ts"),
            "data": self.body.get("data") if self.kind == "event" else self.body,
            "verified": self.verified.status,
            "received_at": self.received_at,
            **(
                {"state": status_state(self.message or self.body), "last_seen": self.last_seen}
                if self.kind == "status"
                else {}
            ),
        }

    def line(self) -> str:
        ts = self.body.get("ts")
        if not isinstance(ts, int | float):
            ts = self.received_at  # the Last Will has no time of its own
        when = time.strftime("%H:%M:%S", time.localtime(ts))
        mark = {"ok": "", "bad": " [SIGNATURE INVALID]", "unknown": " [unverified]"}[
            self.verified.status
        ]
        if self.kind == "event":
            data = json.dumps(self.body.get("data"), ensure_ascii=False, separators=(",", ":"))
            return f"{when} {self.device} {self.type} #{self.body.get('seq')} {data}{mark}"
        if self.kind == "status":
            state = status_state(self.message or self.body)
            if state != "online":
                seen = self.last_seen
                if isinstance(seen, int | float):
                    clock = time.strftime("%H:%M:%S", time.localtime(seen))
                    state += f", last seen {clock} ({ago(seen, self.received_at)})"
                else:
                    state += ", last seen unknown"
            return f"{when} {self.device} status {state} {json.dumps(self.body)}{mark}"
        return f"{when} {self.device} {self.type} {json.dumps(self.body)}{mark}"


def status_state(body: StatusMessage | Parsed | dict[str, Any]) -> str:
    """``online``, ``lost`` (the broker sent the Last Will) or ``offline`` (a clean stop)."""
    if isinstance(body, StatusMessage):
        return body.state
    if not isinstance(body, dict):
        return "online"  # a heartbeat or an event: the kiosk is there
    if body.get("online") is True:
        return "online"
    return "lost" if body.get("reason") == "lost" else "offline"


def status_last_seen(body: StatusMessage | dict[str, Any]) -> float | None:
    """The last contact a status message states: its ``last_seen`` (offline), else its
    ``ts`` (the birth's time); None when it states neither (a will of an older version)."""
    if isinstance(body, StatusMessage):
        return body.last_contact
    for key in ("last_seen", "ts"):
        v = body.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
    return None


class EventStream:
    def __init__(
        self,
        opts: BrokerOptions,
        keys: dict[str, bytes],
        on_seen: Callable[[Seen], None],
        *,
        devices: list[str] | None = None,
        types: list[str] | None = None,
        status: bool = False,
        telemetry: bool = False,
        share_group: str | None = None,
        client_id: str | None = None,
        session_expiry_s: int = 3600,
        on_duplicate: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.opts = opts
        self.on_duplicate = on_duplicate  # (device, event body) of a re-sent event dropped
        self.keys = keys
        self.on_seen = on_seen
        self.devices = devices or []
        self.types = types or []
        self.status = status
        self.telemetry = telemetry
        self.share_group = share_group
        persistent = share_group is not None and client_id is not None and session_expiry_s > 0
        self.mqtt = FleetMqtt(
            opts,
            client_id=client_id,
            clean_start=not persistent,
            session_expiry_s=session_expiry_s if persistent else 0,
        )
        self.mqtt.on_message = self._on_message
        self._ids: collections.OrderedDict[str, None] = collections.OrderedDict()
        # device -> last contact seen by this stream (a message whose signature did not fail)
        self.last_seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self.count = 0
        self.duplicates = 0
        self.malformed = 0  # messages that did not parse as the contract's model

    def filters(self) -> list[str]:
        p = self.opts.prefix
        exact = [d for d in self.devices if not any(c in d for c in "*?[")]
        heads: list[str | None] = [*exact] if exact and len(exact) == len(self.devices) else [None]
        each = [Topics.filter_for(p, h) for h in heads]
        out = [t.events for t in each]
        if self.status:
            out += [t.status for t in each]
        if self.telemetry:
            out += [t.telemetry for t in each]
        if self.share_group:
            out = [shared(self.share_group, f) for f in out]
        return out

    def start(self, timeout: float = 10.0) -> EventStream:
        self.mqtt.connect(timeout)
        self.mqtt.subscribe(self.filters(), timeout=timeout)
        return self

    def stop(self) -> None:
        self.mqtt.close()

    def _wanted(self, device: str, type_: str) -> bool:
        if self.devices and not any(fnmatch.fnmatchcase(device, d) for d in self.devices):
            return False
        return not self.types or any(fnmatch.fnmatchcase(type_, t) for t in self.types)

    def _on_message(self, msg: Message) -> None:
        parsed = parse(self.opts.prefix, msg.topic)
        if parsed is None or not msg.payload or parsed.kind not in MODELS:
            return
        device = parsed.device
        kind, model = MODELS[parsed.kind]
        type_ = parsed.arg if parsed.kind is TopicKind.EVENT else kind
        if type_ is None or not self._wanted(device, type_):
            return
        try:
            message = parse_message(model, msg.payload, kind)
        except MessageInvalid as exc:
            with self._lock:
                self.malformed += 1
            log.warning("%s: %s (%s; not shown)", msg.topic, exc, ErrorCode.MALFORMED_MESSAGE)
            return
        if not self._first_time(device, message):
            return
        verified = verify_from(self.keys, device, msg)
        now = time.time()
        seen_at: float | None = None
        if verified.status != "bad":  # a forged message is no contact with the kiosk
            with self._lock:
                # A status states its own time (a will arrives long after it was written, a
                # retained one may be days old); a heartbeat or an event is contact now.
                seen_at = message.last_contact if isinstance(message, StatusMessage) else now
                if seen_at is not None:
                    seen_at = max(seen_at, self.last_seen.get(device, 0.0))
                    self.last_seen[device] = seen_at
        elif kind == "status":
            seen_at = self.last_seen.get(device)
        self.on_seen(
            Seen(
                kind,
                device,
                type_,
                msg.topic,
                as_body(message),
                verified,
                received_at=now,
                last_seen=seen_at if kind == "status" else None,
                message=message,
            )
        )

    def _first_time(self, device: str, message: Parsed) -> bool:
        """False for a re-sent event (at-least-once delivery, docs/protocol.md: it keeps its
        id), handed to ``on_duplicate``; True for everything else, counted."""
        eid = message.id if isinstance(message, EventMessage) else None
        with self._lock:
            duplicate = eid is not None and eid in self._ids
            if duplicate:
                self.duplicates += 1
            else:
                if eid is not None:
                    self._ids[eid] = None
                    if len(self._ids) > DEDUP:
                        self._ids.popitem(last=False)
                self.count += 1
        if duplicate and self.on_duplicate is not None:
            self.on_duplicate(device, as_body(message))
        return not duplicate
