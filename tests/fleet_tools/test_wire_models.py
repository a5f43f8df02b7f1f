"""The fleet tools parse what kiosks send with the wire contract's models (issue 13): ``fleet
watch`` (its ``EventStream``, which the controller and the fleet service share) and ``fleet send``
on a real mosquitto. A message that is not the contract's shape is logged with the field at
fault and counted; the tool goes on with the next message."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from pathlib import Path

import pytest

from appliance.devtools.broker import Mosquitto
from appliance.fleet import sendcli, watchcli
from appliance.fleet.conn import BrokerOptions, FleetMqtt
from appliance.fleet.keys import generate_operator_key, issue_operator, write_certificate
from appliance.fleet.watch import EventStream, Seen
from appliance.protocol.messages import EventMessage, StatusMessage, TelemetryMessage
from appliance.protocol.topics import Topics
from appliance.trust.certs import FleetRoot


def _event(dev: str, eid: str, seq: int, **data: object) -> bytes:
    body = {"id": eid, "seq": seq, "device": dev, "type": "note", "ts": time.time(), "data": data}
    return json.dumps(body).encode()


def test_the_stream_parses_each_message_once_and_counts_the_malformed(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    opts = BrokerOptions(host=broker.host, port=broker.port)
    seen: queue.Queue[Seen] = queue.Queue()
    dev = "kiosk-wm1"
    t = Topics("kiosk", dev)
    stream = EventStream(opts, {}, seen.put, devices=[dev], status=True, telemetry=True).start()
    try:
        with FleetMqtt(opts) as pub, caplog.at_level(logging.WARNING, "appliance.fleet.watch"):
            pub.publish(t.event("note"), b'{"id": "e0", "seq": 1, "device": "x"}')  # no ts, ...
            pub.publish(t.status, b"not json")
            pub.publish(t.telemetry, json.dumps({"device": dev, "ts": 1.0}).encode())
            pub.publish(t.event("note"), _event(dev, "e1", 1, text="a"))
            pub.publish(t.event("note"), _event(dev, "e1", 1, text="a"))  # a re-send: dropped
            pub.publish(
                t.status, json.dumps({"online": False, "device": dev, "reason": "lost"}).encode()
            )
            first, second = seen.get(timeout=10), seen.get(timeout=10)
        # Only the contract's messages are shown, each with its parsed model.
        assert isinstance(first.message, EventMessage) and first.message.data == {"text": "a"}
        assert first.body["id"] == "e1" and first.body["seq"] == 1
        assert isinstance(second.message, StatusMessage) and second.to_json()["state"] == "lost"
        assert "ts" not in second.body  # the will has no time of its own: not made up
        assert (stream.malformed, stream.duplicates, stream.count) == (3, 1, 2)
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert (
            f"kiosk/{dev}/events/note: malformed event: type: Field required; "
            "ts: Field required; data: Field required (malformed_message; not shown)"
        ) in logged
        assert f"kiosk/{dev}/status: malformed status: (root): Invalid JSON" in logged
        assert f"kiosk/{dev}/telemetry: malformed telemetry: uptime_s: Field required" in logged
        assert "malformed_message" in logged
        assert seen.empty()
    finally:
        stream.stop()


def test_watch_skips_a_malformed_status_and_shows_the_good_one(
    broker: Mosquitto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI end to end: of two retained statuses, the one that is not the contract's is
    skipped, the good one printed (``--json``), and the tool exits 0."""
    opts = BrokerOptions(host=broker.host, port=broker.port)
    bad, good = Topics("kiosk", "kiosk-wm2a"), Topics("kiosk", "kiosk-wm2b")
    with FleetMqtt(opts) as pub:
        pub.publish(bad.status, b'{"online": "maybe", "device": "kiosk-wm2a"}', retain=True)
        birth = {"online": True, "device": "kiosk-wm2b", "ts": time.time(), "version": "9.1"}
        pub.publish(good.status, json.dumps(birth).encode(), retain=True)
        try:
            args = ["--status", "--device", "kiosk-wm2*", "--json", "--count", "1"]
            args += ["--timeout", "20", "--home", str(tmp_path), "--host", broker.host]
            assert watchcli.main([*args, "--port", str(broker.port)]) == 0
        finally:
            pub.publish(bad.status, b"", retain=True)
            pub.publish(good.status, b"", retain=True)
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert (line["device"], line["kind"], line["state"]) == ("kiosk-wm2b", "status", "online")
    assert line["data"]["version"] == "9.1" and line["verified"] == "unknown"


def test_send_names_the_field_of_a_malformed_reply(
    broker: Mosquitto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reply that is not the contract's (``ok: false`` without its ``error``): ``fleet send``
    says which field is wrong (``malformed_message``) instead of crashing; exit 3, as for
    any reply of a kiosk without an approved key in this fleet home."""
    home = tmp_path / "home"
    FleetRoot.create(home)
    pub = generate_operator_key(home, "operator")
    cert = issue_operator(
        home, pub, roles=["operator"], not_after=int(time.time()) + 600, name="operator",
        devices=["kiosk-wm3"],
    )  # fmt: skip
    write_certificate(home / "operator.cert", cert)
    opts = BrokerOptions(host=broker.host, port=broker.port)
    t = Topics("kiosk", "kiosk-wm3")
    with FleetMqtt(opts) as kiosk:
        cmds = kiosk.collector(t.cmd)
        kiosk.subscribe([t.cmd])

        def answer() -> None:
            for _ in range(2):
                cmd = cmds.get(timeout=20)
                kiosk.publish(
                    t.reply,
                    b'{"id": null, "cmd": "ping", "ok": false}',
                    correlation_data=cmd.correlation_data,
                )

        replier = threading.Thread(target=answer, daemon=True)
        replier.start()
        flags = ["--home", str(home), "--host", broker.host, "--port", str(broker.port)]
        assert sendcli.main(["kiosk-wm3", "ping", "--timeout", "20", *flags]) == 3
        out = capsys.readouterr().out
        assert "kiosk-wm3: FAILED [unverified] malformed_message: malformed reply: " in out
        assert "error: required when ok is false" in out
        assert sendcli.main(["kiosk-wm3", "ping", "--json", "--timeout", "20", *flags]) == 3
        line = json.loads(capsys.readouterr().out)
        assert line["reply"]["error"]["code"] == "malformed_message"
        assert line["reply"]["error"]["details"]["problems"] == ["error: required when ok is false"]
        replier.join(20)


def test_the_models_are_the_ones_the_tools_show() -> None:
    """Telemetry parses with the contract's model too (the heartbeat ``fleet devices`` reads
    the outbox depth from)."""
    msg = TelemetryMessage.model_validate(
        {"device": "k", "ts": 1.0, "uptime_s": 2.0, "load": [0.0], "mem_total": None,
         "mem_available": None, "rss": None, "disk_free": None, "soc_temp_c": None,
         "outbox_depth": 3, "devices": {}}
    )  # fmt: skip
    assert msg.outbox_depth == 3
