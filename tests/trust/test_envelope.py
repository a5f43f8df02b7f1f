"""Signed command envelopes: every refusal code, replay state in a real SQLite file."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from appliance.errors import TrustError
from appliance.trust.certs import FleetRoot, OperatorKey
from appliance.trust.envelope import (
    ERROR_CODES,
    TRUST_SCHEMA_SQL,
    ClockPolicy,
    CommandVerifier,
    EnvelopeBuilder,
    MonotonicCounter,
    role_table_from_specs,
)
from appliance.trust.keys import b64decode, b64encode

from .fleet import NOW, Fleet, make_verifier, open_db

PAYLOAD = b'{"session": "s-1",  "slots": [1, 2]}'


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(FleetRoot.create(tmp_path / "root"), tmp_path)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = open_db(tmp_path / "state.db")
    yield c
    c.close()


@pytest.fixture
def verifier(fleet: Fleet, conn: sqlite3.Connection) -> CommandVerifier:
    return make_verifier(fleet, conn)


def _builder(op: OperatorKey, fleet: Fleet) -> EnvelopeBuilder:
    return EnvelopeBuilder(op, clock=fleet.clock, lifetime_s=120)


def _tamper(env: bytes, **changes: object) -> bytes:
    obj = json.loads(env)
    body = json.loads(b64decode(obj["body"], what="body"))
    body.update(changes)
    obj["body"] = b64encode(json.dumps(body).encode())
    return json.dumps(obj).encode()


def test_accepts_and_returns_exact_payload(fleet: Fleet, verifier: CommandVerifier) -> None:
    op = fleet.operator()
    env = _builder(op, fleet).build("enroll.start", PAYLOAD, "kiosk-001")
    d = verifier.check(env)
    assert d.accepted, d
    assert d.code == "ok"
    assert d.payload == PAYLOAD  # byte for byte, whitespace included
    assert d.command == "enroll.start"
    assert d.issuer == op.key_id
    assert d.roles == ("operator",)
    assert d.signed
    d.raise_if_refused()
    audit = d.to_audit()
    json.dumps(audit)  # JSON-able
    assert "payload" not in audit
    assert audit["payload_len"] == len(PAYLOAD)


def test_group_target_and_multi_role_table(fleet: Fleet, verifier: CommandVerifier) -> None:
    tech = fleet.operator(roles=("technician",), devices=(), groups=("hanoi",))
    d = verifier.check(_builder(tech, fleet).build("selftest", b"{}", "group:hanoi"))
    assert d.accepted, d
    admin = fleet.operator(roles=("admin",), devices=("*",))
    d = verifier.check(_builder(admin, fleet).build("selftest", b"{}", "kiosk-001"))
    assert d.accepted, d


def test_unsigned_refused_unless_allowed(fleet: Fleet, conn: sqlite3.Connection) -> None:
    plain = b'{"id": "c1", "cmd": "ping", "args": {}}'
    d = make_verifier(fleet, conn).check(plain)
    assert (d.accepted, d.code) == (False, "unsigned")
    with pytest.raises(TrustError) as err:
        d.raise_if_refused()
    assert err.value.code == "unsigned"
    d = make_verifier(fleet, conn, allow_unsigned=True).check(plain)
    assert (d.accepted, d.code, d.signed, d.payload) == (True, "unsigned_allowed", False, plain)


def test_envelope_without_signature_is_unsigned(fleet: Fleet, conn: sqlite3.Connection) -> None:
    env = json.loads(_builder(fleet.operator(), fleet).build("enroll.start", PAYLOAD, "kiosk-001"))
    del env["sig"]
    # Even the development setting does not accept a signed envelope stripped of its signature.
    d = make_verifier(fleet, conn, allow_unsigned=True).check(json.dumps(env).encode())
    assert d.code == "unsigned"


def test_forged_body_is_bad_signature(fleet: Fleet, verifier: CommandVerifier) -> None:
    env = _builder(fleet.operator(), fleet).build("enroll.start", PAYLOAD, "kiosk-001")
    forged = _tamper(env, payload=b64encode(b'{"session":"evil"}'))
    assert verifier.check(forged).code == "bad_signature"


def test_signature_by_other_key_under_valid_cert(fleet: Fleet, verifier: CommandVerifier) -> None:
    victim = fleet.operator(roles=("admin",), devices=("*",))
    attacker_key = SigningKey.generate()
    # The attacker copies the admin's certificate but signs with its own key.
    env = EnvelopeBuilder(fleet.operator(), clock=fleet.clock).build("restart", b"{}", "kiosk-001")
    obj = json.loads(env)
    obj["cert"] = victim.certificate.to_token()
    body = json.loads(b64decode(obj["body"], what="b"))
    body["issuer"] = victim.key_id
    raw = json.dumps(body).encode()
    from appliance.trust.keys import CTX_COMMAND, sign_detached

    obj["body"] = b64encode(raw)
    obj["sig"] = b64encode(sign_detached(attacker_key, CTX_COMMAND, raw))
    assert verifier.check(json.dumps(obj).encode()).code == "bad_signature"


def test_untrusted_root_and_widened_cert(fleet: Fleet, verifier: CommandVerifier) -> None:
    rogue = FleetRoot.create(fleet.tmp / "rogue")
    op = fleet.operator(roles=("admin",), root=rogue)
    d = verifier.check(_builder(op, fleet).build("restart", b"{}", "kiosk-001"))
    assert d.code == "untrusted_issuer"
    # An operator widening its own certificate's roles breaks the root's signature.
    op = fleet.operator(roles=("operator",))
    env = json.loads(_builder(op, fleet).build("restart", b"{}", "kiosk-001"))
    body_b64, sig_b64 = env["cert"].split(".")
    cert_body = json.loads(b64decode(body_b64, what="c"))
    cert_body["roles"] = ["admin", "operator"]
    env["cert"] = b64encode(json.dumps(cert_body).encode()) + "." + sig_b64
    assert verifier.check(json.dumps(env).encode()).code == "untrusted_issuer"


def test_cert_expired(fleet: Fleet, verifier: CommandVerifier) -> None:
    op = fleet.operator(not_after=NOW - 3600, issued_at=NOW - 7200)
    d = verifier.check(_builder(op, fleet).build("enroll.start", PAYLOAD, "kiosk-001"))
    assert d.code == "cert_expired"


def test_expired_and_not_yet_valid(fleet: Fleet, verifier: CommandVerifier) -> None:
    b = _builder(fleet.operator(), fleet)
    # Issued 10 minutes ago with a 2 minute lifetime: beyond the 60 s skew.
    d = verifier.check(b.build("enroll.start", PAYLOAD, "kiosk-001", issued_at=NOW - 600))
    assert d.code == "expired"
    # Within the skew window it still passes.
    d = verifier.check(b.build("enroll.start", PAYLOAD, "kiosk-001", issued_at=NOW - 170))
    assert d.accepted, d
    d = verifier.check(b.build("enroll.start", PAYLOAD, "kiosk-001", issued_at=NOW + 600))
    assert d.code == "not_yet_valid"


def test_lifetime_above_policy_is_malformed(fleet: Fleet, verifier: CommandVerifier) -> None:
    b = _builder(fleet.operator(), fleet)
    d = verifier.check(b.build("enroll.start", PAYLOAD, "kiosk-001", lifetime_s=7200))
    assert d.code == "malformed_envelope"
    d = verifier.check(b.build("enroll.start", PAYLOAD, "kiosk-001", lifetime_s=0))
    assert d.code == "malformed_envelope"


def test_unsynced_clock_policy(fleet: Fleet, verifier: CommandVerifier) -> None:
    """A kiosk booted with its clock at 1970 accepts fresh commands but never stale ones."""
    b = _builder(fleet.operator(), fleet)
    fresh = b.build("enroll.start", PAYLOAD, "kiosk-001")
    fleet.clock.now = 0.0  # no RTC
    d = verifier.check(fresh)
    assert d.accepted, d
    assert d.clock == "unsynced"
    # The accepted command raised the persisted time floor to NOW: an envelope that expired
    # before that is refused even though the wall clock says 1970.
    stale = b.build("enroll.start", PAYLOAD, "kiosk-001", issued_at=NOW - 600)
    assert verifier.check(stale).code == "expired"
    assert verifier.time_floor() == NOW
    # Without any floor beyond sane_after, an envelope from before sane_after is expired too.
    old = b.build("enroll.start", PAYLOAD, "kiosk-001", issued_at=ClockPolicy().sane_after - 600)
    assert verifier.check(old).code == "expired"


def test_time_floor_survives_restart(fleet: Fleet, tmp_path: Path) -> None:
    b = _builder(fleet.operator(), fleet)
    c1 = open_db(tmp_path / "floor.db")
    assert make_verifier(fleet, c1).check(b.build("enroll.start", PAYLOAD, "kiosk-001")).accepted
    c1.close()
    fleet.clock.now = 0.0
    c2 = open_db(tmp_path / "floor.db")
    v2 = make_verifier(fleet, c2)
    assert v2.time_floor() == NOW
    stale = b.build("enroll.start", PAYLOAD, "kiosk-001", issued_at=NOW - 600)
    assert v2.check(stale).code == "expired"
    c2.close()


def test_wrong_target(fleet: Fleet, verifier: CommandVerifier) -> None:
    b = _builder(fleet.operator(devices=("kiosk-001", "kiosk-002")), fleet)
    assert verifier.check(b.build("enroll.start", PAYLOAD, "kiosk-002")).code == "wrong_target"
    assert verifier.check(b.build("enroll.start", PAYLOAD, "group:hue")).code == "wrong_target"
    # Right target, but the issuer's certificate covers other devices only.
    b2 = _builder(fleet.operator(devices=("kiosk-777",)), fleet)
    d = verifier.check(b2.build("enroll.start", PAYLOAD, "kiosk-001"))
    assert d.code == "wrong_target"
    assert "certificate" in d.reason


def test_forbidden_role(fleet: Fleet, verifier: CommandVerifier) -> None:
    b = _builder(fleet.operator(roles=("operator",)), fleet)
    d = verifier.check(b.build("config.set", b"{}", "kiosk-001"))
    assert d.code == "forbidden_role"
    assert d.details["required"] == ["admin"]
    # Unknown to the role table (the registry): refused as unknown_command, even for an admin,
    # and only once the envelope is authenticated; its counter is not burnt.
    admin = _builder(fleet.operator(roles=("admin",)), fleet)
    d = verifier.check(admin.build("format.disk", b"{}", "kiosk-001", counter=99))
    assert (d.accepted, d.code) == (False, "unknown_command")
    assert verifier.check(admin.build("config.set", b"{}", "kiosk-001", counter=98)).accepted
    stranger = FleetRoot.create(fleet.tmp / "stranger")
    rogue = _builder(fleet.operator(roles=("admin",), root=stranger), fleet)
    assert verifier.check(rogue.build("format.disk", b"{}", "kiosk-001")).code == (
        "untrusted_issuer"
    )


def test_known_request_is_a_repeat_without_replay_check(
    fleet: Fleet, verifier: CommandVerifier
) -> None:
    """A re-delivered envelope whose request id already ran is accepted as ``repeat`` (answered
    from the command store by the dispatcher), also after it expired; never without
    authentication, and never for another command name."""
    ran: dict[str, str] = {}

    def known(payload: bytes, command: str) -> bool:
        return ran.get(json.loads(payload)["id"]) == command

    b = _builder(fleet.operator(roles=("operator",)), fleet)
    env = b.build("enroll.start", b'{"id": "k1", "cmd": "enroll.start"}', "kiosk-001")
    assert verifier.check(env, known_request=known).code == "ok"
    ran["k1"] = "enroll.start"
    again = verifier.check(env, known_request=known)
    assert (again.accepted, again.code) == (True, "repeat")
    assert again.payload == b'{"id": "k1", "cmd": "enroll.start"}'
    assert verifier.check(env).code == "replayed"  # without the hook: the replay check
    # Expired since: still the stored reply (the command did run while it was valid).
    fleet.clock.now = NOW + 3600
    assert verifier.check(env, known_request=known).code == "repeat"
    assert verifier.check(env).code == "expired"
    fleet.clock.now = NOW
    # Authentication first: a forged, mis-targeted or wrong-role envelope with a known id is
    # refused with its own code.
    forged = _tamper(env, counter=10**12)
    assert verifier.check(forged, known_request=known).code == "bad_signature"
    other = _builder(fleet.operator(roles=("operator",), devices=("kiosk-002",)), fleet)
    wrong = other.build("enroll.start", b'{"id": "k1", "cmd": "enroll.start"}', "kiosk-002")
    assert verifier.check(wrong, known_request=known).code == "wrong_target"
    tech = _builder(fleet.operator(roles=("technician",)), fleet)
    denied = tech.build("enroll.start", b'{"id": "k1", "cmd": "enroll.start"}', "kiosk-001")
    assert verifier.check(denied, known_request=known).code == "forbidden_role"
    # The same id under another command is not a repeat: the replay check applies as usual
    # (and the dispatcher then refuses the reused id).
    ran["k2"] = "enroll.cancel"
    env2 = b.build("enroll.start", b'{"id": "k2", "cmd": "enroll.start"}', "kiosk-001")
    assert verifier.check(env2, known_request=known).code == "ok"
    assert verifier.check(env2, known_request=known).code == "replayed"


def test_known_request_hook_failure_refuses(fleet: Fleet, verifier: CommandVerifier) -> None:
    def broken(_payload: bytes, _command: str) -> bool:
        raise sqlite3.OperationalError("disk I/O error")

    b = _builder(fleet.operator(), fleet)
    env = b.build("enroll.start", b'{"id": "k9", "cmd": "enroll.start"}', "kiosk-001")
    d = verifier.check(env, known_request=broken)
    assert (d.accepted, d.code) == (False, "store_error")
    assert verifier.check(env).accepted  # nothing was recorded by the failed check


def test_replay_same_envelope_and_counters(fleet: Fleet, verifier: CommandVerifier) -> None:
    b = _builder(fleet.operator(), fleet)
    env = b.build("enroll.start", PAYLOAD, "kiosk-001", counter=10)
    assert verifier.check(env).accepted
    assert verifier.check(env).code == "replayed"
    # New nonce, counter not above the last: replayed.
    assert verifier.check(b.build("enroll.start", PAYLOAD, "kiosk-001", counter=10)).code == (
        "replayed"
    )
    assert verifier.check(b.build("enroll.start", PAYLOAD, "kiosk-001", counter=9)).code == (
        "replayed"
    )
    # Higher counter, reused nonce: replayed.
    nonce = b64decode(json.loads(b64decode(json.loads(env)["body"], what="b"))["nonce"], what="n")
    d = verifier.check(b.build("enroll.start", PAYLOAD, "kiosk-001", counter=11, nonce=nonce))
    assert d.code == "replayed"
    assert verifier.check(b.build("enroll.start", PAYLOAD, "kiosk-001", counter=12)).accepted
    # Counters are per issuer: another operator starting low is fine.
    other = _builder(fleet.operator(), fleet)
    assert verifier.check(other.build("enroll.start", PAYLOAD, "kiosk-001", counter=1)).accepted


def test_replay_state_survives_restart(fleet: Fleet, tmp_path: Path) -> None:
    env = _builder(fleet.operator(), fleet).build("enroll.start", PAYLOAD, "kiosk-001")
    c1 = open_db(tmp_path / "r.db")
    assert make_verifier(fleet, c1).check(env).accepted
    c1.close()
    c2 = open_db(tmp_path / "r.db")
    assert make_verifier(fleet, c2).check(env).code == "replayed"
    c2.close()


def test_refused_envelope_does_not_burn_counter(fleet: Fleet, verifier: CommandVerifier) -> None:
    op = fleet.operator()
    b = _builder(op, fleet)
    high = b.build("config.set", b"{}", "kiosk-001", counter=1000)  # forbidden role
    assert verifier.check(high).code == "forbidden_role"
    forged = _tamper(b.build("enroll.start", PAYLOAD, "kiosk-001", counter=2000), counter=3000)
    assert verifier.check(forged).code == "bad_signature"
    assert verifier.check(b.build("enroll.start", PAYLOAD, "kiosk-001", counter=5)).accepted


def test_payload_command_hook(fleet: Fleet, verifier: CommandVerifier) -> None:
    b = _builder(fleet.operator(), fleet)

    def name_of(payload: bytes) -> str | None:
        return json.loads(payload).get("cmd")

    env = b.build("enroll.start", b'{"cmd": "card.write"}', "kiosk-001")
    assert verifier.check(env, payload_command=name_of).code == "malformed_envelope"
    env = b.build("enroll.start", b"\xff not json", "kiosk-001")
    assert verifier.check(env, payload_command=name_of).code == "malformed_envelope"
    env = b.build("enroll.start", b'{"cmd": "enroll.start"}', "kiosk-001")
    assert verifier.check(env, payload_command=name_of).accepted


def test_concurrent_duplicates_accept_exactly_once(fleet: Fleet, tmp_path: Path) -> None:
    conn = open_db(tmp_path / "c.db")
    v = make_verifier(fleet, conn)
    env = _builder(fleet.operator(), fleet).build("enroll.start", PAYLOAD, "kiosk-001")
    results: list[str] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        results.append(v.check(env).code)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == ["ok"] + ["replayed"] * 7
    conn.close()


def test_default_isolation_level_commits(fleet: Fleet, tmp_path: Path) -> None:
    """With Python's legacy implicit transactions the replay record is still committed."""
    conn = open_db(tmp_path / "legacy.db", isolation_level="")
    env = _builder(fleet.operator(), fleet).build("enroll.start", PAYLOAD, "kiosk-001")
    assert make_verifier(fleet, conn).check(env).accepted
    assert not conn.in_transaction
    other = sqlite3.connect(tmp_path / "legacy.db")
    assert other.execute("SELECT count(*) FROM trust_nonce").fetchone() == (1,)
    other.close()
    conn.close()


