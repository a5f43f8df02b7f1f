"""What a command message is on its way in, shared by the three layers it crosses.

The MQTT agent hands every message for the device to the daemon as an :class:`Incoming`
(decoupled from paho's types); the trust layer's verifier turns one into a :class:`Verified`
(the exact signed payload and who sent it, or the refusal); the dispatcher takes both. They
live here, below the agent, the trust layer and dispatch, so none of those imports another for
its types (docs/architecture.md, "Borders").

A command's request is parsed ONCE on its way in (:func:`parse_request`: JSON, then the
``{id, cmd, args}`` model): the trust layer parses the payload it authenticated and hands the
:class:`ParsedRequest` on in :attr:`Verified.request`, and the dispatcher uses it as it is
(docs/performance.md, "Hot paths").
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ApplianceError, CommandError
from .protocol.codes import ErrorCode

#: A command request id (and the ``id`` field of the request model, docs/protocol.md).
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"

_ID_RE = re.compile(ID_PATTERN)
_NAME_MAX = 64

#: A payload that is not JSON (``ParsedRequest.obj``).
UNREADABLE: Any = object()


class CommandRequest(BaseModel):
    """The request object on a command topic (inside the signed envelope when signed)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN, description="Unique command id, chosen by the sender")
    cmd: str = Field(min_length=1, max_length=64, description="Command name, e.g. ping")
    args: dict[str, Any] = Field(default_factory=dict, description="Command arguments")


def problems(exc: ValidationError) -> list[str]:
    """pydantic's errors as ``field: message`` lines (an unknown field said so)."""
    out = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        out.append(f"{loc}: {msg}")
    return out


@dataclass(frozen=True)
class ParsedRequest:
    """One payload parsed as a ``{id, cmd, args}`` request, once.

    ``obj``: the decoded JSON (:data:`UNREADABLE` if it is not JSON); ``request``: the
    validated model, or ``problem``: the refusal (``invalid_json`` / ``invalid_request``) the
    dispatcher sends; ``id`` / ``cmd``: what could be read of them (each None if absent or
    ill-formed), so a refusal names the id."""

    obj: Any
    request: CommandRequest | None
    problem: CommandError | None
    id: str | None
    cmd: str | None

    @property
    def command(self) -> str | None:
        """The ``cmd`` the payload names (any string), None if it names none: the trust
        layer's check that a signed envelope and its payload name the same command."""
        cmd = self.obj.get("cmd") if isinstance(self.obj, dict) else None
        return cmd if isinstance(cmd, str) else None


def parse_request(payload: bytes, obj: Any = UNREADABLE) -> ParsedRequest:
    """Parse ``payload`` (or its already decoded JSON ``obj``) into a :class:`ParsedRequest`.
    Never raises on bad input."""
    if obj is UNREADABLE:
        try:
            obj = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            err = CommandError(f"payload is not valid JSON: {exc}", code=ErrorCode.INVALID_JSON)
            return ParsedRequest(UNREADABLE, None, err, None, None)
        except RecursionError:
            # json.loads recurses per nesting level: "[[[[..." is hostile, not a command.
            err = CommandError("payload is nested too deeply", code=ErrorCode.INVALID_JSON)
            return ParsedRequest(UNREADABLE, None, err, None, None)
    if not isinstance(obj, dict):
        err = CommandError("payload must be a JSON object", code=ErrorCode.INVALID_REQUEST)
        return ParsedRequest(obj, None, err, None, None)
    cid, name = obj.get("id"), obj.get("cmd")
    good_id = cid if isinstance(cid, str) and _ID_RE.fullmatch(cid) else None
    good_name = name if isinstance(name, str) and len(name) <= _NAME_MAX else None
    try:
        request = CommandRequest.model_validate(obj)
    except ValidationError as exc:
        err = CommandError(
            "request does not match {id, cmd, args}",
            code=ErrorCode.INVALID_REQUEST,
            details={"problems": problems(exc)},
        )
        return ParsedRequest(obj, None, err, good_id, good_name)
    return ParsedRequest(obj, request, None, request.id, request.cmd)


#: A reply the dispatcher sends: (topic, body, MQTT 5 correlation data).
Reply = tuple[str, bytes, bytes | None]

#: The transport's batched send (:attr:`Incoming.handover`): the replies, then the
#: acknowledgements, in that order, handed to the network thread together.
Handover = Callable[[list[Reply], list[Callable[[], None]]], None]


@dataclass(frozen=True)
class Incoming:
    """A message for the device, decoupled from paho's types."""

    topic: str
    payload: bytes
    retained: bool
    response_topic: str | None = None
    correlation_data: bytes | None = None
    message_expiry: int | None = None
    #: Acknowledges the message to the broker (MQTT PUBACK). The agent sends it itself when
    #: the receiver returns, unless the receiver took it over (returned True): the dispatcher
    #: acknowledges a command once its admission committed, as before it moved off the network
    #: thread, so a crash in between gets the command delivered again.
    ack: Callable[[], None] | None = field(default=None, compare=False, repr=False)
    #: Sends a batch's read-only replies and then its acknowledgements with ONE wake-up of the
    #: transport's network thread (instead of one per reply and per PUBACK, each waking it from
    #: another thread); None: the dispatcher publishes and acknowledges one by one.
    handover: Handover | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Verified:
    """The trust layer's verdict on one message: the inner payload and who sent it, or the
    refusal with what could be read of the message.

    ``refused`` set: the message is refused with that error; ``request_id`` / ``command`` are
    what could be read of the request (also from an envelope that failed verification), so the
    reply names the id. ``audit`` is the trust decision's record for the single audit row the
    dispatcher writes. ``repeat``: an authenticated re-delivery of an id that already ran,
    answered from the command store only. ``roles`` are the sender's; the dispatcher gives
    every role to a message when no verifier is installed (development). ``request``: the
    payload parsed once (:func:`parse_request`), handed on so nobody decodes it again."""

    payload: bytes
    actor: str = "anonymous"
    roles: frozenset[str] = frozenset()
    refused: ApplianceError | None = None
    request_id: str | None = None
    command: str | None = None
    audit: dict[str, Any] | None = None
    repeat: bool = False
    #: ``payload`` already parsed (by the trust layer); None: the dispatcher parses it.
    request: ParsedRequest | None = None


# (incoming message) -> Verified; refuses by returning ``Verified(refused=...)`` or by raising
# ApplianceError (then the dispatcher reads the id of a plain request itself).
Verifier = Callable[[Incoming], Verified]

__all__ = [
    "ID_PATTERN",
    "UNREADABLE",
    "CommandRequest",
    "Handover",
    "Incoming",
    "ParsedRequest",
    "Reply",
    "Verified",
    "Verifier",
    "parse_request",
    "problems",
]
