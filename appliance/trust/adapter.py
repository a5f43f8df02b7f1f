"""Glue between :class:`~appliance.trust.envelope.CommandVerifier` and the daemon's
:class:`~appliance.dispatch.Dispatcher` (its ``verifier=`` hook).

The dispatcher calls ``verifier(incoming)`` before it parses the request; the adapter checks the
envelope, records the decision through ``audit`` (accepted and refused alike), and hands on the
exact signed payload, the issuer as actor, and the certificate's roles. The signed envelope's
``command`` must equal the inner request's ``cmd`` (otherwise ``malformed_envelope``), so a
signature for one command can never run another.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..dispatch import Verified, Verifier
from ..errors import TrustError
from .certs import ROLES
from .envelope import CommandVerifier, TrustDecision
from .keys import load_json

log = logging.getLogger(__name__)

#: Roles given to an unsigned command when ``allow_unsigned`` is set (development only).
UNSIGNED_ROLES = frozenset(ROLES)


def request_command(payload: bytes) -> str | None:
    """The ``cmd`` of a ``{id, cmd, args}`` request, or None if the payload is not one (the
    dispatcher then reports ``invalid_json`` / ``invalid_request`` itself)."""
    try:
        obj = load_json(payload)
    except (UnicodeDecodeError, ValueError):
        return None
    cmd = obj.get("cmd") if isinstance(obj, dict) else None
    return cmd if isinstance(cmd, str) else None


def actor_of(decision: TrustDecision) -> str:
    """Audit actor: ``name#keyid`` for a signed command, ``unsigned`` otherwise."""
    if not decision.signed or decision.issuer is None:
        return "unsigned"
    return f"{decision.issuer_name or 'operator'}#{decision.issuer}"


def make_dispatch_verifier(
    verifier: CommandVerifier,
    *,
    audit: Callable[[TrustDecision], None] | None = None,
) -> Verifier:
    """Wrap ``verifier`` as the dispatcher's ``Callable[[Incoming], Verified]``."""

    def verify(msg: object) -> Verified:
        payload = getattr(msg, "payload", b"")
        decision = verifier.check(payload, payload_command=request_command)
        if audit is not None:
            try:
                audit(decision)
            except Exception:  # an audit failure must not turn into an accepted command
                log.exception("trust audit hook failed")
        err = decision.error()
        if err is not None:
            raise err
        if decision.payload is None:  # an accepted decision always carries its payload
            raise TrustError("accepted decision without payload", code="malformed_envelope")
        if not decision.signed:
            return Verified(payload=decision.payload, actor="unsigned", roles=UNSIGNED_ROLES)
        return Verified(
            payload=decision.payload, actor=actor_of(decision), roles=frozenset(decision.roles)
        )

    return verify