def test_store_failure_refuses(fleet: Fleet, tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "empty.db", check_same_thread=False)  # no schema
    v = make_verifier(fleet, conn)
    env = _builder(fleet.operator(), fleet).build("enroll.start", PAYLOAD, "kiosk-001")
    d = v.check(env)
    assert (d.accepted, d.code) == (False, "store_error")
    conn.close()


def test_schema_is_idempotent(conn: sqlite3.Connection) -> None:
    for stmt in TRUST_SCHEMA_SQL:
        conn.execute(stmt)


MALFORMED = [
    b"",
    b"not json",
    b"\xff\xfe",
    b"[]",
    b'"string"',
    b'{"typ": "appliance.command.v1", "sig": "AAAA"}',
    b'{"typ": "other", "sig": "AAAA"}',
    b'{"typ": "appliance.command.v1", "sig": "AAAA", "cert": "x.y"}',
    b"{" * 100000,
]


@pytest.mark.parametrize("message", MALFORMED)
def test_malformed_messages(verifier: CommandVerifier, message: bytes) -> None:
    d = verifier.check(message)
    assert not d.accepted
    assert d.code == "malformed_envelope"


def test_oversized_message(verifier: CommandVerifier) -> None:
    assert verifier.check(b" " * (300 * 1024)).code == "malformed_envelope"


