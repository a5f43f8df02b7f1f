"""The dispatcher with a real store and a custom registry (the MQTT side is covered by
test_daemon_mqtt.py): timeouts, crashes, interrupted commands, intrusive commands."""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from appliance.agent.mqtt import Incoming
from appliance.commands import CommandContext, CommandRegistry
from appliance.dispatch import Dispatcher
from appliance.errors import CommandError, DeviceTimeout
from appliance.protocol.messages import ReplyMessage, parse_message
from appliance.store import Store
from appliance.trust.certs import ROLES


class SlowArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = 0.0


class Harness:
    def __init__(self, tmp: Path, session: bool = False) -> None:
        self.store = Store(tmp)
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self.wire: list[bytes] = []  # every reply's bytes, as published
        self.release = threading.Event()
        self.started = threading.Event()  # a "slow" command is running
        self.runs: list[str] = []
        reg = CommandRegistry()

        def slow(ctx: CommandContext, args: SlowArgs) -> dict[str, Any]:
            self.runs.append(ctx.command_id)
            self.started.set()
            self.release.wait(args.seconds)
            return {"cancelled": ctx.cancelled.is_set()}

        def boom(ctx: CommandContext, _a: Any) -> dict[str, Any]:
            raise ZeroDivisionError("bug")

        def device_fail(ctx: CommandContext, _a: Any) -> dict[str, Any]:
            raise DeviceTimeout("sensor silent", device="fingerprint")

        reg.add("slow", slow, args=SlowArgs, timeout_s=0.3, role="operator")
        reg.add("boom", boom, role="operator")
        reg.add("devfail", device_fail, role="operator")
        reg.add("restart.drivers", lambda _c, _a: {"ok": True}, intrusive=True, role="admin")
        reg.add("look", lambda _c, _a: {"seen": True}, readonly=True, role="operator")

        def publish(topic: str, body: bytes, **_kw: Any) -> bool:
            self.wire.append(body)
            self.replies.put(json.loads(body))
            return True

        self.d = Dispatcher(
            reg,
            self.store,
            publish,
            "kiosk/t/reply",
            emit=lambda *a, **k: None,
            max_payload=10_000,
            workers=2,
            session_active=lambda: session,
        )

    def send(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.d.handle(Incoming("kiosk/t/cmd", json.dumps(obj).encode(), False))
        return self.replies.get(timeout=10)

    def close(self) -> None:
        self.release.set()
        self.d.close()
        self.store.close()


@pytest.fixture
def h(tmp_path: Path) -> Any:
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def test_timeout_reply_wins_and_late_result_is_discarded(h: Harness) -> None:
    r = h.send({"id": "s1", "cmd": "slow", "args": {"seconds": 30}})
    assert r["ok"] is False and r["error"]["code"] == "timeout"
    h.release.set()  # the handler now finishes late
    again = h.send({"id": "s1", "cmd": "slow", "args": {"seconds": 0}})
    assert again == r, "a repeat gets the stored timeout reply, the late result is dropped"
    assert h.runs == ["s1"]


def test_handler_crash_is_internal_error_and_dispatch_goes_on(h: Harness) -> None:
    r = h.send({"id": "b1", "cmd": "boom"})
    assert r["error"]["code"] == "internal_error" and "ZeroDivisionError" in r["error"]["message"]
    r = h.send({"id": "f1", "cmd": "devfail"})
    assert r["error"]["code"] == "device_timeout"
    assert r["error"]["details"]["device"] == "fingerprint"
    assert h.send({"id": "s2", "cmd": "slow"})["ok"] is True


def test_the_fleet_tools_parse_every_reply_the_dispatcher_renders(h: Harness) -> None:
    """The kiosk renders and the fleet tools parse with the one model of the wire contract
    (``ReplyMessage``): each reply's bytes, as published, parse back to the same document."""
    h.send({"id": "a1", "cmd": "look"})  # read-only, ok
    h.send({"id": "a2", "cmd": "slow"})  # a worker, ok
    h.send({"id": "a3", "cmd": "boom"})  # internal_error
    h.send({"id": "a4", "cmd": "devfail"})  # an ApplianceError with details
    h.send({"id": "a5", "cmd": "nope"})  # refused at admission
    h.send({"id": "a1", "cmd": "slow"})  # id reused for another command
    h.d.handle(Incoming("kiosk/t/cmd", b"{not json", False))  # no id can be read
    h.replies.get(timeout=10)
    assert len(h.wire) == 7
    for body in h.wire:
        parsed = parse_message(ReplyMessage, body, "reply")
        assert parsed.model_dump(mode="json", exclude_unset=True) == json.loads(body)
    codes = [json.loads(b).get("error", {}).get("code") for b in h.wire]
    assert codes == [
        None,
        None,
        "internal_error",
        "device_timeout",
        "unknown_command",
        "invalid_request",
        "invalid_json",
    ]


def test_running_command_repeat_is_in_progress(h: Harness) -> None:
    h.d.handle(Incoming("kiosk/t/cmd", b'{"id":"s3","cmd":"slow","args":{"seconds":0.25}}', False))
    r = h.send({"id": "s3", "cmd": "slow"})
    assert r["error"]["code"] == "in_progress"
    first = h.replies.get(timeout=10)
    assert first["id"] == "s3" and first["ok"] is True
    assert h.runs == ["s3"]


def test_commands_running_at_a_crash_are_marked_interrupted(tmp_path: Path) -> None:
    s = Store(tmp_path)
    s.commands.begin("lost-1", "slow")
    s.close()
    h = Harness(tmp_path)
    try:
        assert h.d.mark_interrupted() == 1
        r = h.send({"id": "lost-1", "cmd": "slow"})
        assert r["error"]["code"] == "interrupted"
        assert h.runs == []
    finally:
        h.close()


def test_intrusive_command_waits_for_the_enrollment_session(tmp_path: Path) -> None:
    h = Harness(tmp_path, session=True)
    try:
        r = h.send({"id": "r1", "cmd": "restart.drivers"})
        assert r["error"]["code"] == "busy"
    finally:
        h.close()


@pytest.mark.parametrize("role", ["", "root", None, "Operator"])
def test_registration_without_a_known_role_is_refused(role: Any) -> None:
    """Fail closed at registration, loudly and naming the command, instead of a command that
    every signed call is later refused for."""
    reg = CommandRegistry()
    with pytest.raises(CommandError, match=r"'card\.wipe'") as err:
        reg.add("card.wipe", lambda _c, _a: {}, role=role)
    assert err.value.code == "invalid_role"
    assert err.value.details["command"] == "card.wipe"
    assert reg.names() == []


def test_registration_requires_a_role_and_accepts_every_trust_role() -> None:
    reg = CommandRegistry()
    with pytest.raises(CommandError, match=r"'card\.wipe' registered without a role") as err:
        reg.add("card.wipe", lambda _c, _a: {})  # type: ignore[call-arg]
    assert (err.value.code, err.value.details["command"]) == ("invalid_role", "card.wipe")
    for role in sorted(ROLES):
        reg.add(f"x.{role}", lambda _c, _a: {}, role=role)
    assert dict(reg.roles()) == {f"x.{r}": r for r in ROLES}


def test_every_shipped_command_states_a_trust_role() -> None:
    """Every command the daemon can serve (built-ins, capabilities, enrollment) is registered
    with a role of the trust model."""
    from appliance.schemas import full_registry

    roles = dict(full_registry().roles())
    assert {"ping", "card.encode", "fingerprint.capture", "enrollment.start"} <= set(roles)
    assert set(roles.values()) <= ROLES


def test_known_id_is_answered_before_the_argument_and_busy_checks(tmp_path: Path) -> None:
    """A repeat gets its stored reply even when an enrollment session now makes the command
    wait, and an id reused for another command is refused as invalid_request."""
    s = Store(tmp_path)
    s.commands.begin("k1", "restart.drivers")
    s.commands.finish("k1", '{"id":"k1","cmd":"restart.drivers","ok":true,"result":{}}')
    s.close()
    h = Harness(tmp_path, session=True)
    try:
        r = h.send({"id": "k1", "cmd": "restart.drivers"})
        assert r == {"id": "k1", "cmd": "restart.drivers", "ok": True, "result": {}}
        r = h.send({"id": "k1", "cmd": "slow"})
        assert (r["id"], r["error"]["code"]) == ("k1", "invalid_request")
        assert h.runs == []
        outcomes = [row["outcome"] for row in h.store.audit_tail(10)]
        assert outcomes[:2] == ["invalid_request", "repeat"]
    finally:
        h.close()


def test_read_only_command_is_answered_while_a_long_command_runs(h: Harness) -> None:
    """A card encode takes its time in a worker: a read-only command (``ping``) arriving
    meanwhile is answered at once, not after it."""
    h.d.handle(Incoming("kiosk/t/cmd", b'{"id":"enc","cmd":"slow","args":{"seconds":30}}', False))
    assert h.started.wait(10)
    r = h.send({"id": "p1", "cmd": "look"})
    assert r["id"] == "p1" and r["result"] == {"seen": True}
    assert h.runs == ["enc"]  # the long command is still running
    h.release.set()
    assert h.replies.get(timeout=10)["id"] == "enc"


def test_commands_run_only_once_their_claim_is_on_disk(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Admission commits without waiting for the disk; a command with an effect runs (and a
    refusal is answered) only after the group commit made that claim durable, while a
    read-only command is answered without waiting for it."""
    gate = threading.Event()
    entered = threading.Event()
    real_sync = h.store.sync

    def held_sync() -> None:
        entered.set()
        assert gate.wait(10)
        real_sync()

    monkeypatch.setattr(h.store, "sync", held_sync)
    h.d.handle(Incoming("kiosk/t/cmd", b'{"id":"e1","cmd":"slow","args":{"seconds":0}}', False))
    h.d.handle(Incoming("kiosk/t/cmd", b'{"id":"e2","cmd":"nope"}', False))
    assert entered.wait(10)
    r = h.send({"id": "p2", "cmd": "look"})
    assert r["id"] == "p2" and r["ok"] is True
    assert h.runs == [], "the command ran on a claim that was not durable yet"
    assert h.replies.empty()
    gate.set()
    got = {h.replies.get(timeout=10)["id"] for _ in range(2)}
    assert got == {"e1", "e2"}
    assert h.runs == ["e1"]
    assert h.d._group.syncs >= 1
