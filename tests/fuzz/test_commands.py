"""Fuzzing command payloads through the real Dispatcher (real SQLite store, the built-in
registry): every input gets exactly one reply with a documented error code, never a crash and
never ``internal_error``."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance import builtin
from appliance.agent.mqtt import Incoming
from appliance.commands import CommandRegistry
from appliance.config import AppConfig
from appliance.dispatch import Dispatcher
from appliance.store import Store

from ._strategies import FUZZ, dumps, json_values

MAX_PAYLOAD = 4096
DOCUMENTED = {
    "payload_too_large",
    "invalid_json",
    "invalid_request",
    "unknown_command",
    "invalid_args",
    "forbidden_role",
    "busy",
    "in_progress",
    "interrupted",
}
NAMES = ["ping", "status", "config.get", "diagnostics", "note", "camera.capture", "", "x" * 70]


class Services:
    """What the built-in handlers ask of the daemon (status, diagnostics, configuration)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.config = AppConfig()

    def status(self) -> dict[str, Any]:
        return {"online": True, "outbox_depth": self.store.outbox.depth()}

    def diagnostics(self) -> dict[str, Any]:
        return {"integrity": self.store.integrity_check()}


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.store = Store(tmp)
        self.replies: queue.Queue[tuple[str, bytes, bytes | None]] = queue.Queue()
        self.last_topic = ""
        reg = CommandRegistry()
        builtin.register(reg, Services(self.store))

        def publish(topic: str, body: bytes, **kw: Any) -> bool:
            self.replies.put((topic, body, kw.get("correlation_data")))
            return True

        def emit(type_: str, data: dict[str, Any], durable: bool = True) -> tuple[int, str]:
            return self.store.outbox.put(type_, f"kiosk/fz/events/{type_}", data)

        self.d = Dispatcher(
            reg,
            self.store,
            publish,
            "kiosk/fz/reply",
            emit=emit,
            max_payload=MAX_PAYLOAD,
            workers=2,
        )

    def send(self, payload: bytes, **kw: Any) -> dict[str, Any]:
        self.d.handle(Incoming("kiosk/fz/cmd", payload, False, **kw))
        topic, body, corr = self.replies.get(timeout=10)
        assert self.replies.empty(), "one message, one reply"
        self.last_topic = topic
        if kw.get("correlation_data") is not None:
            assert corr == kw["correlation_data"]
        reply: dict[str, Any] = json.loads(body)
        return reply


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(tmp_path_factory.mktemp("fuzz-dispatch"))
    yield h
    h.d.close()
    h.store.close()


def _check(reply: dict[str, Any]) -> None:
    assert isinstance(reply["ok"], bool)
    if not reply["ok"]:
        assert reply["error"]["code"] in DOCUMENTED, reply
        assert reply["error"]["message"]


_counter = iter(range(10**9))

requests = st.fixed_dictionaries(
    {
        "id": st.one_of(
            st.builds(lambda n: f"fz-{n}", st.just(0)),
            st.text(max_size=70),
            json_values,
        ),
        "cmd": st.one_of(st.sampled_from(NAMES), json_values),
        "args": st.one_of(
            st.dictionaries(
                st.sampled_from(["echo", "section", "text", "tags", "x"]), json_values, max_size=3
            ),
            json_values,
        ),
    },
    optional={"extra": json_values},
)


@FUZZ
@given(raw=st.binary(max_size=600))
def test_arbitrary_bytes_get_an_error_reply(harness: Harness, raw: bytes) -> None:
    reply = harness.send(raw)
    _check(reply)


@FUZZ
@given(req=requests, corr=st.none() | st.binary(min_size=1, max_size=16))
def test_request_shaped_json_gets_a_documented_reply(
    harness: Harness, req: dict[str, Any], corr: bytes | None
) -> None:
    if req["id"] == "fz-0":
        req["id"] = f"fz-{next(_counter)}"  # unique ids, so "at most once" is not in the way
    reply = harness.send(dumps(req), correlation_data=corr)
    _check(reply)


@FUZZ
@given(topic=st.text(max_size=40), cmd=st.sampled_from(["ping", "status"]))
def test_hostile_response_topics_never_crash(harness: Harness, topic: str, cmd: str) -> None:
    cid = f"rt-{next(_counter)}"
    reply = harness.send(dumps({"id": cid, "cmd": cmd}), response_topic=topic)
    assert reply["ok"] is True
    assert reply["id"] == cid
    usable = topic and not any(level in ("+", "#") or "\x00" in level for level in topic.split("/"))
    assert harness.last_topic == (topic if usable else "kiosk/fz/reply")


def test_oversized_and_nested_payloads(harness: Harness) -> None:
    assert harness.send(b"{" * (MAX_PAYLOAD + 1))["error"]["code"] == "payload_too_large"
    deep = b"[" * 2000 + b"]" * 2000  # fits the size cap, nests deeper than json's default
    reply = harness.send(deep)
    assert reply["error"]["code"] in ("invalid_json", "invalid_request")
