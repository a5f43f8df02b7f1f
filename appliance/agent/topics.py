"""The topic tree, as pure functions (documented in docs/protocol.md).

{prefix}/{device}/status            retained, QoS 1: birth (online) and Last Will (offline)
{prefix}/{device}/telemetry         QoS 0: heartbeat
{prefix}/{device}/events/{type}     QoS 1: outbox events (store-and-forward)
{prefix}/{device}/cmd               QoS 1: commands to this device
{prefix}/group/{group}/cmd          QoS 1: commands to a group
{prefix}/{device}/reply             QoS 1: replies when the request had no response topic
{prefix}/{device}/config/desired    retained: the fleet's signed desired configuration
{prefix}/{device}/config/reported   retained: what the device applied, rejected, rolled back
{prefix}/{device}/outbox/ack        QoS 1: the ingest's delivery acknowledgement (end_to_end)
{prefix}/{device}/lookup/request    QoS 1: citizen lookup, to the central directory
{prefix}/{device}/lookup/response   QoS 1: the directory's signed answer
"""

from __future__ import annotations

from dataclasses import dataclass

_FORBIDDEN = set("/+#\x00")


def validate_segment(segment: str, what: str = "topic segment") -> str:
    """A single topic level: non-empty, no wildcard, no separator, no NUL (MQTT 5 §4.7)."""
    if not segment or any(c in _FORBIDDEN for c in segment):
        raise ValueError(f"invalid {what} {segment!r}: must be non-empty without / + # or NUL")
    if len(segment.encode()) > 256:
        raise ValueError(f"{what} {segment!r} longer than 256 bytes")
    return segment


@dataclass(frozen=True)
class Topics:
    prefix: str
    device: str

    def __post_init__(self) -> None:
        validate_segment(self.prefix, "topic prefix")
        validate_segment(self.device, "device id")

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
        return f"{self.base}/upload/{validate_segment(package_id, 'package id')}"

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

    def all_status(self) -> str:
        return f"{self.prefix}/+/status"
