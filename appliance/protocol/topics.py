"""The topic tree, as pure functions (documented in docs/protocol.md, "Topics").

{prefix}/{device}/status              retained, QoS 1: birth (online) and Last Will (offline)
{prefix}/{device}/telemetry           QoS 0: heartbeat
{prefix}/{device}/events/{type}       QoS 1: outbox events (store-and-forward)
{prefix}/{device}/cmd                 QoS 1: commands to this device
{prefix}/group/{group}/cmd            QoS 1: commands to a group
{prefix}/{device}/reply               QoS 1: replies when the request had no response topic
{prefix}/{device}/config/desired      retained: the fleet's signed desired configuration
{prefix}/{device}/config/reported     retained: what the device applied, rejected, rolled back
{prefix}/{device}/upload/{package}    QoS 1: enrollment package chunks, kiosk -> centre
{prefix}/{device}/upload/ack          QoS 1: the centre's chunk acknowledgements
{prefix}/{device}/upload/receipt      QoS 1: the centre's signed receipt of a package
{prefix}/{device}/outbox/ack          QoS 1: the ingest's delivery acknowledgement (end_to_end)
{prefix}/{device}/lookup/request      QoS 1: citizen lookup, to the central directory
{prefix}/{device}/lookup/response     QoS 1: the directory's signed answer
{prefix}/{device}/card/request        QoS 1: the station asks the centre for an issuance package
{prefix}/{device}/card/issuance       QoS 1: the centre's signed answer (the package, or why not)
{prefix}/{device}/jobs/desired        retained: the fleet's signed job document (docs/updates.md)
{prefix}/{device}/jobs/reported       retained: the kiosk's state of that job
{prefix}/{device}/update/get          QoS 1: a chunk request of a release bundle
{prefix}/{device}/update/data         QoS 1: the chunk
{prefix}/claims/{device}/request      retained: the kiosk's claim request (provisioning)
{prefix}/claims/{device}/response     retained: the fleet's approval (provisioning)
{prefix}/_ctl/{client}/reply          QoS 1: replies to the dev controller

A :class:`Topics` for one device gives its topics; :meth:`Topics.anyone` gives the same names
with the device level a ``+`` wildcard, which are the fleet's subscription filters (MQTT 5.0
section 4.7.1). :func:`shared` wraps a filter in a shared subscription (section 4.8.2) and
:func:`parse` turns a received topic back into its kind and device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

_FORBIDDEN = set("/+#\x00")

#: The single-level wildcard, in the device level of a filter (MQTT 5.0 section 4.7.1.3).
ANY = "+"


def validate_segment(segment: str, what: str = "topic segment") -> str:
    """A single topic level: non-empty, no wildcard, no separator, no NUL (MQTT 5 §4.7)."""
    if not segment or any(c in _FORBIDDEN for c in segment):
        raise ValueError(f"invalid {what} {segment!r}: must be non-empty without / + # or NUL")
    if len(segment.encode()) > 256:
        raise ValueError(f"{what} {segment!r} longer than 256 bytes")
    return segment


def shared(group: str, topic_filter: str) -> str:
    """``topic_filter`` as a shared subscription of ``group`` (MQTT 5.0 section 4.8.2)."""
    return f"$share/{validate_segment(group, 'share group')}/{topic_filter}"


@dataclass(frozen=True)
class Topics:
    """The topics of one device, or with ``device == ANY`` (:meth:`anyone`) the filters that
    match them on every device."""

    prefix: str
    device: str
    #: Set by :meth:`anyone` only: the device level is the ``+`` wildcard.
    wildcard: bool = field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        validate_segment(self.prefix, "topic prefix")
        if not (self.wildcard and self.device == ANY):
            validate_segment(self.device, "device id")

    @classmethod
    def anyone(cls, prefix: str) -> Topics:
        """Filters over every device: ``{prefix}/+/...``."""
        return cls(prefix, ANY, wildcard=True)

    @classmethod
    def filter_for(cls, prefix: str, device: str | None) -> Topics:
        """One device's topics, or every device's filters when ``device`` is None."""
        return cls.anyone(prefix) if device is None else cls(prefix, device)

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def telemetry(self) -> str:
        return f"{self.base}/telemetry"

    def event(self, type_: str) -> str:
        return f"{self.base}/events/{validate_segment(type_, 'event type')}"

    @property
    def events(self) -> str:
        """Every event of this device (a filter)."""
        return f"{self.base}/events/#"

    @property
    def cmd(self) -> str:
        return f"{self.base}/cmd"

    def group_cmd(self, group: str) -> str:
        return f"{self.prefix}/group/{validate_segment(group, 'group')}/cmd"

    @property
    def reply(self) -> str:
        return f"{self.base}/reply"

    @property
    def config_desired(self) -> str:
        return f"{self.base}/config/desired"

    @property
    def config_reported(self) -> str:
        return f"{self.base}/config/reported"

    def upload(self, package_id: str) -> str:
        if package_id == ANY:
            return f"{self.base}/upload/{ANY}"
        return f"{self.base}/upload/{validate_segment(package_id, 'package id')}"

    @property
    def uploads(self) -> str:
        """Every upload topic of this device, chunks, acks and receipts (a filter)."""
        return self.upload(ANY)

    @property
    def upload_ack(self) -> str:
        return f"{self.base}/upload/ack"

    @property
    def upload_receipt(self) -> str:
        return f"{self.base}/upload/receipt"

    @property
    def outbox_ack(self) -> str:
        return f"{self.base}/outbox/ack"

    @property
    def lookup_request(self) -> str:
        return f"{self.base}/lookup/request"

    @property
    def lookup_response(self) -> str:
        return f"{self.base}/lookup/response"

    @property
    def card_request(self) -> str:
        return f"{self.base}/card/request"

    @property
    def card_issuance(self) -> str:
        return f"{self.base}/card/issuance"

    @property
    def jobs_desired(self) -> str:
        return f"{self.base}/jobs/desired"

    @property
    def jobs_reported(self) -> str:
        return f"{self.base}/jobs/reported"

    @property
    def update_get(self) -> str:
        return f"{self.base}/update/get"

    @property
    def update_data(self) -> str:
        return f"{self.base}/update/data"

    @property
    def claim_request(self) -> str:
        return f"{self.prefix}/claims/{self.device}/request"

    @property
    def claim_response(self) -> str:
        return f"{self.prefix}/claims/{self.device}/response"

    def controller_reply(self, client_id: str) -> str:
        """The dev controller's own reply topic (not a device topic)."""
        return f"{self.prefix}/_ctl/{validate_segment(client_id, 'client id')}/reply"

    def all_status(self) -> str:
        return f"{self.prefix}/{ANY}/status"


