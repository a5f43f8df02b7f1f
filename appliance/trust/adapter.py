"""Glue between :class:`~appliance.trust.envelope.CommandVerifier` and the daemon's
:class:`~appliance.dispatch.Dispatcher` (its ``verifier=`` hook).

The dispatcher calls ``verifier(incoming)`` before it parses the request; the adapter checks the
envelope and returns a :class:`~appliance.dispatch.Verified`: the exact signed payload, the
issuer as actor and the certificate's roles, or the refusal together with the request id and
command it could read (also out of an envelope that failed verification), so the error reply
names the id. The dispatcher writes the one audit row per message, with the trust decision's
record (``Verified.audit``) in it. The signed envelope's ``command`` must equal the inner
request's ``cmd`` (otherwise ``malformed_envelope``), so a signature for one command can never
run another.

With ``lookup`` (the daemon's ``store.commands.lookup``), an authenticated envelope whose request
id already ran under the same command is a re-delivery: the verifier accepts it as ``repeat``
without its replay check and the dispatcher answers it with the stored first reply
(docs/trust.md, "Re-delivered commands").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..errors import TrustError
from ..inbound import UNREADABLE, ParsedRequest, Verified, Verifier, parse_request
from ..protocol.codes import ErrorCode
from .certs import ROLES
from .envelope import ENVELOPE_TYPE, CommandVerifier, TrustDecision
from .keys import b64decode, load_json

log = logging.getLogger(__name__)

#: Roles given to an unsigned command when ``allow_unsigned`` is set (development only).
UNSIGNED_ROLES = frozenset(ROLES)

#: ``store.commands.lookup``: (command name, state, stored reply) of a known id, else None.
CommandLookup = Callable[[str], "tuple[str, str, str | None] | None"]


class _Parsed:
    """The inner request of one message, parsed at most once (a one-entry memo by payload):
    the verifier's two hooks (the command the payload names, whether its id already ran) and
    the dispatcher all read the same :class:`ParsedRequest`."""

    __slots__ = ("_parsed", "_payload")

    def __init__(self) -> None:
        self._payload: bytes | None = None
        self._parsed: ParsedRequest | None = None

    def __call__(self, payload: bytes, obj: Any = UNREADABLE) -> ParsedRequest:
        if self._parsed is None or (self._payload is not payload and self._payload != payload):
            self._payload, self._parsed = payload, parse_request(payload, obj)
        return self._parsed

    def peek(self) -> ParsedRequest | None:
        return self._parsed


def request_command(payload: bytes) -> str | None:
    """The ``cmd`` of a ``{id, cmd, args}`` request, or None if the payload is not one (the
    dispatcher then reports ``invalid_json`` / ``invalid_request`` itself)."""
    return parse_request(payload).command


def peek_request(message: bytes, obj: Any = UNREADABLE) -> tuple[str | None, str | None]:
    """Best effort ``(id, cmd)`` of a message that is refused: a plain request's own, or the
    inner request of an envelope (read without trusting it: only to name the id in the error
    reply). ``(None, None)`` when nothing can be read. ``obj``: ``message`` already decoded."""
    if obj is UNREADABLE:
        try:
            obj = load_json(message)
        except (UnicodeDecodeError, ValueError):
            return None, None
    if not isinstance(obj, dict):
        return None, None
    if obj.get("typ") != ENVELOPE_TYPE:
        plain = parse_request(message, obj)
        return plain.id, plain.cmd
    try:
        body = load_json(b64decode(obj.get("body"), what="body"))
        if not isinstance(body, dict):
            return None, None
        inner = parse_request(b64decode(body.get("payload"), what="payload"))
    except (TrustError, UnicodeDecodeError, ValueError):
        return None, None
    return inner.id, inner.cmd


def actor_of(decision: TrustDecision) -> str:
    """Audit actor: ``name#keyid`` for a signed command, ``unsigned`` otherwise."""
    if not decision.signed or decision.issuer is None:
        return "unsigned"
    return f"{decision.issuer_name or 'operator'}#{decision.issuer}"


def known_request(
    lookup: CommandLookup, parse: Callable[[bytes], ParsedRequest] = parse_request
) -> Callable[[bytes, str], bool]:
    """The verifier's ``known_request`` hook over the command store: the payload's id is
    recorded, under the same command. ``parse``: how the payload is read (the adapter's
    memo, so the payload is parsed once)."""

    def known(payload: bytes, command: str) -> bool:
        cid = parse(payload).id
        if cid is None:
            return False
        row = lookup(cid)
        return row is not None and row[0] == command

    return known


def make_dispatch_verifier(
    verifier: CommandVerifier,
    *,
    lookup: CommandLookup | None = None,
    audit: Callable[[TrustDecision], None] | None = None,
) -> Verifier:
    """Wrap ``verifier`` as the dispatcher's ``Callable[[Incoming], Verified]``.

    ``lookup``: the command store's lookup, for re-delivered commands (see the module
    docstring). ``audit``: an extra observer of every decision, for tests and tools; the
    daemon does not pass it (the dispatcher writes the audit row, one per message)."""

    def verify(msg: object) -> Verified:
        payload = getattr(msg, "payload", b"")
        # The message is decoded once here (the verifier takes it decoded) and its inner
        # request once by the memo, which the hooks and the dispatcher share.
        obj: Any = UNREADABLE
        if isinstance(payload, bytes) and len(payload) <= verifier.max_message_bytes:
            try:
                obj = load_json(payload)
            except (UnicodeDecodeError, ValueError):
                obj = UNREADABLE  # the verifier refuses it with its own reason
        parsed = _Parsed()
        hook = known_request(lookup, parsed) if lookup is not None else None
        decision = verifier.check(
            payload,
            payload_command=lambda p: parsed(p).command,
            known_request=hook,
            **({} if obj is UNREADABLE else {"decoded": obj}),
        )
        if audit is not None:
            try:
                audit(decision)
            except Exception:  # an observer failing must not turn into an accepted command
                log.exception("trust audit hook failed")
        record: dict[str, Any] = decision.to_audit()
        err = decision.error()
        if err is not None:
            inner = parsed.peek()
            cid, cmd = (inner.id, inner.cmd) if inner is not None else peek_request(payload, obj)
            return Verified(
                payload=b"",
                actor=actor_of(decision),
                roles=frozenset(),
                refused=err,
                request_id=cid,
                command=cmd or decision.command,
                audit=record,
            )
        if decision.payload is None:  # an accepted decision always carries its payload
            raise TrustError("accepted decision without payload", code=ErrorCode.MALFORMED_ENVELOPE)
        if not decision.signed:  # the message is the request itself
            return Verified(
                payload=decision.payload,
                actor="unsigned",
                roles=UNSIGNED_ROLES,
                audit=record,
                request=parsed(decision.payload, obj),
            )
        return Verified(
            payload=decision.payload,
            actor=actor_of(decision),
            roles=frozenset(decision.roles),
            audit=record,
            repeat=decision.code == "repeat",
            request=parsed(decision.payload),
        )

    return verify
