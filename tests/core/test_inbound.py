"""The inbound hand-off (docs/architecture.md section 4): the MQTT network thread only queues a
message (``Dispatcher.submit``); the ``inbound`` thread verifies and admits in arrival order,
several messages in one store transaction; a command past its deadline stops at a safe point
and nothing it does after its ``timeout`` reply is stored or sent. Real store (SQLite file)."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from appliance.commands import CommandContext, CommandRegistry
from appliance.dispatch import Dispatcher
from appliance.errors import ApplianceError, StoreError
from appliance.inbound import Incoming, Verified
from appliance.store import Store
from appliance.trust.certs import ROLES


class WaitArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = 0.0


class Replies:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.cv = threading.Condition()

    def publish(self, _topic: str, body: bytes, **_kw: Any) -> bool:
        with self.cv:
            self.items.append(json.loads(body))
            self.cv.notify_all()
        return True

    def wait(self, n: int) -> list[dict[str, Any]]:
        with self.cv:
            assert self.cv.wait_for(lambda: len(self.items) >= n, timeout=20), self.items
            return list(self.items)


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.store = Store(tmp)
        self.replies = Replies()
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.runs: list[str] = []
        self.late: dict[str, Any] = {}
        self.handler_done = threading.Event()
        self.gate = threading.Event()  # the verifier waits on it while set_gate() holds it
        self.gate.set()
        self.in_verifier = threading.Event()
        self.fail_ids: set[str] = set()
        reg = CommandRegistry()

        def overrun(ctx: CommandContext, args: WaitArgs) -> dict[str, Any]:
            """Drives its "device" in steps; between steps it checks ``cancelled`` (the safe
            point) and, like a capability, reports the step as an event."""
            self.runs.append(ctx.command_id)
            try:
                ctx.cancelled.wait(args.seconds)  # a device step outlasting the deadline
                ctx.progress("written")  # transient: dropped after the timeout, no raise
                try:
                    ctx.emit("card.written", {"command": ctx.command_id})
                except ApplianceError as exc:
                    self.late["emit_refused"] = exc.code
                return {"written": True}
            finally:
                self.handler_done.set()

        def work(ctx: CommandContext, _a: Any) -> dict[str, Any]:
            self.runs.append(ctx.command_id)
            return {"done": ctx.command_id}

        reg.add("overrun", overrun, args=WaitArgs, timeout_s=0.2, role="operator")
        reg.add("work", work, role="operator")
        self.release = threading.Event()
        reg.add(
            "hold", lambda _c, _a: {"held": self.release.wait(20)}, timeout_s=30, role="operator"
        )
        reg.add("look", lambda _c, _a: {"seen": True}, readonly=True, role="operator")

        def emit(type_: str, data: dict[str, Any], **_kw: Any) -> tuple[int, str] | None:
            self.events.append((type_, data))
            return None

        def verifier(msg: Incoming) -> Verified:
            self.in_verifier.set()
            assert self.gate.wait(20)
            return Verified(msg.payload, roles=ROLES)

        self.batches: list[int] = []
        self.d = Dispatcher(
            reg,
            self.store,
            self.replies.publish,
            "kiosk/t/reply",
            emit=emit,
            max_payload=10_000,
            workers=2,
            verifier=verifier,
        )
        real_batch = self.d.handle_batch

        def counted(msgs: list[Incoming]) -> None:
            self.batches.append(len(msgs))
            real_batch(msgs)

        self.d.handle_batch = counted  # type: ignore[method-assign]
        real_begin = self.store.commands.begin

        def begin(cid: str, *a: Any, **k: Any) -> tuple[bool, str | None, str]:
            if cid in self.fail_ids:
                raise StoreError("disk I/O error (injected)")
            return real_begin(cid, *a, **k)

        self.store.commands.begin = begin  # type: ignore[method-assign]

    @staticmethod
    def msg(cid: str, cmd: str, **args: Any) -> Incoming:
        body = json.dumps({"id": cid, "cmd": cmd, "args": args}).encode()
        return Incoming("kiosk/t/cmd", body, False)

    def close(self) -> None:
        self.gate.set()
        self.release.set()
        self.d.close()
        self.store.close()


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def test_late_result_after_the_timeout_is_neither_stored_nor_published(h: Harness) -> None:
    h.d.handle(h.msg("o1", "overrun", seconds=30))
    first = h.replies.wait(1)[0]
    assert first["id"] == "o1" and first["error"]["code"] == "timeout"
    # The handler saw `cancelled` at its safe point; its event after the timeout was refused.
    assert h.handler_done.wait(20)
    assert h.late == {"emit_refused": "timeout"}
    assert h.events == [], "nothing the command did after its timeout reply reached the outbox"
    # Its late result went nowhere: the next reply out (a refusal, sent through the same
    # group commit a late reply would have taken) is the next one published.
    h.d._pool.shutdown(wait=True)  # the handler's _execute (and its _finish) is over
    h.d.handle(h.msg("o1", "overrun"))  # a repeat: the stored first reply
    h.d.handle(h.msg("x1", "nope"))
    got = h.replies.wait(3)
    assert [r["id"] for r in got] == ["o1", "o1", "x1"], got
    assert got[1] == first
    _name, state, stored = h.store.commands.lookup("o1") or ("", "", None)
    assert state == "done" and stored is not None and json.loads(stored) == first
    assert h.runs == ["o1"]


def test_submit_only_queues_and_the_inbound_thread_admits_in_order(h: Harness) -> None:
    h.gate.clear()  # the verifier holds the inbound thread at the first message
    h.d.submit(h.msg("a1", "work"))
    assert h.in_verifier.wait(20)
    # submit() returns at once while the inbound thread is busy: the network thread would
    # go back to reading. What arrives meanwhile is admitted together, in order.
    for i in range(2, 9):
        h.d.submit(h.msg(f"a{i}", "look" if i % 2 else "work"))
    h.gate.set()
    got = h.replies.wait(8)
    assert sorted(r["id"] for r in got) == [f"a{i}" for i in range(1, 9)]
    assert all(r["ok"] for r in got), got
    assert h.batches == [1, 7], "the seven messages queued meanwhile share one transaction"
    # The read-only ones, in one batch, answer in arrival order; each ran once.
    looks = [r["id"] for r in got if r["cmd"] == "look"]
    assert looks == ["a3", "a5", "a7"]
    assert sorted(h.runs) == ["a1", "a2", "a4", "a6", "a8"]


def test_a_store_failure_in_a_batch_costs_only_its_own_message(h: Harness) -> None:
    h.fail_ids = {"b2"}
    h.gate.clear()
    h.d.submit(h.msg("b0", "look"))
    assert h.in_verifier.wait(20)
    for cid in ("b1", "b2", "b3"):
        h.d.submit(h.msg(cid, "work"))
    h.gate.set()
    got = {r["id"]: r for r in h.replies.wait(4)}
    assert got["b1"]["ok"] and got["b3"]["ok"], got
    failed = got[None]
    assert failed["ok"] is False and failed["error"]["code"] == "store_error"
    # The batch was rolled back and admitted again one by one: b1 and b3 ran exactly once.
    assert sorted(h.runs) == ["b1", "b3"]
    assert h.store.commands.lookup("b2") is None


def test_a_ping_does_not_wait_behind_a_long_command(h: Harness) -> None:
    h.d.submit(h.msg("long", "hold"))
    h.d.submit(h.msg("p1", "look"))
    got = h.replies.wait(1)
    assert got[0]["id"] == "p1" and got[0]["ok"] is True


def test_a_command_is_acknowledged_to_the_broker_once_its_admission_committed(
    h: Harness,
) -> None:
    seen: list[Any] = []

    def ack() -> None:
        # Another connection sees only what is committed.
        with sqlite3.connect(h.store.path) as other:
            seen.append(other.execute("SELECT state FROM commands WHERE id = 'k1'").fetchone())

    h.d.submit(dataclasses.replace(h.msg("k1", "work"), ack=ack))
    assert h.replies.wait(1)[0]["id"] == "k1"
    assert seen == [("running",)], "acknowledged once claimed, before it ran"


def test_a_command_the_closing_dispatcher_cannot_admit_is_not_acknowledged(h: Harness) -> None:
    acked: list[bool] = []
    h.d.close()
    h.d.submit(dataclasses.replace(h.msg("late", "work"), ack=lambda: acked.append(True)))
    assert acked == [], "the broker must deliver it again at the next start"


def test_a_batch_hands_its_read_only_replies_and_acknowledgements_over_together(
    h: Harness,
) -> None:
    """One ``Incoming.handover`` call per batch: its read-only replies, then every message's
    acknowledgement (one wake-up of the network thread instead of one per packet); a command
    with an effect is answered after the group commit, as before."""
    calls: list[tuple[list[str], list[str]]] = []
    done = threading.Event()

    def handover(replies: list[tuple[str, bytes, bytes | None]], acks: list[Any]) -> None:
        calls.append(([json.loads(b)["id"] for _t, b, _c in replies], [a() for a in acks]))
        if len(calls) == 2:
            done.set()

    def msg(cid: str, cmd: str) -> Incoming:
        return dataclasses.replace(
            h.msg(cid, cmd),
            ack=lambda: cid,
            handover=handover,
            correlation_data=b"c-" + cid.encode(),
        )

    h.gate.clear()
    h.d.submit(msg("h1", "look"))
    assert h.in_verifier.wait(20)
    for cid, cmd in (("h2", "look"), ("h3", "work"), ("h4", "look")):
        h.d.submit(msg(cid, cmd))
    h.gate.set()
    assert done.wait(20)
    assert calls == [(["h1"], ["h1"]), (["h2", "h4"], ["h2", "h3", "h4"])]
    # The command with an effect is answered through the publisher once its claim is durable.
    assert [r["id"] for r in h.replies.wait(1)] == ["h3"]
    assert h.replies.items[0]["ok"] is True