@pytest.mark.parametrize(
    "changes",
    [
        {"counter": "7"},
        {"counter": -1},
        {"counter": True},
        {"issued_at": 1.5},
        {"nonce": "AAAA"},
        {"payload": "***"},
        {"command": "bad name!"},
        {"target": 5},
    ],
)
def test_malformed_bodies_signed_correctly(
    fleet: Fleet, verifier: CommandVerifier, changes: dict[str, object]
) -> None:
    """Bodies that are authentic (properly signed) but carry bad fields."""
    from appliance.trust.keys import CTX_COMMAND, sign_detached

    op = fleet.operator()
    env = json.loads(_builder(op, fleet).build("enroll.start", PAYLOAD, "kiosk-001"))
    body = json.loads(b64decode(env["body"], what="b"))
    body.update(changes)
    raw = json.dumps(body).encode()
    env["body"] = b64encode(raw)
    env["sig"] = b64encode(sign_detached(op.signing_key, CTX_COMMAND, raw))
    assert verifier.check(json.dumps(env).encode()).code == "malformed_envelope"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=2000))
def test_random_bytes_never_crash(verifier: CommandVerifier, data: bytes) -> None:
    d = verifier.check(data)
    assert not d.accepted
    assert d.code in ERROR_CODES


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=7))
def test_any_bit_flip_is_refused(
    fleet: Fleet, verifier: CommandVerifier, pos: int, bit: int
) -> None:
    env = bytearray(_builder(fleet.operator(), fleet).build("enroll.start", PAYLOAD, "kiosk-001"))
    env[pos % len(env)] ^= 1 << bit
    d = verifier.check(bytes(env))
    assert not d.accepted
    assert d.code in ERROR_CODES


