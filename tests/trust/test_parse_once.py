"""A command is parsed once on its way in (issue 13 point 1, issue 19): the trust adapter decodes
the message and the inner request once, and the verifier's hooks and the dispatcher share that
parse. Counted on the real verifier, dispatcher and store (SQLite file)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.commands import CommandContext, CommandRegistry
from appliance.dispatch import Dispatcher
from appliance.inbound import CommandRequest, Incoming
from appliance.store import Store
from appliance.trust.adapter import make_dispatch_verifier
from appliance.trust.certs import FleetRoot
from appliance.trust.envelope import TRUST_SCHEMA_SQL, CommandVerifier, EnvelopeBuilder

from .fleet import Fleet


class Counted:
    """Every ``json.loads`` and every request-model validation, by argument."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.loads: list[bytes] = []
        self.validated = 0
        real_loads = json.loads
        real_validate = CommandRequest.model_validate

        def loads(s: Any, *a: Any, **k: Any) -> Any:
            self.loads.append(s.encode() if isinstance(s, str) else bytes(s))
            return real_loads(s, *a, **k)

        def validate(obj: Any, *a: Any, **k: Any) -> CommandRequest:
            self.validated += 1
            return real_validate(obj, *a, **k)

        monkeypatch.setattr(json, "loads", loads)
        monkeypatch.setattr(CommandRequest, "model_validate", validate)


class Replies:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.cv = threading.Condition()

    def publish(self, _topic: str, body: bytes, **_kw: Any) -> bool:
        with self.cv:
            self.items.append(_real_loads(body))
            self.cv.notify_all()
        return True

    def first(self) -> dict[str, Any]:
        with self.cv:
            assert self.cv.wait_for(lambda: self.items, timeout=20)
            return self.items[0]


World = tuple[Fleet, Dispatcher, Replies, CommandVerifier]
_real_loads = json.loads


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    fleet = Fleet(FleetRoot.create(tmp_path / "root"), tmp_path)
    store = Store(tmp_path / "state")
    with store.lock:
        for stmt in TRUST_SCHEMA_SQL:
            store.conn.execute(stmt)
    registry = CommandRegistry()

    def echo(ctx: CommandContext, _a: Any) -> dict[str, Any]:
        return {"echo": ctx.name}

    registry.add("look", echo, role="operator", readonly=True)
    verifier = CommandVerifier(
        roots=[fleet.root.public_key],
        device_id="kiosk-001",
        role_table=registry.roles(),
        conn=store.conn,
        lock=store.lock,
        clock=fleet.clock,
        allow_unsigned=False,
    )
    replies = Replies()

    dispatcher = Dispatcher(
        registry,
        store,
        replies.publish,
        "kiosk/kiosk-001/reply",
        emit=lambda *a, **k: None,
        max_payload=256 * 1024,
        workers=1,
        verifier=make_dispatch_verifier(verifier, lookup=store.commands.lookup),
    )
    yield fleet, dispatcher, replies, verifier
    dispatcher.close()
    store.close()


def test_a_signed_command_is_parsed_once(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet, dispatcher, replies, _v = world
    b = EnvelopeBuilder(fleet.operator(roles=("operator",)), clock=fleet.clock)
    # A first command from this operator: its certificate chain is verified (and its token
    # decoded) once, then cached.
    dispatcher.handle(
        Incoming(
            "kiosk/kiosk-001/cmd",
            b.build("look", b'{"id": "p0", "cmd": "look"}', "kiosk-001"),
            False,
        )
    )
    assert replies.first()["ok"] is True
    replies.items.clear()
    inner = b'{"id": "p1", "cmd": "look", "args": {}}'
    message = b.build("look", inner, "kiosk-001")
    counted = Counted(monkeypatch)
    dispatcher.handle(Incoming("kiosk/kiosk-001/cmd", message, False))
    assert replies.first()["ok"] is True
    # The envelope, its signed body and the request each decoded once (the reply is not
    # decoded by the daemon; the counter sees only the daemon's own decodes).
    assert counted.loads.count(message) == 1
    assert counted.loads.count(inner) == 1, "the inner request was decoded more than once"
    assert len(counted.loads) == 3, counted.loads
    assert counted.validated == 1


def test_a_signed_command_id_is_looked_up_once(world: World) -> None:
    """The verifier's re-delivery check and the dispatcher both ask the command store about
    the id, in the same admission transaction: one SELECT (CommandLog.lookup's memo), counted
    on the store's own SQLite connection."""
    fleet, dispatcher, replies, _v = world
    b = EnvelopeBuilder(fleet.operator(roles=("operator",)), clock=fleet.clock)
    statements: list[str] = []
    dispatcher.store.conn.set_trace_callback(statements.append)
    try:
        message = b.build("look", b'{"id": "q1", "cmd": "look"}', "kiosk-001")
        dispatcher.handle(Incoming("kiosk/kiosk-001/cmd", message, False))
        assert replies.first()["ok"] is True
        # The same envelope again: a re-delivery, answered from the store (the memo does not
        # outlive the first admission's transaction).
        replies.items.clear()
        dispatcher.handle(Incoming("kiosk/kiosk-001/cmd", message, False))
        assert replies.first()["ok"] is True
    finally:
        dispatcher.store.conn.set_trace_callback(None)
    lookups = [st for st in statements if st.startswith("SELECT name, state, reply FROM commands")]
    assert len(lookups) == 2, statements  # one per admission, not two


def test_an_unsigned_development_command_is_parsed_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fleet, dispatcher, replies, verifier = world
    verifier.allow_unsigned = True
    plain = b'{"id": "u1", "cmd": "look", "args": {}}'
    counted = Counted(monkeypatch)
    dispatcher.handle(Incoming("kiosk/kiosk-001/cmd", plain, False))
    assert replies.first()["ok"] is True
    assert counted.loads == [plain]
    assert counted.validated == 1


def test_a_refused_envelope_still_names_its_request_id(
    world: World,
) -> None:
    fleet, dispatcher, replies, _v = world
    b = EnvelopeBuilder(fleet.operator(roles=("operator",)), clock=fleet.clock)
    # Signed as "look", the payload names another command: refused, the id still named.
    message = b.build("look", b'{"id": "r1", "cmd": "other", "args": {}}', "kiosk-001")
    dispatcher.handle(Incoming("kiosk/kiosk-001/cmd", message, False))
    reply = replies.first()
    assert reply["id"] == "r1" and reply["error"]["code"] == "malformed_envelope"
