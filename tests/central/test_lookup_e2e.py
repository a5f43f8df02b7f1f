"""Citizen lookup in the production configuration: mosquitto with mutual TLS and the shipped
ACL, the directory as the ACL's ``directory`` identity signing with a ``directory`` key, the
receiver as ``central``, the daemon as a real process with its own certificate, every command
signed under the fleet root (``citizen.lookup`` and the enrollment session with a correction
request, captured by the simulated camera)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance.central.citizens import synthetic_citizen
from appliance.central.directory import (
    Directory,
    DirectoryCore,
    DirectoryStore,
    corrections_hook,
    load_directory_key,
)
from appliance.central.keys import load_central_keys
from appliance.central.receiver import Receiver, ReceiverCore
from appliance.central.store import PackageStore
from appliance.devtools.broker import Mosquitto
from appliance.devtools.controller import Controller
from appliance.devtools.fleetkit import FleetKit
from appliance.timekeeping import TIMESYNC_FLAG
from appliance.trust.keys import load_public_key
from tests.helpers import ROOT, DaemonProcess, wait_for, wait_online

DEV = "kiosk-lookup"


@dataclass
class Centre:
    store: DirectoryStore
    core: DirectoryCore
    packages: PackageStore
    receiver: ReceiverCore


def _tls(kit: FleetKit, port: int, identity: str) -> dict[str, Any]:
    o = kit.options(port, identity)
    return {"ca_certs": str(o.ca_file), "certfile": str(o.cert_file), "keyfile": str(o.key_file)}


@pytest.fixture
def kiosk(
    tls_broker: Mosquitto,
    signed_controller: Controller,
    daemon_factory: Callable[..., DaemonProcess],
) -> Iterator[DaemonProcess]:
    d = daemon_factory(tls_broker, DEV)
    text = d.config_path.read_text().replace("[hardware.camera]\nenabled = false\n", "")
    d.config_path.write_text(text)
    d.start()
    wait_online(signed_controller, DEV, timeout=30)
    yield d
    d.terminate()


@pytest.fixture
def centre(
    fleet_kit: FleetKit, tls_broker: Mosquitto, kiosk: DaemonProcess, tmp_path: Path
) -> Iterator[Centre]:
    store = DirectoryStore(tmp_path / "directory.sqlite")
    today = dt.date.today()
    store.load(
        {
            "CIT-LK-1": synthetic_citizen("CIT-LK-1", today=today).model_copy(
                update={"old_id_number": "023456789"}
            ),
            "CIT-LK-2": synthetic_citizen("CIT-LK-2", today=today),
        }
    )
    packages = PackageStore(tmp_path / "central")
    core = DirectoryCore(store, load_directory_key(fleet_kit.home), lambda *_a: False)
    directory = Directory(
        core,
        host="localhost",
        port=tls_broker.port,
        tls=_tls(fleet_kit, tls_broker.port, "directory"),
    ).start()
    keys = load_central_keys(fleet_kit.home)
    device_pub = kiosk.state_dir / "device.pub"
    rcore = ReceiverCore(
        packages,
        keys.enrollment,
        keys.ingest,
        lambda dev: load_public_key(device_pub) if dev == DEV else None,
        lambda *_a: False,
        on_result=corrections_hook(store, packages),
    )
    receiver = Receiver(
        rcore,
        host="localhost",
        port=tls_broker.port,
        client_id="central-lookup-test",
        tls=_tls(fleet_kit, tls_broker.port, "central"),
    ).start()
    yield Centre(store, core, packages, rcore)
    receiver.stop(end_session=True)
    directory.stop()


def _ok(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply["ok"] is True, reply
    return dict(reply["result"])


def test_lookup_known_unknown_enrolled_and_a_correction_reaching_the_centre(
    centre: Centre, signed_controller: Controller, kiosk: DaemonProcess
) -> None:
    ctl = signed_controller
    today = dt.date.today()
    who = synthetic_citizen("CIT-LK-1", today=today)

    unknown = _ok(ctl.request(DEV, "citizen.lookup", {"number": "001099999999"}))
    assert unknown["status"] == "not_found" and unknown["citizen"] is None

    known = _ok(ctl.request(DEV, "citizen.lookup", {"number": who.personal_id}))
    assert known["status"] == "found" and known["enrollment"] == "none"
    record = known["citizen"]
    assert record["citizen_ref"] == "CIT-LK-1" and record["full_name"] == who.full_name
    by_cmnd = _ok(ctl.request(DEV, "citizen.lookup", {"number": "023456789"}))
    assert by_cmnd["citizen"] == record

    # A correction that breaks a rule is refused before it travels, naming the field.
    bad = ctl.request(
        DEV,
        "enrollment.start",
        {
            "citizen_ref": "CIT-LK-1",
            "finger_policy": [2],
            "corrections": [{"field": "sex", "original": who.sex, "requested": "X"}],
        },
    )
    assert bad["ok"] is False and bad["error"]["code"] == "citizen_invalid", bad
    assert "corrections.sex" in bad["error"]["message"]

    wanted = "Trần Thị Bình" if who.sex == "F" else "Trần Văn Bình"
    correction = {"field": "full_name", "original": who.full_name, "requested": wanted}
    _ok(
        ctl.request(
            DEV,
            "enrollment.start",
            {"citizen_ref": "CIT-LK-1", "finger_policy": [2], "corrections": [correction]},
        )
    )
    _ok(ctl.request(DEV, "enrollment.portrait", {"timeout_s": 30}, timeout=60))
    _ok(ctl.request(DEV, "enrollment.skip", {"position": 2, "reason": "bandaged"}))
    finished = _ok(ctl.request(DEV, "enrollment.finish", timeout=30))

    rows = wait_for(
        lambda: centre.store.corrections("CIT-LK-1"), 60, "the correction at the centre"
    )
    assert [(r["field"], r["original"], r["requested"], r["state"]) for r in rows] == [
        ("full_name", who.full_name, wanted, "pending")
    ]
    assert rows[0]["device"] == DEV and rows[0]["package_id"] == finished["package_id"]
    # the package says where its time came from: the directory's signed answers anchored the
    # kiosk's clock (docs/enrollment.md "Time"), unless the host's clock is NTP-synchronised
    manifest = json.loads(
        (centre.packages.package_dir(DEV, finished["package_id"]) / "manifest.json").read_text()
    )
    assert manifest["time_source"] == ("ntp" if TIMESYNC_FLAG.exists() else "signed_centre")
    assert manifest["time_anchor"]["source"] == manifest["time_source"]
    assert manifest["finished_at"] >= manifest["time_floor"]
    # the kiosk never edits the directory
    assert centre.store.find(who.personal_id)["full_name"] == who.full_name  # type: ignore[index]

    again = _ok(ctl.request(DEV, "citizen.lookup", {"number": who.personal_id}))
    assert again["enrollment"] == "completed"
    assert again["enrollments"][0]["package_id"] == finished["package_id"]
    other = _ok(
        ctl.request(
            DEV,
            "citizen.lookup",
            {"number": synthetic_citizen("CIT-LK-2", today=today).personal_id},
        )
    )
    assert other["status"] == "found" and other["enrollment"] == "none"

    # the records went to the screen, not into the kiosk's command log
    with sqlite3.connect(kiosk.state_dir / "appliance.db") as db:
        rows = db.execute("SELECT reply FROM commands WHERE name='citizen.lookup'").fetchall()
    stored = [json.loads(r[0])["result"] for r in rows]
    assert len(stored) == 5 and all(r["citizen"] == "(not stored)" for r in stored)
    assert [r["status"] for r in stored].count("found") == 4


def _flip_signature(payload: bytes) -> bytes:
    env = json.loads(payload)
    sig = bytearray(base64.b64decode(env["sig"]))
    sig[-1] ^= 0x40
    env["sig"] = base64.b64encode(bytes(sig)).decode()
    return json.dumps(env).encode()


def test_answers_with_a_bad_signature_the_wrong_key_or_for_another_request_refused(
    centre: Centre, signed_controller: Controller, fleet_kit: FleetKit
) -> None:
    ctl = signed_controller
    number = synthetic_citizen("CIT-LK-1", today=dt.date.today()).personal_id
    publish = centre.core.publish

    def tampered(topic: str, payload: bytes, corr: bytes | None) -> bool:
        return publish(topic, _flip_signature(payload), corr)

    centre.core.publish = tampered
    reply = ctl.request(DEV, "citizen.lookup", {"number": number, "timeout_s": 3}, timeout=15)
    assert reply["ok"] is False and reply["error"]["code"] == "bad_signature", reply

    centre.core.publish = publish
    centre.core.key = fleet_kit.signer("operator")  # a valid key of the fleet, wrong role
    reply = ctl.request(DEV, "citizen.lookup", {"number": number, "timeout_s": 3}, timeout=15)
    assert reply["ok"] is False and reply["error"]["code"] == "forbidden_role", reply

    centre.core.key = load_directory_key(fleet_kit.home)
    answer = centre.core.answer  # a genuine, signed answer bound to another request's nonce
    centre.core.answer = lambda req, rid, _nonce: answer(req, rid, "0" * 32)  # type: ignore[method-assign]
    reply = ctl.request(DEV, "citizen.lookup", {"number": number, "timeout_s": 3}, timeout=15)
    assert reply["ok"] is False and reply["error"]["code"] == "wrong_request", reply

    centre.core.answer = answer  # type: ignore[method-assign]
    assert _ok(ctl.request(DEV, "citizen.lookup", {"number": number}))["status"] == "found"


def _citizens_file(path: Path, entries: dict[str, dict[str, Any]]) -> Path:
    path.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    return path


def test_fleet_directory_cli_serves_the_kiosk(
    kiosk: DaemonProcess,
    fleet_kit: FleetKit,
    tls_broker: Mosquitto,
    signed_controller: Controller,
    tmp_path: Path,
) -> None:
    who = synthetic_citizen("CIT-LK-CLI", today=dt.date.today())
    entry = who.model_dump(mode="json", exclude_none=True, exclude={"citizen_ref"})
    cfile = _citizens_file(tmp_path / "citizens.json", {"CIT-LK-CLI": entry})
    base = [sys.executable, "-m", "appliance", "fleet", "directory", "--db", str(tmp_path / "d.db")]
    base += ["--store", str(tmp_path / "central")]

    # a bad file loads nothing and names the entry and the field
    bad = _citizens_file(
        tmp_path / "bad.json", {"CIT-BAD": {**entry, "date_of_birth": "2099-01-01"}}
    )
    proc = subprocess.run(
        [*base, "--citizens", str(bad), "--load-only", "--home", str(fleet_kit.home)],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "CIT-BAD.date_of_birth" in proc.stderr

    serving = subprocess.Popen(
        [*base, "--citizens", str(cfile), *fleet_kit.flags(tls_broker.port, "directory")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert serving.stdout is not None
        lines = []
        for line in serving.stdout:
            lines.append(line)
            if line.startswith("citizen directory:"):
                break
        assert lines and lines[-1].startswith("citizen directory: 1 record(s)"), lines
        res = _ok(signed_controller.request(DEV, "citizen.lookup", {"number": who.personal_id}))
        assert res["status"] == "found" and res["citizen"]["full_name"] == who.full_name
    finally:
        serving.terminate()
        out, _ = serving.communicate(timeout=20)
    assert serving.returncode == 0, out
    assert "stopped: 1 found" in out


def test_lookup_from_an_mqtt_311_kiosk(
    fleet_kit: FleetKit,
    tls_broker: Mosquitto,
    daemon_factory: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> None:
    """MQTT 3.1.1 carries no response topic nor correlation data: the answer arrives on the
    kiosk's own response topic all the same, bound by the request id in the signed body."""
    store = DirectoryStore(tmp_path / "directory.sqlite")
    who = synthetic_citizen("CIT-LK-311", today=dt.date.today())
    store.load({"CIT-LK-311": who})
    directory = Directory(
        DirectoryCore(store, load_directory_key(fleet_kit.home), lambda *_a: False),
        host="localhost",
        port=tls_broker.port,
        client_id="directory-311",
        tls=_tls(fleet_kit, tls_broker.port, "directory"),
    ).start()
    dev = "kiosk-lookup-311"
    d = daemon_factory(tls_broker, dev, '[mqtt]\nprotocol = "3.1.1"\n')
    text = d.config_path.read_text()
    # one [mqtt] table: the protocol line goes into the existing one
    text = text.replace('\n[mqtt]\nprotocol = "3.1.1"\n', "\n").replace(
        "[mqtt]\n", '[mqtt]\nprotocol = "3.1.1"\n', 1
    )
    d.config_path.write_text(text)
    assert text.count("[mqtt]\n") == 1 and text.count('protocol = "3.1.1"') == 1
    ctl = fleet_kit.controller(tls_broker.port, signer="fleet-all", protocol="3.1.1").connect()
    try:
        d.start()
        wait_online(ctl, dev, timeout=30)
        res = _ok(ctl.request(dev, "citizen.lookup", {"number": who.personal_id}))
        assert res["status"] == "found" and res["citizen"]["full_name"] == who.full_name
    finally:
        ctl.close()
        directory.stop()
        d.terminate()


