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
import re
from collections.abc import Callable
from typing import Any

from ..errors import TrustError
from ..inbound import ID_PATTERN, Verified, Verifier
from .certs import ROLES
from .envelope import ENVELOPE_TYPE, CommandVerifier, TrustDecision
from .keys import b64decode, load_json

log = logging.getLogger(__name__)

#: Roles given to an unsigned command when ``allow_unsigned`` is set (development only).
UNSIGNED_ROLES = frozenset(ROLES)

#: ``store.commands.lookup``: (command name, state, stored reply) of a known id, else None.
CommandLookup = Callable[[str], "tuple[str, str, str | None] | None"]

_ID_MAX = 64
_ID_RE = re.compile(ID_PATTERN)


def _request_fields(payload: bytes) -> tuple[str | None, str | None]:
    """``(id, cmd)`` of a ``{id, cmd, args}`` request, each None if absent or ill-formed."""
    try:
        obj = load_json(payload)
    except (UnicodeDecodeError, ValueError):
        return None, None
    if not isinstance(obj, dict):
        return None, None
    cid, cmd = obj.get("id"), obj.get("cmd")
    return _good_id(cid), (cmd if isinstance(cmd, str) and len(cmd) <= _ID_MAX else None)


def _good_id(value: object) -> str | None:
    return value if isinstance(value, str) and _ID_RE.fullmatch(value) else None


def request_command(payload: bytes) -> str | None:
    """The ``cmd`` of a ``{id, cmd, args}`` request, or None if the payload is not one (the
    dispatcher then reports ``invalid_json`` / ``invalid_request`` itself)."""
    try:
        obj = load_json(payload)
    except (UnicodeDecodeError, ValueError):
        return None
    cmd = obj.get("cmd") if isinstance(obj, dict) else None
    return cmd if isinstance(cmd, str) else None


def peek_request(message: bytes) -> tuple[str | None, str | None]:
    """Best effort ``(id, cmd)`` of a message that is refused: a plain request's own, or the
    inner request of an envelope (read without trusting it: only to name the id in the error
    reply). ``(None, None)`` when nothing can be read."""
    try:
        obj = load_json(message)
    except (UnicodeDecodeError, ValueError):
        return None, None
    if not isinstance(obj, dict):
        return None, None
    if obj.get("typ") != ENVELOPE_TYPE:
        return _request_fields(message)
    try:
        body = load_json(b64decode(obj.get("body"), what="body"))
        if not isinstance(body, dict):
            return None, None
        return _request_fields(b64decode(body.get("payload"), what="payload"))
    except (TrustError, UnicodeDecodeError, ValueError):
        return None, None


def actor_of(decision: TrustDecision) -> str:
    """Audit actor: ``name#keyid`` for a signed command, ``unsigned`` otherwise."""
    if not decision.signed or decision.issuer is None:
        return "unsigned"
    return f"{decision.issuer_name or 'operator'}#{decision.issuer}"


def known_request(lookup: CommandLookup) -> Callable[[bytes, str], bool]:
    """The verifier's ``known_request`` hook over the command store: the payload's id is
    recorded, under the same command."""

    def known(payload: bytes, command: str) -> bool:
        cid, _cmd = _request_fields(payload)
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
    hook = known_request(lookup) if lookup is not None else None

    def verify(msg: object) -> Verified:
        payload = getattr(msg, "payload", b"")
        decision = verifier.check(payload, payload_command=request_command, known_request=hook)
        if audit is not None:
            try:
                audit(decision)
            except Exception:  # an observer failing must not turn into an accepted command
                log.exception("trust audit hook failed")
        record: dict[str, Any] = decision.to_audit()
        err = decision.error()
        if err is not None:
            cid, cmd = peek_request(payload)
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
            raise TrustError("accepted decision without payload", code="malformed_envelope")
        if not decision.signed:
            return Verified(
                payload=decision.payload, actor="unsigned", roles=UNSIGNED_ROLES, audit=record
            )
        return Verified(
            payload=decision.payload,
            actor=actor_of(decision),
            roles=frozenset(decision.roles),
            audit=record,
            repeat=decision.code == "repeat",
        )

    return verify
