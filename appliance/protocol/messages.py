"""Message models of the MQTT protocol (docs/protocol.md), for building and parsing on both ends.
JSON Schemas in docs/schemas/ are generated from these, from the command request and reply
models (``dispatch.py``) and from every command's argument model (``appliance schemas``).

The fleet tools (``fleet watch``, ``fleet devices``, ``fleet send``, the controller and the
ingest) and the centre's commander parse every status, event, telemetry message and reply with
these models, once per message (:func:`parse_message`: pydantic's JSON parser, no
``json.loads`` first); a message that does not parse is :class:`MessageInvalid`, naming the
fields (``field: reason``)."""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .package import ChunkHeader, Manifest

HealthName = Literal["ok", "starting", "disconnected", "error", "disabled"]
#: Why a kiosk is offline: the Last Will (``lost``), a clean stop or a restart.
OfflineReason = Literal["lost", "shutdown", "restart"]


class StatusMessage(BaseModel):
    """``{prefix}/{device}/status``, retained: the birth message on connect, or the offline
    status (the Last Will with reason ``lost``, or reason ``shutdown`` on a clean stop)."""

    model_config = ConfigDict(extra="allow")

    online: bool
    device: str
    ts: float | None = Field(None, description="Unix time; absent in the Last Will")
    reason: OfflineReason | None = Field(
        None, description="Why offline: the Last Will (lost), a clean stop or a restart"
    )
    connected_at: float | None = Field(
        None, description="Unix time of the CONNECT this status belongs to"
    )
    last_seen: float | None = Field(
        None,
        description="Offline only: the kiosk's last contact it knew of (the connect time in "
        "the Last Will, which is signed at connect; the stop time on a clean stop)",
    )
    broker: str | None = Field(
        None,
        description="Online only: the broker (host:port) of this connection, one of the "
        "kiosk's mqtt.brokers",
    )
    version: str | None = Field(None, description="Software version (online only)")
    profile: str | None = Field(None, description="Hardware kit profile (online only)")
    site: str | None = None
    groups: list[str] | None = None
    devices: dict[str, HealthName] | None = Field(None, description="Health per capability")
    outbox_depth: int | None = Field(
        None,
        description="Events not yet acknowledged: by the broker, or with mqtt.delivery = "
        "end_to_end by the fleet's ingest",
    )

    def to_json(self) -> bytes:
        """The document as the kiosk publishes it: only the fields it set (the Last Will has
        no ``ts``), a field set to None written as null; ``json.dumps``'s spacing, the bytes
        the kiosk has always sent (tools match ``"online": true`` in them)."""
        return json.dumps(self.model_dump(mode="json", exclude_unset=True)).encode("utf-8")

    @property
    def state(self) -> Literal["online", "lost", "offline"]:
        """``online``, ``lost`` (the broker sent the Last Will) or ``offline`` (a clean stop)."""
        if self.online:
            return "online"
        return "lost" if self.reason == "lost" else "offline"

    @property
    def last_contact(self) -> float | None:
        """The last contact the status states: ``last_seen`` (offline), else ``ts`` (the
        birth's time); None when it states neither (a will of an older version)."""
        return self.last_seen if self.last_seen is not None else self.ts


class EventMessage(BaseModel):
    """``{prefix}/{device}/events/{type}``. Durable events (QoS 1) carry ``seq``: per-device,
    strictly increasing, never reused, so a gap means loss; ``id`` is unique, so a repeat is a
    duplicate to drop. Transient progress events (QoS 0) have no ``seq``."""

    id: str = Field(description="Unique event id (hex)")
    seq: int | None = Field(None, description="Per-device sequence number (durable events)")
    device: str
    type: str
    ts: float
    data: dict[str, Any]

    def to_json(self) -> bytes:
        """The document as the kiosk publishes it: only the fields it set (no ``seq`` on a
        transient event). Durable events are rendered by ``store.render_event`` in the
        outbox's hot path (the same fields, the stored data spliced in, not re-encoded)."""
        return json.dumps(self.model_dump(mode="json", exclude_unset=True)).encode("utf-8")


class TelemetryMessage(BaseModel):
    """``{prefix}/{device}/telemetry``, QoS 0, every ``telemetry.heartbeat_s`` seconds."""

    model_config = ConfigDict(extra="allow")

    device: str
    ts: float
    uptime_s: float
    load: list[float]
    mem_total: int | None
    mem_available: int | None
    rss: int | None
    disk_free: int | None
    soc_temp_c: float | None = Field(description="From /sys/class/thermal when present")
    outbox_depth: int
    devices: dict[str, HealthName]


class OutboxAckMessage(BaseModel):
    """``{prefix}/{device}/outbox/ack``, QoS 1, from the fleet's ingest (``mqtt.delivery =
    "end_to_end"``): the events it stored. A signed document (trust/signeddoc.py); ``body`` is
    the base64 of an ``outbox-ack-body`` JSON object."""

    typ: Literal["appliance.outbox-ack.v1"]
    cert: str | None = Field(None, description="Operator certificate token (role ingest)")
    body: str = Field(description="base64 of the body bytes (outbox-ack-body)")
    sig: str | None = Field(
        None,
        description="base64 Ed25519 signature of the body bytes, context "
        "appliance/outbox-ack/v1; absent only for kiosks in development mode",
    )


