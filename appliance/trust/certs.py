"""Fleet root key and operator certificates.

The fleet root key (Ed25519) signs operator certificates. A certificate says: this public key
(``key_id``) may act with these ``roles`` on these ``devices`` (ids, or ``*`` for every device)
and ``groups`` until ``not_after``. The kiosk trusts only the root public key(s) installed at
provisioning.

Serialisation follows one rule: the issuer serialises the body *once* to JSON bytes, signs
those exact bytes, and the bytes travel as they are (base64) next to the signature. A verifier
checks the signature over the bytes it received and only then parses them, so no two parties
ever need to agree on a canonical JSON form. The token form is
``<base64 body>.<base64 signature>`` (standard base64 never contains ``.``).

Certificate body (JSON object):

=============  ==============================================================================
``typ``        ``"appliance.operator-cert.v1"``
``key_id``     :func:`~appliance.trust.keys.key_id` of ``public_key``
``public_key`` base64 of the operator's 32-byte Ed25519 public key
``name``       a human label (e.g. the operator's name), informational
``roles``      non-empty subset of :data:`ROLES`
``devices``    device ids the holder may command, ``"*"`` meaning every device
``groups``     group names whose members the holder may command
``issued_at``  Unix seconds
``not_after``  Unix seconds; the certificate is expired after it
``issuer``     key id of the root key that signed it
=============  ==============================================================================
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from ..errors import TrustError
from ..protocol.codes import ErrorCode
from . import keys
from .keys import (
    CTX_CERTIFICATE,
    b64decode,
    b64encode,
    key_id,
    load_json,
    sign_detached,
    verify_detached,
)

log = logging.getLogger(__name__)

CERT_TYPE = "appliance.operator-cert.v1"

#: operator: enrollment and card commands; admin: configuration, restarts, diagnostics;
#: technician: self-test and snapshots; ingest: the central enrollment service, whose signed
#: acknowledgements let a kiosk shred sealed biometric records (see sealed.py); directory: the
#: central citizen directory, whose signed lookup answers a kiosk shows for confirmation
#: (appliance/citizen/lookup.py). No command requires the directory role. release: signs
#: software release bundles a kiosk installs (appliance/update/bundle.py).
ROLES = frozenset({"operator", "admin", "technician", "ingest", "directory", "release"})

ALL_DEVICES = "*"

#: Device ids and group names: safe inside one MQTT topic level and in a certificate CN.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

ROOT_KEY_FILE = "root.key"
ROOT_PUB_FILE = "root.pub"

MAX_TOKEN_CHARS = 16384


def _malformed(message: str, **details: Any) -> TrustError:
    return TrustError(message, code=ErrorCode.MALFORMED_CERTIFICATE, details=details)


def _as_int(body: dict[str, Any], field: str) -> int:
    value = body.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _malformed(f"certificate field {field!r} must be a non-negative integer", field=field)
    return value


def _as_names(body: dict[str, Any], field: str, *, allow_all: bool = False) -> tuple[str, ...]:
    value = body.get(field)
    if not isinstance(value, list) or len(value) > 1000:
        raise _malformed(f"certificate field {field!r} must be a list", field=field)
    out: list[str] = []
    for item in value:
        if not isinstance(item, str) or not (
            NAME_RE.match(item) or (allow_all and item == ALL_DEVICES)
        ):
            raise _malformed(f"certificate field {field!r} holds an invalid name", field=field)
        out.append(item)
    return tuple(out)


def validate_name(name: str, what: str) -> str:
    """Check a device id or group name; raise ``TrustError(code="invalid_name")``."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise TrustError(
            f"invalid {what} {name!r}: use 1-64 of A-Z a-z 0-9 _ . - starting with a letter or "
            "digit",
            code=ErrorCode.INVALID_NAME,
            details={what: str(name)},
        )
    return name


