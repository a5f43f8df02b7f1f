"""The trust adapter in front of the daemon's real Dispatcher and Store (SQLite file)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.agent.mqtt import Incoming
from appliance.commands import CommandContext, CommandRegistry
from appliance.dispatch import ADMISSION_CODES, Dispatcher
from appliance.store import Store
from appliance.trust.adapter import make_dispatch_verifier
from appliance.trust.certs import FleetRoot
from appliance.trust.envelope import (
    ERROR_CODES,
    TRUST_SCHEMA_SQL,
    CommandVerifier,
    EnvelopeBuilder,
    TrustDecision,
)

from .fleet import Fleet


class Replies:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.cv = threading.Condition()

    def publish(self, topic: str, body: bytes | str, **_kw: Any) -> bool:
        with self.cv:
            self.items.append(json.loads(body))
            self.cv.notify_all()
        return True

    def wait(self, n: int) -> list[dict[str, Any]]:
        with self.cv:
            assert self.cv.wait_for(lambda: len(self.items) >= n, timeout=20), self.items
            return list(self.items)


Setup = tuple[Fleet, Dispatcher, Replies, list[TrustDecision]]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    fleet = Fleet(FleetRoot.create(tmp_path / "root"), tmp_path)
    store = Store(tmp_path / "state")
    with store.lock:
        for stmt in TRUST_SCHEMA_SQL:
            store.conn.execute(stmt)
    registry = CommandRegistry()

    def echo(ctx: CommandContext, args: Any) -> dict[str, Any]:
        return {"echo": ctx.name}

    release = threading.Event()

    def hold(ctx: CommandContext, args: Any) -> dict[str, Any]:
        release.wait(20)
        return {"held": True}

    registry.add("echo", echo, role="operator")
    registry.add("restart", echo, role="admin")
    registry.add("hold", hold, role="operator", timeout_s=30)
    registry.add("look", echo, role="operator", readonly=True)
    verifier = CommandVerifier(
        roots=[fleet.root.public_key],
        device_id="kiosk-001",
        role_table=registry.roles(),
        conn=store.conn,
        lock=store.lock,
        clock=fleet.clock,
    )
    audit: list[TrustDecision] = []
    replies = Replies()
    dispatcher = Dispatcher(
        registry,
        store,
        replies.publish,
        "kiosk/kiosk-001/reply",
        emit=lambda *a, **k: None,
        max_payload=256 * 1024,
        workers=2,
        verifier=make_dispatch_verifier(verifier, lookup=store.commands.lookup, audit=audit.append),
    )
    yield fleet, dispatcher, replies, audit
    release.set()
    dispatcher.close()
    store.close()


def _incoming(payload: bytes) -> Incoming:
    return Incoming(topic="kiosk/kiosk-001/cmd", payload=payload, retained=False)


def _audit_rows(dispatcher: Dispatcher) -> list[dict[str, Any]]:
    return list(reversed(dispatcher.store.audit_tail(1000)))


def _req(cid: str, cmd: str) -> bytes:
    return json.dumps({"id": cid, "cmd": cmd, "args": {}}).encode()


def test_signed_command_runs_and_refusals_reply_with_codes(setup: Setup) -> None:
    fleet, dispatcher, replies, audit = setup
    op = fleet.operator(roles=("operator",))
    b = EnvelopeBuilder(op, clock=fleet.clock)
    ok = b.build("echo", b'{"id": "c1", "cmd": "echo", "args": {}}', "kiosk-001")
    dispatcher.handle(_incoming(ok))
    # Signed as "echo", but the inner request asks for "restart".
    swapped = b.build("echo", b'{"id": "c2", "cmd": "restart", "args": {}}', "kiosk-001")
    dispatcher.handle(_incoming(swapped))
    dispatcher.handle(_incoming(b.build("restart", b'{"id": "c3", "cmd": "restart"}', "kiosk-001")))
    dispatcher.handle(_incoming(b'{"id": "c4", "cmd": "echo", "args": {}}'))  # unsigned
    got = replies.wait(4)
    by_id = {r["id"]: r for r in got}
    assert by_id["c1"]["ok"] is True
    # Every refusal names the request id, read out of the envelope or the plain request.
    assert {cid: r["error"]["code"] for cid, r in by_id.items() if not r["ok"]} == {
        "c2": "malformed_envelope",
        "c3": "forbidden_role",
        "c4": "unsigned",
    }
    # Every decision reached the observer hook, accepted or not, with the issuer recorded.
    assert [d.code for d in audit] == ["ok", "malformed_envelope", "forbidden_role", "unsigned"]
    assert audit[0].issuer == op.key_id


def test_every_refusal_names_the_id_and_writes_one_audit_row(setup: Setup) -> None:
    """Trust refusals and dispatch refusals alike: the reply names the request id whenever it
    can be read, and each refused message writes exactly one audit row (with the trust
    decision in it), never one from the trust layer and another from dispatch."""
    fleet, dispatcher, replies, _audit = setup
    op = fleet.operator(roles=("operator",))
    b = EnvelopeBuilder(op, clock=fleet.clock)
    other = EnvelopeBuilder(
        fleet.operator(roles=("operator",), devices=("kiosk-9",)), clock=fleet.clock
    )
    stranger = FleetRoot.create(fleet.tmp / "stranger")
    rogue = EnvelopeBuilder(fleet.operator(root=stranger), clock=fleet.clock)
    forged = json.loads(b.build("echo", _req("t4", "echo"), "kiosk-001"))
    forged["sig"] = json.loads(b.build("echo", _req("x", "echo"), "kiosk-001"))["sig"]
    cases: list[tuple[bytes, str | None, str]] = [
        (b.build("nope.cmd", _req("t1", "nope.cmd"), "kiosk-001"), "t1", "unknown_command"),
        (b.build("restart", _req("t2", "restart"), "kiosk-001"), "t2", "forbidden_role"),
        (other.build("echo", _req("t3", "echo"), "kiosk-9"), "t3", "wrong_target"),
        (json.dumps(forged).encode(), "t4", "bad_signature"),
        (rogue.build("echo", _req("t5", "echo"), "kiosk-001"), "t5", "untrusted_issuer"),
        (
            b.build("echo", _req("t6", "echo"), "kiosk-001", issued_at=fleet.clock.now - 4000),
            "t6",
            "expired",
        ),
        (_req("t7", "echo"), "t7", "unsigned"),
        # authenticated, then refused by dispatch: still one row
        (b.build("echo", b'{"id": "t8", "cmd": "echo", "args": {"x": 1}}', "kiosk-001"), "t8",
         "invalid_args"),
        (b"\xff\xfe not json", None, "malformed_envelope"),
        (b"[1, 2]", None, "malformed_envelope"),
        (b'{"typ": "appliance.command.v1", "cert": "x"}', None, "unsigned"),
        (b'{"typ": "appliance.command.v1", "sig": "AA=="}', None, "malformed_envelope"),
    ]  # fmt: skip
    for n, (payload, cid, code) in enumerate(cases, start=1):
        before = len(_audit_rows(dispatcher))
        dispatcher.handle(_incoming(payload))
        reply = replies.wait(n)[-1]
        assert (reply["id"], reply["ok"], reply["error"]["code"]) == (cid, False, code), reply
        rows = _audit_rows(dispatcher)[before:]
        assert len(rows) == 1, (code, rows)
        assert rows[0]["outcome"] == code
        assert rows[0]["details"]["id"] == cid
        assert "trust" in rows[0]["details"], rows[0]
    # Signed refusals carry the issuer as actor; unreadable ones do not invent one.
    rows = _audit_rows(dispatcher)
    assert rows[0]["actor"] == f"test operator#{op.key_id}"
    assert rows[-1]["actor"] == "unsigned"


def test_accepted_command_audits_once_with_the_decision(setup: Setup) -> None:
    fleet, dispatcher, replies, _audit = setup
    op = fleet.operator(roles=("operator",))
    b = EnvelopeBuilder(op, clock=fleet.clock)
    dispatcher.handle(_incoming(b.build("echo", _req("a1", "echo"), "kiosk-001")))
    assert replies.wait(1)[0]["ok"] is True
    rows = _audit_rows(dispatcher)
    # The claim, with the trust record in it, and the outcome: no third row from the trust
    # layer.
    assert [r["outcome"] for r in rows] == ["accepted", "ok"], rows
    assert rows[0]["details"]["trust"]["issuer"] == op.key_id
    assert rows[0]["details"]["trust"]["code"] == "ok"
    assert rows[1]["details"] == {"id": "a1"}


def test_redelivered_signed_command_gets_its_stored_first_reply(setup: Setup) -> None:
    """Broker re-delivery after a crash, or the same envelope published twice: the stored first
    reply, never ``replayed``, and the command does not run again; also once the envelope
    has expired, and for a read-only command."""
    fleet, dispatcher, replies, _audit = setup
    b = EnvelopeBuilder(fleet.operator(roles=("operator",)), clock=fleet.clock)
    env = b.build("echo", _req("r1", "echo"), "kiosk-001")
    look = b.build("look", _req("r2", "look"), "kiosk-001")
    dispatcher.handle(_incoming(env))
    dispatcher.handle(_incoming(look))
    # Independent commands answer in any order (a read-only one does not wait for the
    # group commit of the other): matched by id.
    by_id = {r["id"]: r for r in replies.wait(2)}
    first, first_look = by_id["r1"], by_id["r2"]
    assert first["ok"] is True and first_look["ok"] is True
    executed = dispatcher.executed
    dispatcher.handle(_incoming(env))
    dispatcher.handle(_incoming(look))
    again_by_id = {r["id"]: r for r in replies.wait(4)[2:]}
    assert again_by_id["r1"] == first and again_by_id["r2"] == first_look
    # expired meanwhile (a long outage): still the stored reply, not "expired"
    fleet.clock.now += 4000
    dispatcher.handle(_incoming(env))
    assert replies.wait(5)[4] == first
    assert dispatcher.executed == executed, "a re-delivery never runs the command again"
    outcomes = [r["outcome"] for r in _audit_rows(dispatcher)]
    assert outcomes.count("repeat") == 3 and "replayed" not in outcomes
    # A new, unexpired envelope for a command that never ran is refused as before.
    stale = b.build("echo", _req("r3", "echo"), "kiosk-001", issued_at=fleet.clock.now - 4000)
    dispatcher.handle(_incoming(stale))
    assert replies.wait(6)[5]["error"]["code"] == "expired"


def test_redelivery_of_a_running_command_is_in_progress(setup: Setup) -> None:
    fleet, dispatcher, replies, _audit = setup
    b = EnvelopeBuilder(fleet.operator(roles=("operator",)), clock=fleet.clock)
    env = b.build("hold", _req("h1", "hold"), "kiosk-001")
    dispatcher.handle(_incoming(env))
    dispatcher.handle(_incoming(env))
    (busy,) = replies.wait(1)
    assert (busy["id"], busy["error"]["code"]) == ("h1", "in_progress")


def test_fresh_envelope_reusing_an_id(setup: Setup) -> None:
    """A controller's retry signs a new envelope with the same id and command: the stored
    reply. The same id for another command: refused (its reply is not the sender's to read)."""
    fleet, dispatcher, replies, _audit = setup
    b = EnvelopeBuilder(fleet.operator(roles=("operator",)), clock=fleet.clock)
    dispatcher.handle(_incoming(b.build("echo", _req("i1", "echo"), "kiosk-001")))
    (first,) = replies.wait(1)
    dispatcher.handle(_incoming(b.build("echo", _req("i1", "echo"), "kiosk-001")))
    assert replies.wait(2)[1] == first
    admin = EnvelopeBuilder(fleet.operator(roles=("admin",)), clock=fleet.clock)
    dispatcher.handle(_incoming(admin.build("restart", _req("i1", "restart"), "kiosk-001")))
    reused = replies.wait(3)[2]
    assert (reused["id"], reused["error"]["code"]) == ("i1", "invalid_request")
    assert "echo" not in json.dumps(reused)


def test_command_registered_after_the_verifier_is_covered(
    setup: tuple[Fleet, Dispatcher, Replies, list[TrustDecision]],
) -> None:
    """The enrollment commands register after the verifier is built: the role table is a live
    view of the registry, so they are not refused as ``forbidden_role``."""
    fleet, dispatcher, replies, _audit = setup
    dispatcher.registry.add("late.cmd", lambda ctx, args: {"late": True}, role="operator")
    b = EnvelopeBuilder(fleet.operator(roles=("operator",)), clock=fleet.clock)
    dispatcher.handle(
        _incoming(b.build("late.cmd", b'{"id": "l1", "cmd": "late.cmd"}', "kiosk-001"))
    )
    (reply,) = replies.wait(1)
    assert reply["ok"] is True, reply
    assert reply["result"] == {"late": True}


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
DOCUMENTED = set(ERROR_CODES) | set(ADMISSION_CODES) | {"in_progress", "interrupted"}


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_message_under_signing_gets_one_reply_and_one_audit_row(
    setup: Setup, data: st.DataObject
) -> None:
    """Garbage and damaged envelopes alike: one reply with a documented code and the id when
    readable, and one audit row per refused message."""
    fleet, dispatcher, replies, _audit = setup
    b = EnvelopeBuilder(fleet.operator(roles=("operator",)), clock=fleet.clock)
    cid = f"z{len(replies.items)}"
    good = json.loads(b.build("echo", _req(cid, "echo"), "kiosk-001"))
    field, value = data.draw(st.tuples(st.sampled_from(sorted(good)), JSONISH))
    message = data.draw(
        st.one_of(st.binary(max_size=200), st.just(json.dumps({**good, field: value}).encode()))
    )
    before_rows = len(_audit_rows(dispatcher))
    before = len(replies.items)
    dispatcher.handle(_incoming(message))
    reply = replies.wait(before + 1)[-1]
    assert len(replies.items) == before + 1
    rows = _audit_rows(dispatcher)[before_rows:]
    if reply["ok"]:
        assert reply["id"] == cid
        return
    assert reply["error"]["code"] in DOCUMENTED, reply
    assert reply["id"] in (None, cid), reply
    assert len(rows) == 1, rows
    assert rows[0]["outcome"] == reply["error"]["code"]
