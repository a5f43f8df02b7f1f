"""Two ``appliance fleet controller`` instances (real processes) in one MQTT 5 shared
subscription group on a real mosquitto: every event reaches exactly one of them."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from appliance.devtools.broker import Mosquitto
from appliance.fleet.conn import release
from tests.helpers import ROOT, wait_for

N = 200


def start(broker: Mosquitto, home: Path, name: str, out: Path, group: str) -> subprocess.Popen[str]:
    # One group per test: a stopped instance's persistent session stays a member of its
    # group on the broker (see test_a_killed_instance_loses_nothing).
    p = subprocess.Popen(
        [sys.executable, "-m", "appliance.fleet.controllercli", "--home", str(home),
         "--host", broker.host, "--port", str(broker.port), "--group", group,
         "--instance", name, "--out", str(out), "--no-status", "--timeout", "60"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    assert p.stderr is not None
    line = p.stderr.readline()  # printed once the shared subscriptions are acknowledged
    assert line.startswith(f"controller {name} in group {group}: $share/{group}/"), line
    return p


def lines(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]


def test_two_controllers_split_a_shared_subscription(broker: Mosquitto, tmp_path: Path) -> None:
    home = tmp_path / "home"
    # a's file is in a directory that does not exist yet (docs: --out /var/log/fleet/...).
    a_out, b_out = tmp_path / "log" / "a.jsonl", tmp_path / "b.jsonl"
    a = start(broker, home, "a", a_out, "g-split")
    b = start(broker, home, "b", b_out, "g-split")
    pub = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
    )
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    ids = [uuid.uuid4().hex for _ in range(N)]
    try:
        for i, eid in enumerate(ids):
            body = {"id": eid, "seq": i + 1, "device": "kiosk-sh", "type": "note", "ts": 1.0,
                    "data": {"n": i}}  # fmt: skip
            pub.publish("kiosk/kiosk-sh/events/note", json.dumps(body), qos=1).wait_for_publish(5)
        # Every event lands in exactly one of the two files.
        wait_for(lambda: len(lines(a_out)) + len(lines(b_out)) >= N, 30, "all events recorded")
    finally:
        pub.disconnect()
        release(pub)
        for p in (a, b):
            p.terminate()
            p.communicate(timeout=20)
    got_a = [r["id"] for r in lines(a_out)]
    got_b = [r["id"] for r in lines(b_out)]
    assert len(got_a) + len(got_b) == N
    assert set(got_a).isdisjoint(got_b)
    assert set(got_a) | set(got_b) == set(ids)
    assert got_a and got_b  # the load was shared, not all on one instance
    rec = lines(a_out)[0]
    assert rec["instance"] == "a" and rec["type"] == "note" and rec["verified"] == "unknown"


def test_a_killed_instance_loses_nothing(broker: Mosquitto, tmp_path: Path) -> None:
    """kill -9 of one instance: the events the broker routes to its persistent session while
    it is away arrive when it is back; together the instances still see every event once."""
    home = tmp_path / "home"
    a_out, b_out = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a = start(broker, home, "ka", a_out, "g-kill")
    b = start(broker, home, "kb", b_out, "g-kill")
    pub = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
    )
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    ids = [uuid.uuid4().hex for _ in range(40)]

    def send(chunk: list[str]) -> None:
        for eid in chunk:
            body = {
                "id": eid,
                "seq": 1,
                "device": "kiosk-k9",
                "type": "note",
                "ts": 1.0,
                "data": {},
            }
            pub.publish("kiosk/kiosk-k9/events/note", json.dumps(body), qos=1).wait_for_publish(5)

    def seen() -> list[object]:
        return [r["id"] for r in lines(a_out) + lines(b_out)]

    try:
        send(ids[:10])
        wait_for(lambda: len(seen()) >= 10, 30, "the first events")
        a.kill()
        a.communicate(timeout=10)
        send(ids[10:])
        a = start(broker, home, "ka", a_out, "g-kill")
        wait_for(lambda: len(seen()) >= len(ids), 30, "every event after the restart")
    finally:
        pub.disconnect()
        release(pub)
        for p in (a, b):
            if p.poll() is None:
                p.terminate()
            p.communicate(timeout=20)
    assert sorted(map(str, seen())) == sorted(ids)  # each exactly once, none lost


def test_an_out_file_that_cannot_be_made_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("")
    r = subprocess.run(
        [sys.executable, "-m", "appliance.fleet.controllercli", "--home", str(tmp_path / "home"),
         "--out", str(tmp_path / "plain-file" / "events.jsonl"), "--timeout", "1"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"error: --out {tmp_path / 'plain-file' / 'events.jsonl'}: ")
    assert "Traceback" not in r.stderr