class TopicKind(StrEnum):
    """What a topic of the tree carries."""

    STATUS = "status"
    TELEMETRY = "telemetry"
    EVENT = "event"
    CMD = "cmd"
    GROUP_CMD = "group_cmd"
    REPLY = "reply"
    CONFIG_DESIRED = "config_desired"
    CONFIG_REPORTED = "config_reported"
    UPLOAD = "upload"
    UPLOAD_ACK = "upload_ack"
    UPLOAD_RECEIPT = "upload_receipt"
    OUTBOX_ACK = "outbox_ack"
    LOOKUP_REQUEST = "lookup_request"
    LOOKUP_RESPONSE = "lookup_response"
    CARD_REQUEST = "card_request"
    CARD_ISSUANCE = "card_issuance"
    JOBS_DESIRED = "jobs_desired"
    JOBS_REPORTED = "jobs_reported"
    UPDATE_GET = "update_get"
    UPDATE_DATA = "update_data"
    CLAIM_REQUEST = "claim_request"
    CLAIM_RESPONSE = "claim_response"
    CONTROLLER_REPLY = "controller_reply"


@dataclass(frozen=True)
class ParsedTopic:
    """A received topic: its kind, the device (group, client) level, and the last level's
    argument where it has one (the event type, the upload's package id)."""

    kind: TopicKind
    device: str
    arg: str | None = None


_LEAVES = {
    ("status",): TopicKind.STATUS,
    ("telemetry",): TopicKind.TELEMETRY,
    ("cmd",): TopicKind.CMD,
    ("reply",): TopicKind.REPLY,
    ("config", "desired"): TopicKind.CONFIG_DESIRED,
    ("config", "reported"): TopicKind.CONFIG_REPORTED,
    ("upload", "ack"): TopicKind.UPLOAD_ACK,
    ("upload", "receipt"): TopicKind.UPLOAD_RECEIPT,
    ("outbox", "ack"): TopicKind.OUTBOX_ACK,
    ("lookup", "request"): TopicKind.LOOKUP_REQUEST,
    ("lookup", "response"): TopicKind.LOOKUP_RESPONSE,
    ("card", "request"): TopicKind.CARD_REQUEST,
    ("card", "issuance"): TopicKind.CARD_ISSUANCE,
    ("jobs", "desired"): TopicKind.JOBS_DESIRED,
    ("jobs", "reported"): TopicKind.JOBS_REPORTED,
    ("update", "get"): TopicKind.UPDATE_GET,
    ("update", "data"): TopicKind.UPDATE_DATA,
}


def parse(prefix: str, topic: str) -> ParsedTopic | None:
    """The kind and device of ``topic`` under ``prefix``, or None for a topic outside the
    tree (another prefix, an unknown leaf, an empty level)."""
    levels = topic.split("/")
    if len(levels) < 3 or levels[0] != prefix or any(not lv for lv in levels):
        return None
    head, rest = levels[1], tuple(levels[2:])
    if head == "group" and rest[1:] == ("cmd",):
        return ParsedTopic(TopicKind.GROUP_CMD, rest[0])
    if head == "claims" and len(rest) == 2 and rest[1] in ("request", "response"):
        kind = TopicKind.CLAIM_REQUEST if rest[1] == "request" else TopicKind.CLAIM_RESPONSE
        return ParsedTopic(kind, rest[0])
    if head == "_ctl" and rest[1:] == ("reply",):
        return ParsedTopic(TopicKind.CONTROLLER_REPLY, rest[0])
    if rest in _LEAVES:
        return ParsedTopic(_LEAVES[rest], head)
    if len(rest) >= 2 and rest[0] == "events":
        # RabbitMQ's MQTT plugin delivers a "." inside a level as "/" (it maps MQTT levels to
        # AMQP words): "events/ui.tap" may arrive as "events/ui/tap".
        return ParsedTopic(TopicKind.EVENT, head, "/".join(rest[1:]))
    if len(rest) == 2 and rest[0] == "upload":
        return ParsedTopic(TopicKind.UPLOAD, head, rest[1])
    return None