def test_monotonic_counter_strictly_increases() -> None:
    c = MonotonicCounter(clock=lambda: 1000.0)
    values = [c() for _ in range(5)]
    assert values == sorted(set(values))
    assert values[0] == 1_000_000_000


def test_builder_validates(fleet: Fleet) -> None:
    b = _builder(fleet.operator(), fleet)
    with pytest.raises(TrustError):
        b.build("bad name", b"", "kiosk-001")
    with pytest.raises(TrustError):
        b.build("ping", b"", "group:")
    with pytest.raises(TrustError):
        b.build("ping", b"", "kiosk/1")


def test_role_table_from_specs() -> None:
    from appliance.commands import CommandRegistry

    reg = CommandRegistry()
    reg.add("a", lambda ctx, args: {}, role="admin")
    reg.add("b", lambda ctx, args: {}, role="operator")
    assert role_table_from_specs(reg.specs()) == {"a": "admin", "b": "operator"}


def test_verifier_needs_a_root(conn: sqlite3.Connection) -> None:
    with pytest.raises(TrustError):
        CommandVerifier(roots=[], device_id="k", role_table={}, conn=conn, lock=threading.Lock())


def test_cached_certificate_still_expires(fleet: Fleet, verifier: CommandVerifier) -> None:
    op = fleet.operator(not_after=NOW + 600)
    b = EnvelopeBuilder(op, clock=fleet.clock, lifetime_s=60)
    assert verifier.check(b.build("enroll.start", PAYLOAD, "kiosk-001")).accepted
    fleet.clock.now = NOW + 1000  # past not_after + 60 s skew; the chain is cached by now
    assert verifier.check(b.build("enroll.start", PAYLOAD, "kiosk-001")).code == "cert_expired"


