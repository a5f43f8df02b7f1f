"""The daemon as a real process against a real mosquitto."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.devtools.broker import Mosquitto
from appliance.devtools.controller import Controller
from appliance.protocol.messages import StatusMessage, parse_message
from appliance.store import Store
from tests.helpers import DaemonProcess, drain_json, get_json, wait_for, wait_online

DaemonFactory = Callable[..., DaemonProcess]


def test_birth_message_is_retained_and_describes_the_kiosk(
    broker: Mosquitto, controller: Controller, daemon_factory: DaemonFactory
) -> None:
    t0 = time.time()
    d = daemon_factory(broker, "kiosk-birth").start()
    birth = wait_online(controller, "kiosk-birth", after=t0)
    assert birth["device"] == "kiosk-birth"
    assert birth["profile"] == "sim"
    assert birth["version"]
    assert set(birth["devices"]) == {"camera", "fingerprint", "card"}
    assert birth["devices"]["camera"] == "disabled"
    # A late subscriber sees the same message because it is retained.
    with Controller(broker.host, broker.port) as late:
        q = late.subscribe("kiosk/kiosk-birth/status")
        _topic, payload, retained = q.get(timeout=5)
        assert retained and json.loads(payload)["online"] is True
    # Rendered with the wire contract's model, in the bytes the kiosk has always sent.
    status = parse_message(StatusMessage, payload, "status")
    assert status.state == "online" and status.broker and status.connected_at
    assert b'"online": true' in payload
    assert d.terminate() == 0


def test_last_will_marks_offline_after_kill9_and_clean_stop_says_shutdown(
    broker: Mosquitto, controller: Controller, daemon_factory: DaemonFactory
) -> None:
    t0 = time.time()
    d = daemon_factory(broker, "kiosk-lwt").start()
    wait_online(controller, "kiosk-lwt", after=t0)
    q = controller.subscribe("kiosk/kiosk-lwt/status")
    d.kill9()
    will = get_json(q, 10, lambda m: m.get("online") is False)
    assert will["reason"] == "lost"
    assert "ts" not in will and will["last_seen"] == will["connected_at"]
    assert StatusMessage.model_validate(will).state == "lost"

    t1 = time.time()
    d.start()
    wait_online(controller, "kiosk-lwt", after=t1)
    q = controller.subscribe("kiosk/kiosk-lwt/status")
    assert d.terminate() == 0
    bye = get_json(q, 10, lambda m: m.get("online") is False)
    assert bye["reason"] == "shutdown"
    assert StatusMessage.model_validate(bye).state == "offline" and bye["ts"] >= t1


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_command_round_trip(
    broker: Mosquitto, daemon_factory: DaemonFactory, protocol: str
) -> None:
    dev = f"kiosk-rt{protocol.replace('.', '')}"
    d = daemon_factory(broker, dev, extra_toml="", dev=True)
    if protocol == "3.1.1":
        text = d.config_path.read_text().replace("[mqtt]\n", '[mqtt]\nprotocol = "3.1.1"\n')
        d.config_path.write_text(text)
    with Controller(broker.host, broker.port, protocol=protocol) as ctl:
        t0 = time.time()
        d.start()
        wait_online(ctl, dev, after=t0)
        reply = ctl.request(dev, "ping", {"echo": "xin chào"})
        assert reply["ok"] is True
        assert reply["result"]["pong"] is True
        assert reply["result"]["echo"] == "xin chào"
        status = ctl.request(dev, "status")["result"]
        assert status["online"] is True and status["device"] == dev
        diag = ctl.request(dev, "diagnostics")["result"]
        assert diag["mqtt"]["protocol"] == protocol
        assert diag["store"]["schema_version"] >= 1
        cfg = ctl.request(dev, "config.get", {"section": "mqtt"})["result"]
        assert cfg["config"]["port"] == broker.port
    d.terminate()


MALFORMED = [
    (b"not json at all", "invalid_json"),
    (b"\xff\xfe\x00garbage", "invalid_json"),
    (b"[1, 2, 3]", "invalid_request"),
    (b"[" * 3000, "invalid_json"),  # hostile nesting: RecursionError inside json.loads
    (b'{"cmd": "ping"}', "invalid_request"),
    (b'{"id": "has space", "cmd": "ping"}', "invalid_request"),
    (b'{"id": "m1", "cmd": "ping", "extra": 1}', "invalid_request"),
    (b'{"id": "m2", "cmd": "launch.missiles"}', "unknown_command"),
    (b'{"id": "m3", "cmd": "ping", "args": {"unexpected": true}}', "invalid_args"),
    (b'{"id": "m4", "cmd": "ping", "args": {"echo": 42}}', "invalid_args"),
    (b'{"id": "m5", "cmd": "config.get", "args": {"section": "../etc"}}', "invalid_args"),
    (b'{"id": "m6", "cmd": "config.get", "args": {"section": "nope"}}', "invalid_args"),
    (b'{"id": "m7", "cmd": "ping", "args": {"echo": "' + b"x" * 5000 + b'"}}', "payload_too_large"),
]


def test_malformed_inputs_get_precise_error_codes_and_the_daemon_survives(
    broker: Mosquitto, controller: Controller, daemon_factory: DaemonFactory
) -> None:
    d = daemon_factory(
        broker, "kiosk-bad", extra_toml="[commands]\nmax_payload_bytes = 4096\n", dev=True
    )
    t0 = time.time()
    d.start()
    wait_online(controller, "kiosk-bad", after=t0)
    for raw, code in MALFORMED:
        reply = controller.request("kiosk-bad", "", raw=raw)
        assert reply["ok"] is False, raw
        assert reply["error"]["code"] == code, (raw, reply)
        assert reply["error"]["message"]
    # Still alive and serving, and every refusal was audited.
    assert controller.request("kiosk-bad", "ping")["ok"] is True
    assert d.terminate() == 0
    store = Store(d.state_dir)
    outcomes = [r["outcome"] for r in store.audit_tail(100)]
    store.close()
    for _raw, code in MALFORMED:
        assert code in outcomes


def test_repeated_command_id_executes_once_and_gets_the_first_reply(
    broker: Mosquitto, controller: Controller, daemon_factory: DaemonFactory
) -> None:
    d = daemon_factory(broker, "kiosk-once", dev=True)
    t0 = time.time()
    d.start()
    wait_online(controller, "kiosk-once", after=t0)
    events = controller.subscribe("kiosk/kiosk-once/events/note")
    first = controller.request("kiosk-once", "note", {"text": "cable replaced"}, cid="n-1")
    second = controller.request("kiosk-once", "note", {"text": "cable replaced"}, cid="n-1")
    assert first == second
    assert first["ok"] is True
    get_json(events, 10, lambda m: m["data"]["command_id"] == "n-1")
    # A different command with a reused id is not executed either, and does not get the
    # other command's reply (a signer entitled to ping may not be entitled to that reply).
    third = controller.request("kiosk-once", "ping", cid="n-1")
    assert (third["id"], third["ok"], third["error"]["code"]) == ("n-1", False, "invalid_request")
    d.terminate()
    store = Store(d.state_dir)
    rows = store.conn.execute("SELECT count(*) FROM commands WHERE id='n-1'").fetchone()
    store.close()
    assert rows[0] == 1


def test_command_sent_while_daemon_down_runs_once_after_restart(
    broker: Mosquitto, controller: Controller, daemon_factory: DaemonFactory
) -> None:
    d = daemon_factory(broker, "kiosk-away", dev=True)
    t0 = time.time()
    d.start()
    wait_online(controller, "kiosk-away", after=t0)  # the persistent session now exists
    assert d.terminate() == 0
    events = controller.subscribe("kiosk/kiosk-away/events/note")
    pending = controller.send("kiosk-away", "note", {"text": "queued"}, cid="away-1")
    controller.send("kiosk-away", "note", {"text": "queued"}, cid="away-1")  # a duplicate
    d.start()
    reply = pending.get(timeout=15)
    assert reply["ok"] is True and reply["id"] == "away-1"
    note = get_json(events, 10, lambda m: m["data"]["command_id"] == "away-1")
    assert note["seq"] == reply["result"]["seq"]
    # Exactly one note event for the id: the duplicate got the stored reply.
    ping = controller.request("kiosk-away", "ping")
    assert ping["ok"]
    extra = [m for m in drain_json(events) if m["data"].get("command_id") == "away-1"]
    assert extra == []
    d.terminate()


def test_outbox_survives_broker_outage_and_drains_in_order(
    make_broker: Callable[..., Mosquitto], daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    b = make_broker()
    d = daemon_factory(b, "kiosk-outage", dev=True)
    with Controller(b.host, b.port) as ctl:
        t0 = time.time()
        d.start()
        wait_online(ctl, "kiosk-outage", after=t0)
    b.stop()
    # A local producer (the kiosk UI, say) queues 1,000 events while the broker is down.
    store = Store(d.state_dir)
    stored = []
    for i in range(0, 1000, 100):
        stored += store.outbox.put_many(
            [("ui.tap", "kiosk/kiosk-outage/events/ui.tap", {"n": n}) for n in range(i, i + 100)]
        )
    store.close()
    assert len(stored) == 1000
    b.start()
    with Controller(b.host, b.port) as ctl:
        q = ctl.subscribe("kiosk/kiosk-outage/events/#")
        got: dict[str, dict[str, object]] = {}
        order: list[int] = []
        deadline = time.monotonic() + 60
        while len(got) < 1000 and time.monotonic() < deadline:
            msg = get_json(q, 30)
            if msg["id"] in got:  # a duplicate (re-sent after a lost PUBACK): drop by id
                continue
            got[msg["id"]] = msg
            order.append(int(msg["seq"]))
    assert len(got) == 1000
    assert {eid for _s, eid in stored} == set(got)
    assert order == sorted(order), "events must arrive in seq order"
    assert [m["data"]["n"] for m in sorted(got.values(), key=lambda m: m["seq"])] == list(
        range(1000)
    )
    wait_for(lambda: Store(d.state_dir).outbox.depth() == 0, 10, "outbox drained")
    d.terminate()


def test_kill9_while_queueing_loses_no_event_reported_stored(
    broker: Mosquitto, controller: Controller, daemon_factory: DaemonFactory
) -> None:
    d = daemon_factory(broker, "kiosk-crash", dev=True)
    t0 = time.time()
    d.start()
    wait_online(controller, "kiosk-crash", after=t0)
    events = controller.subscribe("kiosk/kiosk-crash/events/note")
    # Fire notes without waiting; a reply means "stored". Kill the daemon mid-stream.
    queues = [
        controller.send("kiosk-crash", "note", {"text": f"n{i}"}, cid=f"k-{i}") for i in range(300)
    ]
    wait_for(lambda: sum(1 for q in queues if not q.empty()) >= 50, 20, "50 stored replies")
    d.kill9()
    acknowledged = {}
    for q in queues:
        if not q.empty():
            r = q.get_nowait()
            if r["ok"]:
                acknowledged[r["result"]["event_id"]] = r["result"]["seq"]
    assert len(acknowledged) >= 50
    t1 = time.time()
    d.start()
    wait_online(controller, "kiosk-crash", after=t1)
    seen: set[str] = set()
    deadline = time.monotonic() + 30
    while not set(acknowledged) <= seen and time.monotonic() < deadline:
        seen.add(get_json(events, 30)["id"])
    assert set(acknowledged) <= seen
    d.terminate()
    store = Store(d.state_dir)
    assert store.integrity_check() == "ok"
    store.close()


def test_systemd_notify_ready_status_and_watchdog(
    broker: Mosquitto, daemon_factory: DaemonFactory, notify_socket: tuple[str, object]
) -> None:
    path, sock = notify_socket
    d = daemon_factory(broker, "kiosk-sd", env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    d.start()
    messages: list[str] = []

    def recv_until(pred: Callable[[str], bool]) -> str:
        while True:
            data = sock.recv(4096).decode()  # type: ignore[attr-defined]
            messages.append(data)
            if pred(data):
                return data

    ready = recv_until(lambda m: "READY=1" in m)
    assert "STATUS=connected" in ready
    assert f"MAINPID={d.proc.pid}" in ready  # type: ignore[union-attr]
    recv_until(lambda m: m == "WATCHDOG=1")
    recv_until(lambda m: m == "WATCHDOG=1")  # repeatedly, while healthy
    d.proc.terminate()  # type: ignore[union-attr]
    recv_until(lambda m: "STOPPING=1" in m)
    assert d.proc.wait(15) == 0  # type: ignore[union-attr]


def test_broker_outage_is_reported_in_status_line(
    make_broker: Callable[..., Mosquitto],
    daemon_factory: DaemonFactory,
    notify_socket: tuple[str, object],
) -> None:
    path, sock = notify_socket
    b = make_broker()
    d = daemon_factory(b, "kiosk-sd2", env={"NOTIFY_SOCKET": path})
    d.start()

    def recv_until(pred: Callable[[str], bool]) -> str:
        while True:
            data = sock.recv(4096).decode()  # type: ignore[attr-defined]
            if pred(data):
                return data

    recv_until(lambda m: "READY=1" in m)
    b.stop()
    assert "STATUS=disconnected" in recv_until(lambda m: "STATUS=disconnected" in m)
    b.start()
    assert "STATUS=connected" in recv_until(lambda m: "STATUS=connected" in m)
    d.terminate()