class OutboxAckBody(BaseModel):
    """The signed content of an outbox acknowledgement. The kiosk deletes ``first..last`` of a
    range only if its row ``last`` carries the named event id."""

    device: str
    issued_at: int
    issuer: str = Field(description="Key id of the signing certificate, or 'unsigned'")
    ranges: list[tuple[int, int, str]] = Field(
        min_length=1,
        max_length=1000,
        description="[first_seq, last_seq, event id of last_seq]: events stored by the ingest",
    )


class UploadAck(BaseModel):
    """``{prefix}/{device}/upload/ack``, QoS 1, from the centre's receiver: the chunks it
    stored (``received``), or its verdict on the whole package (``status``)."""

    model_config = ConfigDict(extra="allow")

    package_id: str
    received: list[int] | None = Field(None, description="Indexes of the chunks stored")
    status: Literal["complete", "rejected", "held"] | None = Field(
        None,
        description="complete: verified and stored (a signed receipt follows on upload/receipt); "
        "rejected: refused for good, with code and reason; held: from a device the centre has "
        "no approved key for yet (informational: the kiosk keeps waiting)",
    )
    code: str | None = Field(None, description="An ErrorCode, with rejected and held")
    reason: str | None = None

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode("utf-8")


class ErrorBody(BaseModel):
    """``error`` of a failed reply."""

    model_config = ConfigDict(extra="allow")

    code: str = Field(
        description="Stable error code (docs/protocol.md, error codes). A refused message is "
        "checked in this order: payload_too_large; under signing the trust layer's codes "
        "(malformed_envelope for bytes that are not a JSON object or an ill-formed envelope, "
        "unsigned for a plain request, untrusted_issuer, cert_revoked, cert_expired, "
        "not_yet_valid, bad_signature, expired, wrong_target, then unknown_command and "
        "forbidden_role for an authenticated envelope, replayed for a re-sent envelope whose "
        "id never ran; docs/trust.md); invalid_json; invalid_request (also an id already used "
        "for another command); unknown_command; forbidden_role; invalid_args; busy. A repeat of "
        "an id that ran gets its stored first reply, or in_progress / interrupted."
    )
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


#: The name the fleet tools knew it by.
ReplyError = ErrorBody


class ReplyMessage(BaseModel):
    """``{prefix}/{device}/reply`` (or the request's MQTT 5 response topic), QoS 1: the one
    final answer to a command, ``{id, cmd, ok, result}`` on success or ``{id, cmd, ok: false,
    error}`` on failure (docs/protocol.md, "Commands"). One model for both ends: the kiosk's
    dispatcher renders it (``dispatch.CommandReply`` is this class), the fleet tools and the
    centre parse it."""

    model_config = ConfigDict(extra="allow", title="CommandReply")

    id: str | None = Field(
        description="The request's id. Every refusal names it whenever it can be read, under "
        "signing from the envelope's inner request; null only when no id can be read."
    )
    cmd: str | None = None
    ok: bool
    result: dict[str, Any] | None = None
    error: ErrorBody | None = None

    @model_validator(mode="after")
    def _failure_names_its_error(self) -> ReplyMessage:
        if not self.ok and self.error is None:
            raise ValueError("error: required when ok is false")
        return self

    def to_json(self) -> str:
        """JSON with ``id`` always present (null when the request had none) and only one of
        ``result``/``error``; ``cmd`` only when known."""
        skip = {"result"} if self.result is None else set()
        if self.error is None:
            skip.add("error")
        if self.cmd is None:
            skip.add("cmd")
        return self.model_dump_json(exclude=skip)


M = TypeVar("M", bound=BaseModel)


class MessageInvalid(ValueError):
    """A message that does not parse as its model: ``kind`` names the message (``status``,
    ``event``, ...), ``problems`` the fields, ``field: reason`` each (``(root)`` for bytes
    that are not a JSON object)."""

    def __init__(self, kind: str, problems: list[str]) -> None:
        super().__init__(f"malformed {kind}: {'; '.join(problems)}")
        self.kind = kind
        self.problems = problems


def field_problems(exc: ValidationError) -> list[str]:
    """pydantic's errors as ``field: reason`` lines (an unknown field said so)."""
    out = []
    for e in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in e["loc"])
        if not loc and e["type"] == "value_error":  # a model check, its message names fields
            out.append(str(e.get("ctx", {}).get("error", e["msg"])))
            continue
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        out.append(f"{loc or '(root)'}: {msg}")
    return out


def parse_message(model: type[M], payload: bytes | bytearray | str, kind: str | None = None) -> M:
    """``payload`` parsed and validated as ``model`` in one pass (pydantic's JSON parser);
    :class:`MessageInvalid` naming the fields when it does not parse."""
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        raise MessageInvalid(kind or model.__name__, field_problems(exc)) from None


MESSAGES: dict[str, type[BaseModel]] = {
    "status": StatusMessage,
    "event": EventMessage,
    "telemetry": TelemetryMessage,
    "outbox-ack": OutboxAckMessage,
    "outbox-ack-body": OutboxAckBody,
    "upload-ack": UploadAck,
    "package-manifest": Manifest,
    "upload-chunk-header": ChunkHeader,
}