@dataclass(frozen=True)
class OperatorCertificate:
    """A parsed certificate. ``body`` and ``signature`` are the exact bytes that were signed."""

    key_id: str
    public_key: bytes
    name: str
    roles: tuple[str, ...]
    devices: tuple[str, ...]
    groups: tuple[str, ...]
    issued_at: int
    not_after: int
    issuer: str
    body: bytes
    signature: bytes

    def to_token(self) -> str:
        """``<base64 body>.<base64 signature>``: the form carried in envelopes and files."""
        return f"{b64encode(self.body)}.{b64encode(self.signature)}"

    def covers(self, device_id: str, groups: Iterable[str]) -> bool:
        """Whether this certificate's scope includes the device (by id, ``*`` or a group)."""
        if ALL_DEVICES in self.devices or device_id in self.devices:
            return True
        return any(g in self.groups for g in groups)

    def summary(self) -> dict[str, Any]:
        """Audit-friendly description (no key material beyond the public key id)."""
        return {
            "key_id": self.key_id,
            "name": self.name,
            "roles": list(self.roles),
            "devices": list(self.devices),
            "groups": list(self.groups),
            "issued_at": self.issued_at,
            "not_after": self.not_after,
            "issuer": self.issuer,
        }

    @classmethod
    def from_token(cls, token: object) -> OperatorCertificate:
        """Parse a token *without* verifying it; raises ``malformed_certificate``."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
            raise _malformed("certificate token must be '<base64>.<base64>'")
        body_b64, sig_b64 = token.split(".")
        body = b64decode(body_b64, what="certificate body", code=ErrorCode.MALFORMED_CERTIFICATE)
        sig = b64decode(sig_b64, what="certificate signature", code=ErrorCode.MALFORMED_CERTIFICATE)
        if len(sig) != 64:
            raise _malformed("certificate signature must be 64 bytes")
        return cls.from_body(body, sig)

    @classmethod
    def from_body(cls, body: bytes, signature: bytes) -> OperatorCertificate:
        try:
            obj = load_json(body)
        except (UnicodeDecodeError, ValueError):
            raise _malformed("certificate body is not JSON") from None
        if not isinstance(obj, dict) or obj.get("typ") != CERT_TYPE:
            raise _malformed(f"certificate body is not a {CERT_TYPE} object")
        pub = b64decode(
            obj.get("public_key"), what="public_key", code=ErrorCode.MALFORMED_CERTIFICATE
        )
        if len(pub) != 32:
            raise _malformed("certificate public_key must be 32 bytes")
        kid = obj.get("key_id")
        if kid != key_id(pub):
            raise _malformed("certificate key_id does not match its public key")
        roles = obj.get("roles")
        if (
            not isinstance(roles, list)
            or not roles
            or not all(isinstance(r, str) and r in ROLES for r in roles)
        ):
            raise _malformed(f"certificate roles must be a non-empty subset of {sorted(ROLES)}")
        name = obj.get("name", "")
        issuer = obj.get("issuer")
        if not isinstance(name, str) or len(name) > 200:
            raise _malformed("certificate name must be a short string")
        if not isinstance(issuer, str) or not issuer:
            raise _malformed("certificate issuer must be a key id")
        issued_at = _as_int(obj, "issued_at")
        not_after = _as_int(obj, "not_after")
        if not_after <= issued_at:
            raise _malformed("certificate not_after must be after issued_at")
        return cls(
            key_id=kid,
            public_key=pub,
            name=name,
            roles=tuple(roles),
            devices=_as_names(obj, "devices", allow_all=True),
            groups=_as_names(obj, "groups"),
            issued_at=issued_at,
            not_after=not_after,
            issuer=issuer,
            body=bytes(body),
            signature=bytes(signature),
        )


def verify_certificate(
    cert: OperatorCertificate | str,
    roots: Sequence[bytes],
    *,
    now: float,
    skew_s: float = 0.0,
    check_not_before: bool = True,
    revoked: Collection[str] = (),
) -> OperatorCertificate:
    """Check a certificate against the trusted root public key(s) at time ``now``.

    Raises ``TrustError`` with ``malformed_certificate``, ``untrusted_issuer`` (not signed by a
    trusted root), ``cert_revoked`` (key id in ``revoked``), ``cert_expired``
    (``now > not_after + skew_s``) or ``not_yet_valid`` (``issued_at > now + skew_s``, only
    when ``check_not_before``: a kiosk whose clock is not set cannot judge that, see
    docs/trust.md).
    """
    if isinstance(cert, str):
        cert = OperatorCertificate.from_token(cert)
    root = next((r for r in roots if key_id(r) == cert.issuer), None)
    if root is None:
        raise TrustError(
            "certificate issued by an untrusted key",
            code=ErrorCode.UNTRUSTED_ISSUER,
            details={"issuer": cert.issuer, "key_id": cert.key_id},
        )
    try:
        verify_detached(root, CTX_CERTIFICATE, cert.body, cert.signature)
    except TrustError:
        raise TrustError(
            "certificate signature does not verify against the fleet root",
            code=ErrorCode.UNTRUSTED_ISSUER,
            details={"issuer": cert.issuer, "key_id": cert.key_id},
        ) from None
    check_validity(cert, now=now, skew_s=skew_s, check_not_before=check_not_before, revoked=revoked)
    return cert


def check_validity(
    cert: OperatorCertificate,
    *,
    now: float,
    skew_s: float = 0.0,
    check_not_before: bool = True,
    revoked: Collection[str] = (),
) -> None:
    """The revocation and time checks of :func:`verify_certificate` alone (for an already
    verified chain). ``revoked`` holds key ids whose certificates are withdrawn
    (``cert_revoked``), e.g. after an operator's key was lost."""
    if cert.key_id in revoked:
        raise TrustError(
            "operator certificate revoked",
            code=ErrorCode.CERT_REVOKED,
            details={"key_id": cert.key_id},
        )
    if now > cert.not_after + skew_s:
        raise TrustError(
            "operator certificate expired",
            code=ErrorCode.CERT_EXPIRED,
            details={"key_id": cert.key_id, "not_after": cert.not_after},
        )
    if check_not_before and cert.issued_at > now + skew_s:
        raise TrustError(
            "operator certificate is not valid yet",
            code=ErrorCode.NOT_YET_VALID,
            details={"key_id": cert.key_id, "issued_at": cert.issued_at, "part": "certificate"},
        )


