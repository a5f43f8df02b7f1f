"""Signed command envelopes: the fleet-side builder and the device-side verifier.

Wire form (one MQTT payload, UTF-8 JSON object)::

    {"typ": "appliance.command.v1",
     "cert": "<operator certificate token, see certs.py>",
     "body": "<base64 of the exact body bytes>",
     "sig":  "<base64 Ed25519 signature of 'appliance/command/v1' 0x00 body>"}

Body (the exact bytes that were signed, a JSON object)::

    {"command": "enroll.start", "payload": "<base64 of the exact payload bytes>",
     "target": "kiosk-001" | "group:hanoi", "issued_at": 1800000000, "expires_at": 1800000060,
     "nonce": "<base64 of 16 random bytes>", "counter": 17, "issuer": "<certificate key id>"}

The payload travels as opaque bytes: the device hands the handler exactly what the operator
signed, so no JSON canonicalisation is ever needed.

Verification order: :meth:`CommandVerifier._check` is a pipeline of small named checks, each
refusing with one precise code (see :data:`ERROR_CODES`):

1. ``_parse``: size and JSON shape (``malformed_envelope``);
2. ``_require_signature``: presence of a signature (``unsigned``);
3. ``_certificate_chain``: certificate chain and validity (``untrusted_issuer``;
   ``cert_expired``; ``cert_revoked``);
4. ``_signature``: envelope signature under the certificate's key (``bad_signature``);
5. ``_body``: body fields (``malformed_envelope``);
6. ``_freshness``: time window (``expired``, ``not_yet_valid``);
7. ``_target_and_scope``: target and the certificate's scope (``wrong_target``);
8. ``_role``: command and role (``unknown_command``: not in the role table, i.e. not registered;
   ``forbidden_role``), then ``_payload_names_command`` (``malformed_envelope``);
9. ``_replay``, last: replay (``replayed``). The replay state is written only for an envelope
   that passed every other check, so a forged message can never burn an issuer's counter.

Re-delivery: with a ``known_request`` hook (the daemon's command store), an authenticated
envelope (signature, chain, target, role) whose request id already ran under the same command
is accepted as a *repeat* (code ``repeat``) before the replay check and without touching the
replay state: the dispatcher answers it with the stored first reply and never runs it again.
This holds for an envelope that has expired since (a broker re-delivery after a long outage):
the command ran while the envelope was valid, and ``expired`` would wrongly tell the
controller it did not.

Clock policy (a kiosk may boot without a working real-time clock):

* The wall clock is *synced* when it reads at or after ``ClockPolicy.sane_after`` (a date before
  this software was released). Before that the clock is *unsynced*.
* The verifier keeps a *time floor*: the newest ``issued_at`` of any command it accepted,
  persisted in SQLite, and never lower than ``sane_after``. The effective time is
  ``max(wall clock, floor)``: a clock that was reset cannot make an old command look fresh.
* ``expired`` is judged against the effective time plus ``skew_s`` in both states.
* ``not_yet_valid`` is judged only when the clock is synced: with an unset clock every real
  command looks like it comes from the future, and refusing them would leave a clock-less kiosk
  unmanageable. Replay protection (nonce and counter) does not depend on the clock at all.
* Every envelope's lifetime (``expires_at - issued_at``) must be at most ``max_lifetime_s``,
  which bounds what an unsynced kiosk can be made to accept.

The decision (accepted or not) is returned as a :class:`TrustDecision` the daemon writes to its
audit log; :meth:`TrustDecision.raise_if_refused` turns a refusal into a :class:`TrustError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from ..errors import TrustError
from ..protocol.codes import ErrorCode
from .certs import (
    ALL_DEVICES,
    NAME_RE,
    OperatorCertificate,
    OperatorKey,
    check_validity,
    verify_certificate,
)
from .keys import (
    CTX_COMMAND,
    b64decode,
    b64encode,
    load_json,
    sign_detached,
    verify_detached,
)

log = logging.getLogger(__name__)

ENVELOPE_TYPE = "appliance.command.v1"
GROUP_PREFIX = "group:"
COMMAND_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
NONCE_BYTES = 16
CERT_CACHE_SIZE = 64
#: ``CommandVerifier.check``'s ``decoded`` when the caller did not decode the message.
_NOT_DECODED: Any = object()
#: Expired nonces are pruned on the first acceptance and then every this many acceptances.
PRUNE_EVERY = 256

#: Every refusal code the verifier produces (plus ``store_error`` if SQLite fails).
ERROR_CODES = (
    ErrorCode.UNSIGNED,
    ErrorCode.BAD_SIGNATURE,
    ErrorCode.UNTRUSTED_ISSUER,
    ErrorCode.CERT_EXPIRED,
    ErrorCode.CERT_REVOKED,
    ErrorCode.EXPIRED,
    ErrorCode.NOT_YET_VALID,
    ErrorCode.WRONG_TARGET,
    ErrorCode.UNKNOWN_COMMAND,
    ErrorCode.FORBIDDEN_ROLE,
    ErrorCode.REPLAYED,
    ErrorCode.MALFORMED_ENVELOPE,
)

#: DDL for the replay state: the trust layer's own part of the daemon's store, created by
#: :func:`ensure_replay_schema` (idempotent) when the daemon binds the verifier to its store.
TRUST_SCHEMA_SQL: list[str] = [
    """CREATE TABLE IF NOT EXISTS trust_issuer_state (
        issuer TEXT PRIMARY KEY,          -- certificate key id
        last_counter INTEGER NOT NULL,    -- highest counter accepted from this issuer
        last_issued_at INTEGER NOT NULL,  -- newest issued_at accepted (feeds the time floor)
        updated_at REAL NOT NULL          -- device wall clock when last updated
    )""",
    """CREATE TABLE IF NOT EXISTS trust_nonce (
        nonce TEXT PRIMARY KEY,           -- base64 nonce of an accepted envelope
        issuer TEXT NOT NULL,
        expires_at INTEGER NOT NULL       -- pruned once the envelope can no longer verify
    )""",
    "CREATE INDEX IF NOT EXISTS trust_nonce_expires ON trust_nonce (expires_at)",
]

RoleTable = Mapping[str, str | Collection[str]]


def ensure_replay_schema(
    conn: sqlite3.Connection, lock: AbstractContextManager[Any] | threading.Lock
) -> None:
    """Create the replay state's tables on ``conn`` if they are missing (under ``lock``).

    The store knows no feature (docs/architecture.md, "Borders"): each feature creates its own
    tables on the connection it is given. Every statement is ``IF NOT EXISTS``, so a store
    made by an earlier version (whose schema step 2 created them) is left as it is.
    """
    with lock:
        for statement in TRUST_SCHEMA_SQL:
            conn.execute(statement)


@dataclass(frozen=True)
class ClockPolicy:
    """How the verifier judges time; see the module docstring for the policy."""

    #: Tolerated clock difference between controller and kiosk, seconds.
    skew_s: float = 300.0
    #: Longest accepted envelope lifetime (expires_at - issued_at), seconds.
    max_lifetime_s: int = 3600
    #: A wall clock earlier than this (Unix seconds; 2026-01-01T00:00Z) is treated as unset.
    sane_after: int = 1_767_225_600


@dataclass(frozen=True)
class TrustDecision:
    """The outcome of verifying one message: data for the audit log and for dispatch."""

    accepted: bool
    #: ``ok``, ``unsigned_allowed``, ``repeat`` (accepted: a re-delivery of a request id that
    #: already ran, to be answered from the command store) or one of :data:`ERROR_CODES` /
    #: ``store_error``.
    code: str
    reason: str
    signed: bool = False
    command: str | None = None
    #: The exact payload bytes (only on acceptance).
    payload: bytes | None = None
    issuer: str | None = None
    issuer_name: str | None = None
    roles: tuple[str, ...] = ()
    target: str | None = None
    counter: int | None = None
    nonce: str | None = None
    issued_at: int | None = None
    expires_at: int | None = None
    #: ``synced`` or ``unsynced`` (see the clock policy).
    clock: str = "synced"
    effective_now: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_audit(self) -> dict[str, Any]:
        """A JSON-able audit record: no payload bytes, only their length and SHA-256."""
        rec: dict[str, Any] = {
            "accepted": self.accepted,
            "code": self.code,
            "reason": self.reason,
            "signed": self.signed,
            "command": self.command,
            "issuer": self.issuer,
            "issuer_name": self.issuer_name,
            "roles": list(self.roles),
            "target": self.target,
            "counter": self.counter,
            "nonce": self.nonce,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "clock": self.clock,
            "effective_now": self.effective_now,
            "details": dict(self.details),
        }
        if self.payload is not None:
            rec["payload_len"] = len(self.payload)
            rec["payload_sha256"] = hashlib.sha256(self.payload).hexdigest()
        return rec

    def error(self) -> TrustError | None:
        if self.accepted:
            return None
        return TrustError(self.reason, code=self.code, details=self.to_audit())

    def raise_if_refused(self) -> None:
        err = self.error()
        if err is not None:
            raise err


class _Refused(Exception):
    """Internal control flow: carries a refusal to :meth:`CommandVerifier.check`."""

    def __init__(self, code: str, reason: str, **details: Any) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.details = details


# --- fleet side ------------------------------------------------------------------------------


class MonotonicCounter:
    """Per-issuer counter for a builder: ``max(previous + 1, microseconds since the epoch)``.

    Time-derived so a restarted controller keeps counting upwards without stored state (as long
    as its clock does not step back more than the gap it leaves); strictly increasing within a
    process. Give each controller instance its own operator key: two processes sharing one key
    can deliver counters out of order, and the device refuses the lower one as ``replayed``.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._last = 0
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self._last = max(self._last + 1, int(self._clock() * 1_000_000))
            return self._last