def test_cache_is_bounded(fleet: Fleet, verifier: CommandVerifier) -> None:
    from appliance.trust.envelope import CERT_CACHE_SIZE

    for _ in range(CERT_CACHE_SIZE + 5):
        b = _builder(fleet.operator(), fleet)
        assert verifier.check(b.build("enroll.start", PAYLOAD, "kiosk-001")).accepted
    assert len(verifier._cert_cache) == CERT_CACHE_SIZE


def test_expired_nonces_are_pruned(fleet: Fleet, tmp_path: Path) -> None:
    b = _builder(fleet.operator(), fleet)
    conn = open_db(tmp_path / "prune.db")
    assert make_verifier(fleet, conn).check(b.build("enroll.start", PAYLOAD, "kiosk-001")).accepted
    fleet.clock.now = NOW + 1000  # the first envelope (120 s + 60 s skew) can no longer pass
    v2 = make_verifier(fleet, conn)  # a fresh verifier prunes on its first acceptance
    assert v2.check(b.build("enroll.start", PAYLOAD, "kiosk-001")).accepted
    assert conn.execute("SELECT count(*) FROM trust_nonce").fetchone() == (1,)
    assert conn.execute("SELECT count(*) FROM trust_issuer_state").fetchone() == (1,)
    conn.close()


def test_revoked_issuer(fleet: Fleet, verifier: CommandVerifier) -> None:
    lost = fleet.operator()
    b = _builder(lost, fleet)
    assert verifier.check(b.build("enroll.start", PAYLOAD, "kiosk-001")).accepted  # now cached
    verifier.set_revoked([lost.key_id])
    d = verifier.check(b.build("enroll.start", PAYLOAD, "kiosk-001"))
    assert (d.accepted, d.code) == (False, "cert_revoked")
    other = _builder(fleet.operator(), fleet)
    assert verifier.check(other.build("enroll.start", PAYLOAD, "kiosk-001")).accepted