class FleetRoot:
    """The fleet root signing key (kept offline or on the controller host, mode 0600)."""

    def __init__(self, signing_key: SigningKey) -> None:
        self._key = signing_key
        self.public_key: bytes = bytes(signing_key.verify_key)
        self.key_id: str = key_id(self.public_key)

    def __repr__(self) -> str:
        return f"FleetRoot(key_id={self.key_id!r})"

    @classmethod
    def create(cls, directory: Path, *, overwrite: bool = False) -> FleetRoot:
        key = SigningKey.generate()
        directory = Path(directory)
        keys.save_signing_key(
            key, directory / ROOT_KEY_FILE, directory / ROOT_PUB_FILE, overwrite=overwrite
        )
        root = cls(key)
        log.info("created fleet root key_id=%s in %s", root.key_id, directory)
        return root

    @classmethod
    def load(cls, directory: Path) -> FleetRoot:
        return cls(keys.load_signing_key(Path(directory) / ROOT_KEY_FILE))

    def issue(
        self,
        public_key: bytes,
        *,
        roles: Iterable[str],
        not_after: int,
        devices: Iterable[str] = (),
        groups: Iterable[str] = (),
        name: str = "",
        issued_at: int | None = None,
    ) -> OperatorCertificate:
        """Sign a certificate for ``public_key``; inputs are validated with clear errors."""
        if len(public_key) != 32:
            raise TrustError("operator public key must be 32 bytes", code=ErrorCode.KEY_MALFORMED)
        role_list = sorted(set(roles))
        bad = [r for r in role_list if r not in ROLES]
        if not role_list or bad:
            raise TrustError(
                f"roles must be a non-empty subset of {sorted(ROLES)}; got {role_list}",
                code=ErrorCode.INVALID_ROLE,
                details={"invalid": bad},
            )
        dev_list = [d if d == ALL_DEVICES else validate_name(d, "device") for d in devices]
        grp_list = [validate_name(g, "group") for g in groups]
        if not dev_list and not grp_list:
            raise TrustError(
                "a certificate must allow at least one device, group, or '*'",
                code=ErrorCode.INVALID_NAME,
            )
        issued = int(time.time()) if issued_at is None else int(issued_at)
        if int(not_after) <= issued:
            raise TrustError(
                "not_after must be later than issued_at",
                code=ErrorCode.INVALID_VALIDITY,
                details={"issued_at": issued, "not_after": int(not_after)},
            )
        body_obj = {
            "typ": CERT_TYPE,
            "key_id": key_id(public_key),
            "public_key": b64encode(public_key),
            "name": name,
            "roles": role_list,
            "devices": dev_list,
            "groups": grp_list,
            "issued_at": issued,
            "not_after": int(not_after),
            "issuer": self.key_id,
        }
        body = json.dumps(body_obj, separators=(",", ":")).encode("utf-8")
        sig = sign_detached(self._key, CTX_CERTIFICATE, body)
        return OperatorCertificate.from_body(body, sig)


class OperatorKey:
    """An operator's (or a controller's) signing key plus its certificate."""

    def __init__(self, signing_key: SigningKey, certificate: OperatorCertificate) -> None:
        if bytes(signing_key.verify_key) != certificate.public_key:
            raise TrustError(
                "certificate was issued for another key",
                code=ErrorCode.KEY_MALFORMED,
                details={"key_id": certificate.key_id},
            )
        self.signing_key = signing_key
        self.certificate = certificate

    def __repr__(self) -> str:
        return f"OperatorKey(key_id={self.certificate.key_id!r}, roles={self.certificate.roles})"

    @property
    def key_id(self) -> str:
        return self.certificate.key_id

    @classmethod
    def load(cls, key_path: Path, cert_path: Path) -> OperatorKey:
        """Load ``operator.key`` (0600) and its certificate token file."""
        cert_path = Path(cert_path)
        try:
            token = cert_path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise TrustError(
                f"cannot read certificate {cert_path}: {exc}",
                code=ErrorCode.KEY_MISSING,
                details={"path": str(cert_path)},
            ) from None
        return cls(keys.load_signing_key(key_path), OperatorCertificate.from_token(token))