def validate_target(target: str) -> str:
    """``device-id`` or ``group:NAME``; raises ``TrustError(code="invalid_name")``."""
    name = target[len(GROUP_PREFIX) :] if target.startswith(GROUP_PREFIX) else target
    if not NAME_RE.match(name):
        raise TrustError(
            f"invalid target {target!r}: a device id or 'group:NAME'",
            code=ErrorCode.INVALID_NAME,
            details={"target": target},
        )
    return target


class EnvelopeBuilder:
    """Signs commands for devices with an operator key (fleet side)."""

    def __init__(
        self,
        key: OperatorKey,
        *,
        counter: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.time,
        lifetime_s: int = 120,
    ) -> None:
        self.key = key
        self._cert_token = key.certificate.to_token()
        self._clock = clock
        self._counter = counter or MonotonicCounter(clock)
        self.lifetime_s = lifetime_s

    def build(
        self,
        command: str,
        payload: bytes,
        target: str,
        *,
        lifetime_s: int | None = None,
        issued_at: int | None = None,
        nonce: bytes | None = None,
        counter: int | None = None,
    ) -> bytes:
        """Return the envelope bytes to publish. Overrides exist for tests and replays."""
        if not COMMAND_RE.match(command):
            raise TrustError(f"invalid command name {command!r}", code=ErrorCode.INVALID_NAME)
        validate_target(target)
        issued = int(self._clock()) if issued_at is None else int(issued_at)
        life = self.lifetime_s if lifetime_s is None else int(lifetime_s)
        body_obj = {
            "command": command,
            "payload": b64encode(bytes(payload)),
            "target": target,
            "issued_at": issued,
            "expires_at": issued + life,
            "nonce": b64encode(os.urandom(NONCE_BYTES) if nonce is None else nonce),
            "counter": self._counter() if counter is None else int(counter),
            "issuer": self.key.key_id,
        }
        body = json.dumps(body_obj, separators=(",", ":")).encode("utf-8")
        sig = sign_detached(self.key.signing_key, CTX_COMMAND, body)
        env = {
            "typ": ENVELOPE_TYPE,
            "cert": self._cert_token,
            "body": b64encode(body),
            "sig": b64encode(sig),
        }
        return json.dumps(env, separators=(",", ":")).encode("utf-8")


