"""What a command message is on its way in, shared by the three layers it crosses.

The MQTT agent hands every message for the device to the daemon as an :class:`Incoming`
(decoupled from paho's types); the trust layer's verifier turns one into a :class:`Verified`
(the exact signed payload and who sent it, or the refusal); the dispatcher takes both. They
live here, below the agent, the trust layer and dispatch, so none of those imports another for
its types (docs/architecture.md, "Borders").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ApplianceError

#: A command request id (and the ``id`` field of the request model, docs/protocol.md).
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"


@dataclass(frozen=True)
class Incoming:
    """A message for the device, decoupled from paho's types."""

    topic: str
    payload: bytes
    retained: bool
    response_topic: str | None = None
    correlation_data: bytes | None = None
    message_expiry: int | None = None


@dataclass(frozen=True)
class Verified:
    """The trust layer's verdict on one message: the inner payload and who sent it, or the
    refusal with what could be read of the message.

    ``refused`` set: the message is refused with that error; ``request_id`` / ``command`` are
    what could be read of the request (also from an envelope that failed verification), so the
    reply names the id. ``audit`` is the trust decision's record for the single audit row the
    dispatcher writes. ``repeat``: an authenticated re-delivery of an id that already ran,
    answered from the command store only. ``roles`` are the sender's; the dispatcher gives
    every role to a message when no verifier is installed (development)."""

    payload: bytes
    actor: str = "anonymous"
    roles: frozenset[str] = frozenset()
    refused: ApplianceError | None = None
    request_id: str | None = None
    command: str | None = None
    audit: dict[str, Any] | None = None
    repeat: bool = False


# (incoming message) -> Verified; refuses by returning ``Verified(refused=...)`` or by raising
# ApplianceError (then the dispatcher reads the id of a plain request itself).
Verifier = Callable[[Incoming], Verified]

__all__ = ["ID_PATTERN", "Incoming", "Verified", "Verifier"]
