"""Commands to one kiosk for the scripted enrollment and issuance: signed when the fleet
requires it (docs/trust.md envelope, an ``operator`` certificate), each reply's device
signature checked with the key approved for the kiosk, with the time each round trip took.
Replies are parsed once with the wire contract's ``ReplyMessage``; one that does not parse is
logged with its fields (``malformed_message``), counted in ``Commander.malformed`` and skipped."""

from __future__ import annotations

import json
import logging
import queue
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..errors import ApplianceError, CommandTimeout
from ..fleet.conn import FleetMqtt, Message
from ..fleet.tools import Verification, verify_from
from ..protocol.codes import ErrorCode
from ..protocol.messages import MessageInvalid, ReplyMessage, parse_message
from ..protocol.topics import Topics
from ..trust.certs import OperatorKey
from ..trust.envelope import EnvelopeBuilder

log = logging.getLogger(__name__)


@dataclass
class Reply:
    """A kiosk's reply: ``ok``, ``result`` or ``error``, the signature check, the time."""

    cmd: str
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] = field(default_factory=dict)
    verification: Verification | None = None
    seconds: float = 0.0

    @property
    def code(self) -> str:
        return str(self.error.get("code", ""))

    def raise_for_error(self) -> dict[str, Any]:
        if not self.ok:
            raise ApplianceError(
                f"{self.cmd} failed: {self.code}: {self.error.get('message')}",
                code=self.code or ErrorCode.COMMAND_FAILED,
                details=self.error.get("details") or {},
            )
        return self.result


class Commander:
    """Request/reply with one kiosk over a connected :class:`FleetMqtt`."""

    def __init__(
        self,
        mqtt: FleetMqtt,
        device: str,
        *,
        prefix: str = "kiosk",
        signer: OperatorKey | None = None,
        device_keys: dict[str, bytes] | None = None,
        lifetime_s: int = 120,
    ) -> None:
        self.mqtt = mqtt
        self.device = device
        self.prefix = prefix
        self.builder = None if signer is None else EnvelopeBuilder(signer, lifetime_s=lifetime_s)
        self.device_keys = device_keys or {}
        self.lifetime_s = lifetime_s
        self.topics = Topics(prefix, device)
        self.reply_topic = self.topics.reply
        self.malformed = 0  # replies that did not parse as the contract's ReplyMessage
        self._replies = mqtt.collector(self.reply_topic)
        mqtt.subscribe([self.reply_topic])

    def watch(self, topic: str) -> queue.Queue[Message]:
        """A queue of the kiosk's messages on ``topic`` (one of ``self.topics``) from now on."""
        q = self.mqtt.collector(topic)
        self.mqtt.subscribe([topic])
        return q

    def request(
        self, cmd: str, args: dict[str, Any] | None = None, *, timeout: float = 30.0
    ) -> Reply:
        cid = f"central-{uuid.uuid4().hex[:16]}"
        body = json.dumps({"id": cid, "cmd": cmd, "args": args or {}}).encode("utf-8")
        payload = body if self.builder is None else self.builder.build(cmd, body, self.device)
        corr = uuid.uuid4().bytes
        t0 = time.perf_counter()
        self.mqtt.publish(
            self.topics.cmd,
            payload,
            response_topic=self.reply_topic,
            correlation_data=corr,
            expiry_s=self.lifetime_s,
        )
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CommandTimeout(f"no reply to {cmd} from {self.device} within {timeout:g} s")
            try:
                msg = self._replies.get(timeout=left)
            except queue.Empty:
                continue
            try:
                reply = parse_message(ReplyMessage, msg.payload, "reply")
            except MessageInvalid as exc:  # not a reply (docs/protocol.md, "Commands")
                self.malformed += 1
                log.warning("%s: %s (%s)", msg.topic, exc, ErrorCode.MALFORMED_MESSAGE)
                continue
            if msg.correlation_data != corr and reply.id != cid:
                continue
            return Reply(
                cmd=cmd,
                ok=reply.ok,
                result=reply.result or {},
                error=reply.error.model_dump() if reply.error is not None else {},
                verification=verify_from(self.device_keys, self.device, msg),
                seconds=time.perf_counter() - t0,
            )