# --- device side -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Body:
    """The signed body's fields, each of its type (authentic once the signature verified)."""

    command: str
    payload: bytes
    target: str
    issued_at: int
    expires_at: int
    counter: int
    nonce: str


def _body_int(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value >= 2**63:
        raise _Refused(
            ErrorCode.MALFORMED_ENVELOPE, f"body field {name!r} must be an integer", field=name
        )
    return value


def _body_str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise _Refused(
            ErrorCode.MALFORMED_ENVELOPE, f"body field {name!r} must be a string", field=name
        )
    return value


class CommandVerifier:
    """Device-side verification of signed command envelopes, with replay state in SQLite.

    ``conn`` is the daemon's connection (the tables of :data:`TRUST_SCHEMA_SQL` must exist:
    :func:`ensure_replay_schema`; without them every check is ``store_error``) and ``lock`` the
    lock that serialises its use across threads.
    ``role_table`` maps a command name to the role (or collection of roles, any of which
    suffices) it requires; a command missing from the table is refused (``unknown_command``,
    after the envelope is authenticated): fail closed. Roles are not hierarchical: an admin
    who should also run operator commands carries both roles.
    """

    def __init__(
        self,
        *,
        roots: Sequence[bytes],
        device_id: str,
        role_table: RoleTable,
        conn: sqlite3.Connection,
        lock: AbstractContextManager[Any] | threading.Lock,
        groups: Iterable[str] = (),
        policy: ClockPolicy | None = None,
        clock: Callable[[], float] = time.time,
        allow_unsigned: bool = False,
        max_message_bytes: int = 256 * 1024,
        revoked: Iterable[str] = (),
    ) -> None:
        if not roots:
            raise TrustError("no trusted root key configured", code=ErrorCode.UNTRUSTED_ISSUER)
        self.roots = list(roots)
        self.device_id = device_id
        self.groups: frozenset[str] = frozenset(groups)
        self.revoked: frozenset[str] = frozenset(revoked)
        self.role_table = role_table
        self.policy = policy or ClockPolicy()
        self.allow_unsigned = allow_unsigned
        self.max_message_bytes = max_message_bytes
        self._conn = conn
        self._lock = lock
        self._clock = clock
        self._cert_cache: dict[str, OperatorCertificate] = {}
        self._floor: int | None = None
        self._accepts_since_prune = PRUNE_EVERY
        self._cache_lock = threading.Lock()
        if allow_unsigned:
            log.warning("unsigned commands are ALLOWED (local development setting)")

    def set_groups(self, groups: Iterable[str]) -> None:
        """Update the device's group membership (after a configuration change)."""
        self.groups = frozenset(groups)

    def set_revoked(self, key_ids: Iterable[str]) -> None:
        """Replace the list of revoked certificate key ids (from a signed configuration)."""
        self.revoked = frozenset(key_ids)

    # -- time ---------------------------------------------------------------------------------

    def time_floor(self) -> int:
        """The time floor: newest accepted ``issued_at``, at least ``sane_after``.

        Read from SQLite once, then kept in memory and raised on every acceptance (this
        verifier is the only writer of its table).
        """
        if self._floor is None:
            with self._lock:
                row = self._conn.execute(
                    "SELECT max(last_issued_at) FROM trust_issuer_state"
                ).fetchone()
            stored = row[0] if row and row[0] is not None else 0
            self._floor = max(int(stored), self.policy.sane_after)
        return self._floor

    # -- the check ----------------------------------------------------------------------------

    def check(
        self,
        message: bytes,
        *,
        payload_command: Callable[[bytes], str | None] | None = None,
        known_request: Callable[[bytes, str], bool] | None = None,
        decoded: Any = _NOT_DECODED,
    ) -> TrustDecision:
        """Verify one received message and return the decision (never raises on bad input).

        ``decoded``, if given, is ``message`` already decoded as JSON by the caller (who parses
        a command once on its way in, docs/performance.md "Hot paths"); any value that is not
        a JSON object is refused as ``malformed_envelope`` as if decoded here.

        ``payload_command``, if given, extracts the command name the payload itself carries;
        a payload naming another command than the signed envelope is ``malformed_envelope``.

        ``known_request(payload, command)``, if given, says whether the payload's request id
        already ran as ``command`` (the daemon's command store). It is consulted only once the
        certificate chain and the envelope signature verified (for an expired envelope at the
        time check, to keep the order of the codes), and its answer counts only after target
        and role passed too: a known one is then accepted as ``repeat`` without a replay check,
        even after it expired (see the module docstring).
        """
        now = self._clock()
        synced = now >= self.policy.sane_after
        try:
            floor = self.time_floor()
        except sqlite3.Error as exc:
            log.error("trust store unreadable: %s", exc)
            return TrustDecision(False, ErrorCode.STORE_ERROR, f"replay store unreadable: {exc}")
        effective = max(now, float(floor))
        ctx: dict[str, Any] = {
            "clock": "synced" if synced else "unsynced",
            "effective_now": effective,
        }
        try:
            return self._check(
                message, effective, synced, ctx, payload_command, known_request, decoded
            )
        except _Refused as ref:
            log.info("command refused: %s (%s)", ref.code, ref.reason)
            return TrustDecision(
                accepted=False, code=ref.code, reason=ref.reason, details=ref.details, **ctx
            )

    def _check(
        self,
        message: bytes,
        now: float,
        synced: bool,
        ctx: dict[str, Any],
        payload_command: Callable[[bytes], str | None] | None,
        known_request: Callable[[bytes, str], bool] | None,
        decoded: Any = _NOT_DECODED,
    ) -> TrustDecision:
        """The pipeline: each step either passes what it learnt on or refuses with its code
        (module docstring, "Verification order"); the replay state is written last."""
        message, env = self._parse(message, decoded)
        unsigned = self._require_signature(env, message, ctx)
        if unsigned is not None:
            return unsigned
        cert = self._certificate_chain(env, now, synced, ctx)
        body = self._body(self._signature(env, cert), cert, ctx)
        known = self._freshness(body, now, synced, known_request)
        self._target_and_scope(body, cert)
        self._role(body, cert)
        self._payload_names_command(body, payload_command)
        return self._replay(body, cert, known, known_request, now, ctx)

    # -- the checks, in order -------------------------------------------------------------------

    def _parse(self, message: object, decoded: Any = _NOT_DECODED) -> tuple[bytes, dict[str, Any]]:
        """Size and JSON shape: a JSON object of at most ``max_message_bytes`` (decoded here
        unless the caller passed it ``decoded``)."""
        if not isinstance(message, bytes | bytearray | memoryview):
            raise _Refused(ErrorCode.MALFORMED_ENVELOPE, "message must be bytes")
        message = bytes(message)
        if len(message) > self.max_message_bytes:
            raise _Refused(
                ErrorCode.MALFORMED_ENVELOPE,
                f"message of {len(message)} bytes exceeds {self.max_message_bytes}",
            )
        if decoded is not _NOT_DECODED:
            env = decoded
        else:
            try:
                env = load_json(message)
            except (UnicodeDecodeError, ValueError):
                raise _Refused(ErrorCode.MALFORMED_ENVELOPE, "message is not UTF-8 JSON") from None
        if not isinstance(env, dict):
            raise _Refused(ErrorCode.MALFORMED_ENVELOPE, "message is not a JSON object")
        return message, env

    def _require_signature(
        self, env: dict[str, Any], message: bytes, ctx: dict[str, Any]
    ) -> TrustDecision | None:
        """A signed envelope goes on (None); a plain message is ``unsigned``, or accepted as
        ``unsigned_allowed`` under the development switch."""
        if env.get("typ") != ENVELOPE_TYPE:
            if "sig" in env:
                raise _Refused(
                    ErrorCode.MALFORMED_ENVELOPE, f"envelope typ must be {ENVELOPE_TYPE!r}"
                )
            if self.allow_unsigned:
                log.warning("accepting an UNSIGNED command (allow_unsigned is set)")
                return TrustDecision(
                    True, "unsigned_allowed", "unsigned command allowed by configuration",
                    payload=message, **ctx,
                )  # fmt: skip
            raise _Refused(ErrorCode.UNSIGNED, "command is not signed")
        if not env.get("sig"):
            raise _Refused(ErrorCode.UNSIGNED, "envelope carries no signature")
        return None

    def _certificate_chain(
        self, env: dict[str, Any], now: float, synced: bool, ctx: dict[str, Any]
    ) -> OperatorCertificate:
        """Certificate chain and validity. A chain verified once is cached by its exact token
        text (the same operator sends many commands); its validity period is still checked on
        every use."""
        token = env.get("cert")
        cert = self._cert_cache.get(token) if isinstance(token, str) else None
        try:
            if cert is None:
                cert = self._verified_certificate(token, now, ctx)
            ctx.update(issuer=cert.key_id, issuer_name=cert.name, roles=cert.roles)
            check_validity(
                cert,
                now=now,
                skew_s=self.policy.skew_s,
                check_not_before=synced,
                revoked=self.revoked,
            )
        except TrustError as exc:
            raise _Refused(exc.code, exc.message, **exc.details) from None
        return cert

    def _verified_certificate(
        self, token: object, now: float, ctx: dict[str, Any]
    ) -> OperatorCertificate:
        """Parse a certificate token not seen before, verify its chain to a root, cache it."""
        try:
            cert = OperatorCertificate.from_token(token)
        except TrustError as exc:
            raise _Refused(
                ErrorCode.MALFORMED_ENVELOPE, f"certificate: {exc.message}", part="certificate"
            ) from None
        ctx.update(issuer=cert.key_id, issuer_name=cert.name, roles=cert.roles)
        verify_certificate(cert, self.roots, now=now, check_not_before=False)
        with self._cache_lock:
            if len(self._cert_cache) >= CERT_CACHE_SIZE:
                self._cert_cache.pop(next(iter(self._cert_cache)))
            self._cert_cache[str(token)] = cert
        return cert

    def _signature(self, env: dict[str, Any], cert: OperatorCertificate) -> bytes:
        """The envelope signature over the exact body bytes: the authentic body bytes."""
        body_bytes = self._b64(env.get("body"), "body")
        sig = self._b64(env.get("sig"), "sig")
        try:
            verify_detached(cert.public_key, CTX_COMMAND, body_bytes, sig)
        except TrustError:
            raise _Refused(ErrorCode.BAD_SIGNATURE, "envelope signature does not verify") from None
        return body_bytes

    def _body(self, body_bytes: bytes, cert: OperatorCertificate, ctx: dict[str, Any]) -> _Body:
        """The body fields (authentic from here on), each of its type."""
        try:
            body = load_json(body_bytes)
        except (UnicodeDecodeError, ValueError):
            raise _Refused(ErrorCode.MALFORMED_ENVELOPE, "envelope body is not JSON") from None
        if not isinstance(body, dict):
            raise _Refused(ErrorCode.MALFORMED_ENVELOPE, "envelope body is not a JSON object")
        if _body_str(body, "issuer") != cert.key_id:
            raise _Refused(ErrorCode.MALFORMED_ENVELOPE, "body issuer differs from the certificate")
        command = _body_str(body, "command")
        if not COMMAND_RE.match(command):
            raise _Refused(ErrorCode.MALFORMED_ENVELOPE, "invalid command name")
        fields = _Body(
            command=command,
            payload=self._b64(body.get("payload"), "payload"),
            target=_body_str(body, "target"),
            issued_at=_body_int(body, "issued_at"),
            expires_at=_body_int(body, "expires_at"),
            counter=_body_int(body, "counter"),
            nonce=_body_str(body, "nonce"),
        )
        if len(self._b64(fields.nonce, "nonce")) < 8:
            raise _Refused(ErrorCode.MALFORMED_ENVELOPE, "nonce shorter than 8 bytes")
        ctx.update(
            command=fields.command,
            target=fields.target,
            counter=fields.counter,
            nonce=fields.nonce,
            issued_at=fields.issued_at,
            expires_at=fields.expires_at,
            signed=True,
        )
        return fields

    def _freshness(
        self,
        body: _Body,
        now: float,
        synced: bool,
        known_request: Callable[[bytes, str], bool] | None,
    ) -> bool | None:
        """The time window (clock policy in the module docstring). Returns whether the request
        id already ran when an expired envelope made that the question (else None)."""
        lifetime = body.expires_at - body.issued_at
        if lifetime <= 0 or lifetime > self.policy.max_lifetime_s:
            raise _Refused(
                ErrorCode.MALFORMED_ENVELOPE,
                f"lifetime {lifetime}s outside 1..{self.policy.max_lifetime_s}s",
            )
        # A re-delivery of a command that already ran is answered from the command store even
        # once its envelope has expired; it must still pass every authentication step after.
        known: bool | None = None
        if now > body.expires_at + self.policy.skew_s:
            known = self._known(known_request, body.payload, body.command)
            if not known:
                raise _Refused(
                    ErrorCode.EXPIRED, "command expired", expired_for_s=now - body.expires_at
                )
        if synced and body.issued_at > now + self.policy.skew_s:
            raise _Refused(
                ErrorCode.NOT_YET_VALID,
                "command issued in the future",
                ahead_s=body.issued_at - now,
            )
        return known

    def _target_and_scope(self, body: _Body, cert: OperatorCertificate) -> None:
        """The command's target is this device (or one of its groups), and the issuer's
        certificate covers it."""
        target = body.target
        if target.startswith(GROUP_PREFIX):
            matches = target[len(GROUP_PREFIX) :] in self.groups
        else:
            matches = target == self.device_id
        if not matches:
            raise _Refused(
                ErrorCode.WRONG_TARGET, f"command is for {target!r}", device=self.device_id
            )
        if not cert.covers(self.device_id, self.groups):
            raise _Refused(
                ErrorCode.WRONG_TARGET,
                "issuer's certificate does not cover this device",
                device=self.device_id,
                cert_devices=list(cert.devices),
                cert_groups=list(cert.groups),
            )

    def _role(self, body: _Body, cert: OperatorCertificate) -> None:
        """The command exists here and the certificate carries a role it accepts. The role
        table is the command registry, so a command missing from it does not exist on this
        kiosk: said only to an authenticated sender."""
        command = body.command
        required = self.role_table.get(command)
        if required is None:
            raise _Refused(
                ErrorCode.UNKNOWN_COMMAND, f"unknown command {command!r}", command=command
            )
        allowed = {required} if isinstance(required, str) else set(required)
        if not allowed.intersection(cert.roles):
            raise _Refused(
                ErrorCode.FORBIDDEN_ROLE,
                f"command {command!r} needs role {sorted(allowed)}",
                required=sorted(allowed),
            )

    @staticmethod
    def _payload_names_command(
        body: _Body, payload_command: Callable[[bytes], str | None] | None
    ) -> None:
        """A payload that names its command names the signed one."""
        if payload_command is None:
            return
        try:
            named = payload_command(body.payload)
        except Exception as exc:  # a hook failing on bad bytes must not crash dispatch
            raise _Refused(ErrorCode.MALFORMED_ENVELOPE, f"payload unreadable: {exc}") from None
        if named is not None and named != body.command:
            raise _Refused(ErrorCode.MALFORMED_ENVELOPE, "payload names another command")

    def _replay(
        self,
        body: _Body,
        cert: OperatorCertificate,
        known: bool | None,
        known_request: Callable[[bytes, str], bool] | None,
        now: float,
        ctx: dict[str, Any],
    ) -> TrustDecision:
        """Last, a re-delivery of a request id that already ran is answered from the command
        store (no replay check, no replay state); anything else must be new: counter and
        nonce are checked and recorded, only now that everything else passed."""
        if known is None:
            known = self._known(known_request, body.payload, body.command)
        if known:
            log.info(
                "command re-delivered: %s from %s counter=%d", body.command, cert.key_id,
                body.counter,
            )  # fmt: skip
            return TrustDecision(
                True, "repeat", "request id already ran: answered from the command store",
                payload=body.payload, **ctx,
            )  # fmt: skip
        self._record(
            cert.key_id,
            counter=body.counter,
            nonce=body.nonce,
            issued_at=body.issued_at,
            expires_at=body.expires_at,
            now=now,
        )
        log.info(
            "command accepted: %s from %s counter=%d target=%s",
            body.command,
            cert.key_id,
            body.counter,
            body.target,
        )
        return TrustDecision(True, "ok", "verified", payload=body.payload, **ctx)

    @staticmethod
    def _known(hook: Callable[[bytes, str], bool] | None, payload: bytes, command: str) -> bool:
        if hook is None:
            return False
        try:
            return bool(hook(payload, command))
        except Exception as exc:  # fail closed: an unreadable store is not a licence to re-run
            log.error("command store lookup failed: %s", exc)
            raise _Refused(ErrorCode.STORE_ERROR, f"command store lookup failed: {exc}") from None

    @staticmethod
    def _b64(value: object, name: str) -> bytes:
        try:
            return b64decode(value, what=name)
        except TrustError as exc:
            raise _Refused(ErrorCode.MALFORMED_ENVELOPE, exc.message, field=name) from None

    def _record(
        self, issuer: str, *, counter: int, nonce: str, issued_at: int, expires_at: int, now: float
    ) -> None:
        """Check and record (issuer, counter, nonce) atomically under the caller's lock.

        The writes happen inside a SAVEPOINT: on a connection with no open transaction the
        RELEASE commits them at once; inside a caller's open transaction they commit with it.
        """
        with self._lock:
            conn = self._conn
            try:
                conn.execute("SAVEPOINT trust_replay")
                try:
                    # One statement checks and raises the counter: the UPDATE branch only runs
                    # when the new counter is above the stored one, so no change means replay.
                    cur = conn.execute(
                        "INSERT INTO trust_issuer_state"
                        " (issuer, last_counter, last_issued_at, updated_at)"
                        " VALUES (?, ?, ?, ?)"
                        " ON CONFLICT (issuer) DO UPDATE SET last_counter = excluded.last_counter,"
                        " last_issued_at = max(last_issued_at, excluded.last_issued_at),"
                        " updated_at = excluded.updated_at"
                        " WHERE excluded.last_counter > trust_issuer_state.last_counter",
                        (issuer, counter, issued_at, time.time()),
                    )
                    if cur.rowcount == 0:
                        row = conn.execute(
                            "SELECT last_counter FROM trust_issuer_state WHERE issuer = ?",
                            (issuer,),
                        ).fetchone()
                        raise _Refused(
                            ErrorCode.REPLAYED,
                            "counter not above the last accepted for this issuer",
                            last_counter=row[0] if row else None,
                        )
                    try:
                        conn.execute(
                            "INSERT INTO trust_nonce (nonce, issuer, expires_at) VALUES (?, ?, ?)",
                            (nonce, issuer, expires_at),
                        )
                    except sqlite3.IntegrityError:
                        raise _Refused(ErrorCode.REPLAYED, "nonce already seen") from None
                    self._accepts_since_prune += 1
                    if self._accepts_since_prune >= PRUNE_EVERY:
                        # A nonce is only needed while its envelope could still pass the
                        # expiry check; the counter covers everything older.
                        conn.execute(
                            "DELETE FROM trust_nonce WHERE expires_at < ?",
                            (int(now - self.policy.skew_s) - 1,),
                        )
                        self._accepts_since_prune = 0
                except BaseException:
                    conn.execute("ROLLBACK TO trust_replay")
                    conn.execute("RELEASE trust_replay")
                    raise
                conn.execute("RELEASE trust_replay")
            except sqlite3.Error as exc:
                log.error("trust store write failed: %s", exc)
                raise _Refused(ErrorCode.STORE_ERROR, f"replay store failed: {exc}") from None
            self._floor = max(self._floor or 0, issued_at, self.policy.sane_after)


def role_table_from_specs(specs: Iterable[Any]) -> dict[str, str]:
    """Build a role table from ``CommandRegistry.specs()`` (each has ``name`` and ``role``)."""
    return {spec.name: spec.role for spec in specs}


__all__ = [
    "ALL_DEVICES",
    "ENVELOPE_TYPE",
    "ERROR_CODES",
    "TRUST_SCHEMA_SQL",
    "ClockPolicy",
    "CommandVerifier",
    "EnvelopeBuilder",
    "MonotonicCounter",
    "TrustDecision",
    "ensure_replay_schema",
    "role_table_from_specs",
    "validate_target",
]