def test_a_batch_fetched_before_leaving_answers_lookups_when_the_directory_is_gone(
    centre: Centre, signed_controller: Controller, kiosk: DaemonProcess, fleet_kit: FleetKit
) -> None:
    """Through mosquitto, TLS and the shipped ACL: the kiosk downloads a signed batch on the
    lookup topics with ``citizen.batch.fetch``; with the directory unreachable, ``citizen.
    lookup`` answers from the batch (``source: batch``, the batch's signed time); the kiosk's
    time floor has followed the directory's signed answers."""
    ctl = signed_controller
    who = synthetic_citizen("CIT-LK-2", today=dt.date.today())
    info = centre.store.create_batch("bt-e2e", numbers=[who.personal_id], valid_s=3600)
    assert info["total"] == 1
    missing = ctl.request(DEV, "citizen.batch.fetch", {"batch_id": "bt-none", "timeout_s": 10})
    assert missing["ok"] is False and missing["error"]["code"] == "batch_not_found", missing
    got = _ok(ctl.request(DEV, "citizen.batch.fetch", {"batch_id": "bt-e2e", "timeout_s": 20}))
    assert got["batch_id"] == "bt-e2e" and got["total"] == 1
    status = _ok(ctl.request(DEV, "citizen.batch.status", {}))
    assert status["batch"]["batch_id"] == "bt-e2e"
    online = _ok(ctl.request(DEV, "citizen.lookup", {"number": who.personal_id}))
    assert online["source"] == "directory"
    floor = json.loads((kiosk.state_dir / "time.json").read_text())["floor"]
    assert floor >= online["issued_at"]
    # the directory goes away (the broker stays: the request leaves, nothing answers)
    centre.core.publish = lambda *_a: False
    offline = _ok(ctl.request(DEV, "citizen.lookup", {"number": who.personal_id, "timeout_s": 2}))
    assert offline["source"] == "batch" and offline["status"] == "found"
    assert offline["citizen"]["full_name"] == who.full_name
    assert offline["issued_at"] == got["issued_at"]
    unknown = ctl.request(DEV, "citizen.lookup", {"number": "001099999999", "timeout_s": 2})
    assert unknown["ok"] is False and unknown["error"]["code"] == "directory_timeout"
