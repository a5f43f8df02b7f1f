"""Signed desired-configuration documents (pushed on the retained ``config/desired`` topic).

An admin signs the exact bytes of a TOML or JSON configuration together with a version number
and a target; the device verifies and hands back the version and those exact bytes. Applying,
health-checking and rolling back belong to the daemon.

Wire form (UTF-8 JSON)::

    {"typ": "appliance.config.v1", "cert": "<admin certificate token>",
     "body": "<base64 body bytes>", "sig": "<base64 signature, context appliance/config/v1>"}

    body = {"version": 7, "target": "kiosk-001" | "group:hanoi", "format": "toml" | "json",
            "content": "<base64 of the exact configuration bytes>", "issued_at": 1800000000,
            "issuer": "<certificate key id>"}

Checks, with the same codes as command envelopes: ``malformed_envelope`` (shape, or content
that does not parse as its declared format), ``unsigned``, ``untrusted_issuer``,
``cert_expired``, ``cert_revoked``, ``not_yet_valid`` (certificate or document from the
future, only with a synced clock), ``bad_signature``, ``forbidden_role`` (the certificate
lacks ``admin``), ``wrong_target``, and ``replayed`` when ``newer_than`` is given and the
version is not above it.

A desired configuration has no expiry: it is retained and a kiosk may come online months later.
Versions, not timestamps, order documents. A retained document that re-arrives after the
admin's certificate expired fails with ``cert_expired``; the daemon should compare the version
with the one it already applied first and ignore an equal version without re-verifying.
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import TrustError
from ..protocol.codes import ErrorCode
from .certs import OperatorCertificate, OperatorKey, verify_certificate
from .envelope import GROUP_PREFIX, ClockPolicy, validate_target
from .keys import CTX_CONFIG, b64decode, b64encode, load_json, verify_detached
from .signeddoc import envelope

CONFIG_TYPE = "appliance.config.v1"
FORMATS = ("toml", "json")
CONFIG_ROLES = frozenset({"admin"})
MAX_DOC_BYTES = 512 * 1024


@dataclass(frozen=True)
class VerifiedConfig:
    """A verified document: the version and the exact configuration bytes to apply."""

    version: int
    content: bytes
    format: str
    target: str
    issuer: str
    issuer_name: str
    issued_at: int

    def to_audit(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "format": self.format,
            "target": self.target,
            "issuer": self.issuer,
            "issuer_name": self.issuer_name,
            "issued_at": self.issued_at,
            "content_len": len(self.content),
        }


def _check_content(content: bytes, fmt: str) -> None:
    """The content must parse as its declared format (semantics are the daemon's job)."""
    try:
        text = content.decode("utf-8")
        parsed: Any = tomllib.loads(text) if fmt == "toml" else load_json(text)
    except RecursionError:
        raise TrustError(
            f"configuration content ({fmt}) is nested too deeply", code=ErrorCode.MALFORMED_ENVELOPE
        ) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise TrustError(
            f"configuration content is not valid {fmt}: {exc}", code=ErrorCode.MALFORMED_ENVELOPE
        ) from None
    if not isinstance(parsed, dict):
        raise TrustError(
            "configuration content must be a table/object", code=ErrorCode.MALFORMED_ENVELOPE
        )


def sign_config(
    content: bytes,
    *,
    key: OperatorKey,
    version: int,
    target: str,
    fmt: str = "toml",
    issued_at: int | None = None,
) -> bytes:
    """Fleet side: sign ``content`` (exact bytes) as configuration ``version`` for ``target``."""
    if fmt not in FORMATS:
        raise TrustError(f"format must be one of {FORMATS}", code=ErrorCode.MALFORMED_ENVELOPE)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise TrustError("version must be a positive integer", code=ErrorCode.MALFORMED_ENVELOPE)
    validate_target(target)
    _check_content(bytes(content), fmt)
    body_obj = {
        "version": version,
        "target": target,
        "format": fmt,
        "content": b64encode(bytes(content)),
        "issued_at": int(time.time()) if issued_at is None else int(issued_at),
        "issuer": key.key_id,
    }
    return envelope(key, CONFIG_TYPE, CTX_CONFIG, body_obj)


def _int(body: dict[str, Any], name: str, minimum: int) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise TrustError(
            f"config field {name!r} must be an integer", code=ErrorCode.MALFORMED_ENVELOPE
        )
    return value


def verify_config(
    doc: bytes,
    roots: Sequence[bytes],
    *,
    device_id: str,
    groups: Iterable[str] = (),
    now: float | None = None,
    newer_than: int | None = None,
    policy: ClockPolicy | None = None,
    time_floor: float | None = None,
    revoked: Collection[str] = (),
) -> VerifiedConfig:
    """Device side: verify a desired-configuration document; raises ``TrustError``.

    ``time_floor`` (pass :meth:`CommandVerifier.time_floor`) keeps an unsynced clock from
    making an expired admin certificate look valid, as for commands.
    """
    pol = policy or ClockPolicy()
    t = time.time() if now is None else now
    synced = t >= pol.sane_after
    t = max(t, float(pol.sane_after), float(time_floor or 0))
    group_set = frozenset(groups)
    if not isinstance(doc, bytes | bytearray) or len(doc) > MAX_DOC_BYTES:
        raise TrustError(
            "configuration document too large or not bytes", code=ErrorCode.MALFORMED_ENVELOPE
        )
    try:
        env = load_json(bytes(doc))
    except (UnicodeDecodeError, ValueError):
        raise TrustError(
            "configuration document is not JSON", code=ErrorCode.MALFORMED_ENVELOPE
        ) from None
    if not isinstance(env, dict):
        raise TrustError(
            "configuration document is not an object", code=ErrorCode.MALFORMED_ENVELOPE
        )
    if env.get("typ") != CONFIG_TYPE:
        code = ErrorCode.MALFORMED_ENVELOPE if "sig" in env else ErrorCode.UNSIGNED
        raise TrustError(f"not a signed {CONFIG_TYPE} document", code=code)
    if not env.get("sig"):
        raise TrustError("configuration document carries no signature", code=ErrorCode.UNSIGNED)
    try:
        cert = OperatorCertificate.from_token(env.get("cert"))
    except TrustError as exc:
        raise TrustError(f"certificate: {exc.message}", code=ErrorCode.MALFORMED_ENVELOPE) from None
    verify_certificate(
        cert, roots, now=t, skew_s=pol.skew_s, check_not_before=synced, revoked=revoked
    )
    body_bytes = b64decode(env.get("body"), what="body")
    verify_detached(cert.public_key, CTX_CONFIG, body_bytes, b64decode(env.get("sig"), what="sig"))
    if not CONFIG_ROLES.intersection(cert.roles):
        raise TrustError(
            "configuration must be signed by an admin",
            code=ErrorCode.FORBIDDEN_ROLE,
            details={"required": sorted(CONFIG_ROLES), "roles": list(cert.roles)},
        )
    try:
        body = load_json(body_bytes)
    except (UnicodeDecodeError, ValueError):
        raise TrustError(
            "configuration body is not JSON", code=ErrorCode.MALFORMED_ENVELOPE
        ) from None
    if not isinstance(body, dict) or body.get("issuer") != cert.key_id:
        raise TrustError("configuration body/issuer invalid", code=ErrorCode.MALFORMED_ENVELOPE)
    version = _int(body, "version", 1)
    issued_at = _int(body, "issued_at", 0)
    fmt = body.get("format")
    target = body.get("target")
    if fmt not in FORMATS or not isinstance(target, str):
        raise TrustError("configuration format/target invalid", code=ErrorCode.MALFORMED_ENVELOPE)
    content = b64decode(body.get("content"), what="content")
    if synced and issued_at > t + pol.skew_s:
        raise TrustError("configuration issued in the future", code=ErrorCode.NOT_YET_VALID)
    if target.startswith(GROUP_PREFIX):
        matches = target[len(GROUP_PREFIX) :] in group_set
    else:
        matches = target == device_id
    if not matches or not cert.covers(device_id, group_set):
        raise TrustError(
            f"configuration is for {target!r}, or its signer does not cover this device",
            code=ErrorCode.WRONG_TARGET,
            details={"target": target, "device": device_id},
        )
    if newer_than is not None and version <= newer_than:
        raise TrustError(
            f"configuration version {version} is not newer than {newer_than}",
            code=ErrorCode.REPLAYED,
            details={"version": version, "current": newer_than},
        )
    _check_content(content, str(fmt))
    return VerifiedConfig(
        version=version,
        content=content,
        format=str(fmt),
        target=target,
        issuer=cert.key_id,
        issuer_name=cert.name,
        issued_at=issued_at,
    )
