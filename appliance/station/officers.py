"""Officers' credentials (``station.officers``, delivered in the fleet's signed configuration).

A credential is a salted scrypt hash of a password or PIN (RFC 7914; Python's
``hashlib.scrypt``), checked offline until the entry's ``expires`` time. No secret is stored:
``hash_secret`` is what the fleet's tooling runs to make an entry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..capabilities.finger import ReferenceTemplate
from ..config import OfficerEntry
from ..errors import ApplianceError
from ..protocol.codes import ErrorCode

# RFC 7914 section 2: N = 2^14, r = 8, p = 1 is the interactive-login parameter set (16 MiB).
DEFAULT_N = 1 << 14
DEFAULT_R = 8
DEFAULT_P = 1


class OfficerRefused(ApplianceError):
    """A sign-in or an approval with an unknown officer, a wrong secret or an expired entry."""

    code = ErrorCode.OFFICER_REFUSED


@dataclass(frozen=True)
class Officer:
    id: str
    name: str
    supervisor: bool

    def public(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "supervisor": self.supervisor}


def hash_secret(secret: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64) of ``secret`` with a fresh 16-byte salt."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


def check_secret(encoded: str, secret: str) -> bool:
    _alg, n, r, p, salt, digest = encoded.split("$")
    want = base64.b64decode(digest)
    got = hashlib.scrypt(
        secret.encode(),
        salt=base64.b64decode(salt),
        n=int(n),
        r=int(r),
        p=int(p),
        maxmem=256 * 1024 * 1024,
        dklen=len(want),
    )
    return hmac.compare_digest(got, want)


def authenticate(
    entries: Sequence[OfficerEntry],
    officer_id: str,
    secret: str,
    *,
    supervisor: bool = False,
    now: float | None = None,
) -> Officer:
    """The officer ``officer_id`` if ``secret`` matches an unexpired entry (and the entry may
    approve exceptions when ``supervisor``). Raises :class:`OfficerRefused` naming the field."""
    now = time.time() if now is None else now
    entry = next((e for e in entries if e.id == officer_id), None)
    if entry is None or not check_secret(entry.secret_hash, secret):
        raise OfficerRefused("officer id or secret not recognised", details={"field": "secret"})
    if entry.expires <= now:
        raise OfficerRefused(
            f"officer {officer_id}'s credential expired; the fleet must renew it",
            code=ErrorCode.OFFICER_EXPIRED,
            details={"field": "officer_id"},
        )
    if supervisor and not entry.supervisor:
        raise OfficerRefused(
            f"officer {officer_id} may not approve exceptions (not a supervisor)",
            code=ErrorCode.SUPERVISOR_REQUIRED,
            details={"field": "officer_id"},
        )
    return Officer(entry.id, entry.name, entry.supervisor)


def officer_templates(entries: Sequence[OfficerEntry], officer_id: str) -> list[ReferenceTemplate]:
    """The officer's finger templates as references a citizen's finger must not match (fresh
    copies: the caller wipes them after the capture)."""
    entry = next((e for e in entries if e.id == officer_id), None)
    if entry is None:
        return []
    return [
        ReferenceTemplate(bytearray(base64.b64decode(t)), owner="officer") for t in entry.templates
    ]
