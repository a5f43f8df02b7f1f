"""Administrators of the fleet service: passwords (argon2id), a second factor (TOTP, RFC 6238),
sessions and API tokens, roles as in the trust model (docs/trust.md): viewer < operator < admin.

Session and API tokens are random 32-byte values; the database keeps only their SHA-256, so a
copy of the database signs nobody in. Each session has its own CSRF token, required on every
form and on every state-changing API call made with the session cookie.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ..errors import ApplianceError
from ..protocol.codes import ErrorCode
from .db import FleetDB

ROLES = ("viewer", "operator", "admin")
SESSION_S = 8 * 3600
_hasher = PasswordHasher()


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    csrf: str | None  # None for API tokens (no cookie, so no CSRF)
    via: str  # "session" or "token"

    def can(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_user(db: FleetDB, name: str, role: str, password: str) -> str:
    """Create or reset an administrator; returns the TOTP secret to enrol in an authenticator."""
    if role not in ROLES:
        raise ApplianceError(
            f"role: {role!r} is not one of {', '.join(ROLES)}", code=ErrorCode.USAGE
        )
    if not name or len(name) > 64:
        raise ApplianceError("name: 1-64 characters", code=ErrorCode.USAGE)
    if len(password) < 12:
        raise ApplianceError("password: at least 12 characters", code=ErrorCode.USAGE)
    secret = pyotp.random_base32()
    db.add_user(name, role, _hasher.hash(password), secret)
    return secret


def issue_token(db: FleetDB, name: str) -> str:
    if db.user(name) is None:
        raise ApplianceError(f"user: no administrator {name!r}", code=ErrorCode.USAGE)
    token = "fst_" + secrets.token_urlsafe(32)
    db.add_token(token_hash(token), name)
    return token


def check_login(db: FleetDB, name: str, password: str, code: str) -> str | None:
    """The role if the password and the current TOTP code are right, else None (which of the
    two failed is not told)."""
    user = db.user(name)
    if user is None:
        _hasher.hash(password)  # same cost whether or not the name exists
        return None
    try:
        _hasher.verify(user["password_hash"], password)
    except (VerificationError, InvalidHashError):
        return None
    if not pyotp.TOTP(user["totp_secret"]).verify(code.strip(), valid_window=1):
        return None
    return str(user["role"])


def open_session(db: FleetDB, name: str) -> tuple[str, str]:
    """(session token for the cookie, its CSRF token)."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    db.add_session(token_hash(token), name, csrf, time.time() + SESSION_S)
    return token, csrf


def from_session(db: FleetDB, token: str | None) -> Principal | None:
    if not token:
        return None
    row = db.session(token_hash(token))
    if row is None:
        return None
    return Principal(row["user_name"], row["role"], row["csrf"], "session")


def from_bearer(db: FleetDB, header: str | None) -> Principal | None:
    if not header or not header.lower().startswith("bearer "):
        return None
    row = db.token_user(token_hash(header[7:].strip()))
    if row is None:
        return None
    return Principal(row["name"], row["role"], None, "token")
