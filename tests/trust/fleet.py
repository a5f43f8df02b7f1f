"""Test helpers: a small fleet (root, operator keys) and a device-side verifier on a real
SQLite file. Imported by the trust tests; not a conftest so nothing is implicit."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from nacl.signing import SigningKey

from appliance.trust.certs import FleetRoot, OperatorKey
from appliance.trust.envelope import TRUST_SCHEMA_SQL, ClockPolicy, CommandVerifier

NOW = 1_800_000_000  # 2027-01-15, after ClockPolicy.sane_after

ROLE_TABLE = {
    "enroll.start": "operator",
    "card.write": "operator",
    "config.set": "admin",
    "restart": "admin",
    "selftest": ("technician", "admin"),
}


@dataclass
class Clock:
    """The verifier's wall clock, set by the test (the kiosk's clock is an input)."""

    now: float = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class Fleet:
    root: FleetRoot
    tmp: Path
    clock: Clock = field(default_factory=Clock)

    def operator(
        self,
        roles: tuple[str, ...] = ("operator",),
        devices: tuple[str, ...] = ("kiosk-001",),
        groups: tuple[str, ...] = (),
        *,
        not_after: int = NOW + 86400,
        issued_at: int = NOW - 3600,
        root: FleetRoot | None = None,
    ) -> OperatorKey:
        sk = SigningKey.generate()
        cert = (root or self.root).issue(
            bytes(sk.verify_key),
            roles=roles,
            devices=devices,
            groups=groups,
            not_after=not_after,
            issued_at=issued_at,
            name="test operator",
        )
        return OperatorKey(sk, cert)


def live_key(root: FleetRoot, roles: tuple[str, ...], device: str) -> OperatorKey:
    """A fresh operator key and certificate valid now (wall clock) for an hour, for tests that
    talk to a real daemon (whose clock is the machine's)."""
    sk = SigningKey.generate()
    now = int(time.time())
    cert = root.issue(
        bytes(sk.verify_key),
        roles=roles,
        devices=(device,),
        not_after=now + 3600,
        issued_at=now - 60,
        name="test key",
    )
    return OperatorKey(sk, cert)


def open_db(path: Path, *, isolation_level: str | None = None) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=isolation_level, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    for stmt in TRUST_SCHEMA_SQL:
        conn.execute(stmt)
    if conn.in_transaction:
        conn.commit()
    return conn


def make_verifier(
    fleet: Fleet,
    conn: sqlite3.Connection,
    *,
    device_id: str = "kiosk-001",
    groups: tuple[str, ...] = ("hanoi",),
    allow_unsigned: bool = False,
    policy: ClockPolicy | None = None,
) -> CommandVerifier:
    return CommandVerifier(
        roots=[fleet.root.public_key],
        device_id=device_id,
        groups=groups,
        role_table=ROLE_TABLE,
        conn=conn,
        lock=threading.Lock(),
        policy=policy or ClockPolicy(skew_s=60, max_lifetime_s=3600),
        clock=fleet.clock,
        allow_unsigned=allow_unsigned,
    )
