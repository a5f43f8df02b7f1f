"""Signed documents from the fleet to one kiosk: the shape shared by the acknowledgements.

A document is UTF-8 JSON::

    {"typ": "<type>", "cert": "<operator certificate token>",
     "body": "<base64 body bytes>", "sig": "<base64 Ed25519 signature of body, context CTX>"}

and its body a JSON object naming at least ``device`` (the kiosk it is for) and ``issuer``
(the signing key's id). The receiving kiosk checks, in this order: shape, the certificate's
chain to a fleet root and its expiry and revocation, the signature under the document type's
own domain-separation context, the role, and that the document names *this* device and the
certificate's scope covers it. Acknowledgements are not time-critical, so "not yet valid" is
not judged (a kiosk without a set clock cannot, docs/trust.md).

Used by the sealed-record receipt (``sealed.py``) and the outbox delivery acknowledgement
(``outboxack.py``); each defines its type, context, roles and body fields.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import TrustError
from ..protocol.codes import ErrorCode
from .certs import OperatorCertificate, OperatorKey, verify_certificate
from .keys import b64decode, b64encode, load_json, sign_detached, verify_detached


def _bad(code: str, message: str, **details: Any) -> TrustError:
    return TrustError(message, code=code, details=details)


@dataclass(frozen=True)
class VerifiedDocument:
    issuer: str  # the signing key's id, or "unsigned" (development mode only)
    body: dict[str, Any]


def sign_document(
    key: OperatorKey,
    typ: str,
    context: bytes,
    device_id: str,
    fields: dict[str, Any],
    *,
    issued_at: int | None = None,
) -> bytes:
    """Fleet side: a document of type ``typ`` for ``device_id`` carrying ``fields``."""
    body_obj = {
        "device": device_id,
        "issued_at": int(time.time()) if issued_at is None else int(issued_at),
        "issuer": key.key_id,
        **fields,
    }
    return envelope(key, typ, context, body_obj)


def envelope(key: OperatorKey, typ: str, context: bytes, body_obj: dict[str, Any]) -> bytes:
    """The signed envelope every fleet document shares (also the configuration document's):
    ``{"typ", "cert", "body": base64 JSON, "sig": Ed25519 over the body bytes under context}``."""
    body = json.dumps(body_obj, separators=(",", ":")).encode("utf-8")
    env = {
        "typ": typ,
        "cert": key.certificate.to_token(),
        "body": b64encode(body),
        "sig": b64encode(sign_detached(key.signing_key, context, body)),
    }
    return json.dumps(env, separators=(",", ":")).encode("utf-8")


def unsigned_document(typ: str, device_id: str, fields: dict[str, Any]) -> bytes:
    """A document without certificate or signature: accepted only by a kiosk in development
    mode (``commands.allow_unsigned``), never by a provisioned one."""
    body = {"device": device_id, "issued_at": int(time.time()), "issuer": "unsigned", **fields}
    raw = json.dumps(body, separators=(",", ":")).encode("utf-8")
    return json.dumps({"typ": typ, "body": b64encode(raw)}, separators=(",", ":")).encode()


def verify_document(
    data: bytes,
    roots: Sequence[bytes],
    *,
    typ: str,
    context: bytes,
    device_id: str,
    roles: Iterable[str],
    now: float,
    revoked: Collection[str] = (),
    max_bytes: int = 1024 * 1024,
    allow_unsigned: bool = False,
    what: str = "document",
) -> VerifiedDocument:
    """Check a document. Raises ``TrustError``: ``malformed_envelope`` (shape), ``unsigned``,
    ``untrusted_issuer`` / ``cert_expired`` / ``cert_revoked`` (chain), ``bad_signature``,
    ``forbidden_role``, ``wrong_target`` (another device, or outside the certificate's scope).
    """
    if not isinstance(data, bytes | bytearray) or len(data) > max_bytes:
        raise _bad(ErrorCode.MALFORMED_ENVELOPE, f"{what} must be bytes of reasonable size")
    try:
        env = load_json(bytes(data))
    except (UnicodeDecodeError, ValueError):
        raise _bad(ErrorCode.MALFORMED_ENVELOPE, f"{what} is not JSON") from None
    if not isinstance(env, dict) or env.get("typ") != typ:
        raise _bad(ErrorCode.MALFORMED_ENVELOPE, f"{what} typ must be {typ!r}")
    if not env.get("sig"):
        if not allow_unsigned:
            raise _bad(ErrorCode.UNSIGNED, f"{what} carries no signature")
        body = _body(b64decode(env.get("body"), what="body"), what)
        if body.get("device") != device_id:
            raise _bad(
                ErrorCode.WRONG_TARGET, f"{what} is for another device", device=body.get("device")
            )
        return VerifiedDocument(issuer="unsigned", body=body)
    try:
        cert = OperatorCertificate.from_token(env.get("cert"))
    except TrustError as exc:
        raise _bad(ErrorCode.MALFORMED_ENVELOPE, f"certificate: {exc.message}") from None
    verify_certificate(cert, roots, now=now, check_not_before=False, revoked=revoked)
    body_bytes = b64decode(env.get("body"), what="body")
    sig = b64decode(env.get("sig"), what="sig")
    verify_detached(cert.public_key, context, body_bytes, sig)
    allowed = set(roles)
    if not allowed.intersection(cert.roles):
        raise _bad(ErrorCode.FORBIDDEN_ROLE, f"{what}s need role {sorted(allowed)}")
    body = _body(body_bytes, what)
    if body.get("issuer") != cert.key_id:
        raise _bad(ErrorCode.MALFORMED_ENVELOPE, f"{what} body/issuer invalid")
    if body.get("device") != device_id or not cert.covers(device_id, ()):
        raise _bad(
            ErrorCode.WRONG_TARGET, f"{what} is for another device", device=body.get("device")
        )
    return VerifiedDocument(issuer=cert.key_id, body=body)


def _body(raw: bytes, what: str) -> dict[str, Any]:
    try:
        body = load_json(raw)
    except (UnicodeDecodeError, ValueError):
        raise _bad(ErrorCode.MALFORMED_ENVELOPE, f"{what} body is not JSON") from None
    if not isinstance(body, dict):
        raise _bad(ErrorCode.MALFORMED_ENVELOPE, f"{what} body/issuer invalid")
    return body
