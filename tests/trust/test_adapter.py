"""The trust adapter in front of the daemon's real Dispatcher and Store (SQLite file)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.agent.mqtt import Incoming
from appliance.commands import CommandContext, CommandRegistry
from appliance.dispatch import Dispatcher
from appliance.store import Store
from appliance.trust.adapter import make_dispatch_verifier
from appliance.trust.certs import FleetRoot
from appliance.trust.envelope import (
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


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Fleet, Dispatcher, Replies, list[TrustDecision]]]:
    fleet = Fleet(FleetRoot.create(tmp_path / "root"), tmp_path)
    store = Store(tmp_path / "state")
    with store.lock:
        for stmt in TRUST_SCHEMA_SQL:
            store.conn.execute(stmt)
    registry = CommandRegistry()

    def echo(ctx: CommandContext, args: Any) -> dict[str, Any]:
        return {"echo": ctx.name}

    registry.add("echo", echo, role="operator")
    registry.add("restart", echo, role="admin")
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
        services=None,
        emit=lambda *a, **k: None,
        max_payload=256 * 1024,
        workers=2,
        verifier=make_dispatch_verifier(verifier, audit=audit.append),
    )
    yield fleet, dispatcher, replies, audit
    dispatcher.close()
    store.close()


def _incoming(payload: bytes) -> Incoming:
    return Incoming(topic="kiosk/kiosk-001/cmd", payload=payload, retained=False)


def test_signed_command_runs_and_refusals_reply_with_codes(
    setup: tuple[Fleet, Dispatcher, Replies, list[TrustDecision]],
) -> None:
    fleet, dispatcher, replies, audit = setup
    op = fleet.operator(roles=("operator",))
    b = EnvelopeBuilder(op, clock=fleet.clock)
    ok = b.build("echo", b'{"id": "c1", "cmd": "echo", "args": {}}', "kiosk-001")
    dispatcher.handle(_incoming(ok))
    dispatcher.handle(_incoming(ok))  # replayed
    # Signed as "echo", but the inner request asks for "restart".
    swapped = b.build("echo", b'{"id": "c2", "cmd": "restart", "args": {}}', "kiosk-001")
    dispatcher.handle(_incoming(swapped))
    dispatcher.handle(_incoming(b.build("restart", b'{"id": "c3", "cmd": "restart"}', "kiosk-001")))
    dispatcher.handle(_incoming(b'{"id": "c4", "cmd": "echo", "args": {}}'))  # unsigned
    got = replies.wait(5)
    by_id = {r["id"]: r for r in got if r["id"] is not None}
    assert by_id["c1"]["ok"] is True
    errors = [r["error"]["code"] for r in got if not r["ok"]]
    assert sorted(errors) == sorted(
        ["replayed", "malformed_envelope", "forbidden_role", "unsigned"]
    )
    # Every decision went to the audit hook, accepted or not, with the issuer recorded.
    assert [d.code for d in audit] == [
        "ok",
        "replayed",
        "malformed_envelope",
        "forbidden_role",
        "unsigned",
    ]
    assert audit[0].issuer == op.key_id


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
