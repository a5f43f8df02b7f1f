"""The whole flow on real components, in the production configuration: mosquitto with mutual
TLS and the shipped ACL, commands signed under the fleet root, the receiver as the ACL's
``central`` identity; the daemon on the simulated kit (fingerprint
emulator on a pty, generated camera scene, card emulator behind a private pcscd + vpcd), the
kiosk's own enrollment code, and ``appliance fleet enroll`` / ``appliance fleet issue`` as
real processes with the real receiver inside. Fingerprints at full pty speed
(``[simulation] line_rate = false``)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.central.citizens import synthetic_citizen
from appliance.central.demo import enroll_and_issue
from appliance.central.store import PackageStore
from appliance.devtools.broker import Mosquitto
from appliance.devtools.controller import Controller
from appliance.devtools.fleetkit import FleetKit
from appliance.lds.files import encode_dg2
from appliance.trust.keys import DeviceIdentity
from appliance.trust.sealed import scan_for_plaintext_biometrics
from tests.helpers import ROOT, DaemonProcess, get_json, wait_for, wait_online

DEV = "kiosk-e2e"


@pytest.fixture
def broker(tls_broker: Mosquitto) -> Mosquitto:
    """The production broker: mutual TLS, the shipped ACL."""
    return tls_broker


@pytest.fixture
def controller(signed_controller: Controller) -> Controller:
    """The fleet's controller certificate; every command signed under the fleet root."""
    return signed_controller


@pytest.fixture
def home(fleet_kit: FleetKit, tmp_path: Path) -> Path:
    """The fleet home of this test's tools: the kit's root, central and signing keys (the kiosk
    trusts that root and seals to that enrollment key), no devices approved yet."""
    return fleet_kit.home_copy(tmp_path / "fleet")


@pytest.fixture
def flags(fleet_kit: FleetKit, broker: Mosquitto) -> list[str]:
    """The fleet tools' broker flags: the controller certificate (the receiver inside
    ``fleet enroll`` takes central.crt next to it)."""
    return fleet_kit.flags(broker.port)[2:]


@pytest.fixture
def kiosk(
    broker: Mosquitto,
    controller: Controller,
    daemon_factory: Callable[..., DaemonProcess],
) -> Iterator[DaemonProcess]:
    d = daemon_factory(broker, DEV)
    text = d.config_path.read_text()
    for kind in ("camera", "fingerprint", "card"):
        text = text.replace(f"[hardware.{kind}]\nenabled = false\n", f"[hardware.{kind}]\n")
    text = text.replace(
        "[simulation]\nfingerprint = false\ncard = false\n",
        "[simulation]\nfingerprint = true\ncard = true\nline_rate = false\n",
    )
    d.config_path.write_text(text)
    t0 = time.time()
    d.start()
    wait_online(controller, DEV, after=t0, timeout=30)

    def healthy() -> bool:
        devices = controller.request(DEV, "status")["result"]["devices"]
        return all(devices[k]["state"] == "ok" for k in ("camera", "fingerprint", "card"))

    wait_for(healthy, 40, "camera, fingerprint and card healthy")
    yield d
    d.terminate()


def _fleet(args: list[str], flags: list[str], home: Path, timeout: float = 100) -> Any:
    """A fleet tool as a process: signed with <home>/operator, over TLS."""
    proc = subprocess.run(
        [sys.executable, "-m", *args, "--home", str(home), *flags, "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )
    return proc


def test_scripted_enrollment_verified_receipted_purged_and_card_issued(
    kiosk: DaemonProcess, flags: list[str], home: Path, controller: Controller
) -> None:
    state = kiosk.state_dir
    proc = _fleet(
        [
            "appliance.central.enrollcli",
            DEV,
            "--citizen-ref",
            "CIT-E2E-1",
            "--exception",
            "10:missing",
            "--skip",
            "6:bandaged",
            "--attempts",
            "1",
            "--register-device-key",
            str(state / "device.pub"),
            "--issue",
            "--synthetic",
            "--ds-dir",
            str(state / "sim" / "pki"),
        ],
        flags,
        home,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    names = [s["name"] for s in report["steps"]]
    assert names[:2] == ["start", "portrait"]
    assert "finger 6 (left thumb)" in names and "upload" in names
    assert report["plan"] == [2, 3, 4, 5, 7, 8, 9, 1, 6]
    assert report["upload_status"] == "complete" and report["unverified_replies"] == 0
    assert report["receipt"]["status"] == "verified" and report["receipt"]["records"] == 9
    assert report["purged"] is True
    v = report["verification"]
    assert v["status"] == "complete"
    kinds = [r["kind"] for r in v["summary"]["records"]]
    assert kinds == ["face"] + ["finger"] * 8
    assert {e["position"]: e["reason"] for e in v["summary"]["exceptions"]} == {
        10: "missing",
        6: "bandaged",
    }
    assert v["summary"]["signer_key_id"] == DeviceIdentity.load(state).key_id
    issue = report["issue"]
    assert issue["outcome"] == "issued", issue
    assert issue["result"]["passive_authentication"]["passed"] is True
    assert set(issue["result"]["files"]) == {"EF.COM", "DG1", "DG2", "DG13", "EF.SOD"}
    # The centre holds the plaintext records (0600); the kiosk holds nothing any more.
    store = PackageStore(home / "central")
    d = store.package_dir(DEV, report["package_id"])
    assert len(list((d / "records").iterdir())) == 9
    assert list((state / "sealed").glob("*.sealed")) == []
    assert scan_for_plaintext_biometrics([state]) == []
    # DG2 on the card is the portrait the centre verified: read the card back with the
    # synthetic citizen's BAC keys.
    citizen = synthetic_citizen("CIT-E2E-1")
    mrz = citizen.td1()
    read = controller.request(
        DEV,
        "card.read",
        {"document_number": mrz.document_number, "birth": mrz.birth, "expiry": mrz.expiry},
        timeout=60,
    )
    assert read["ok"] is True, read
    dg2 = encode_dg2([store.portrait(DEV, report["package_id"])])
    assert read["result"]["dg2"]["sha256"] == hashlib.sha256(dg2).hexdigest()
    assert read["result"]["dg2"]["sha256"] == issue["result"]["files"]["DG2"]["sha256"]
    assert read["result"]["dg13"]["full_name"] == citizen.full_name
    # ``appliance fleet issue`` alone, from the stored enrollment: a second blank card.
    again = _fleet(
        [
            "appliance.central.issuecli",
            DEV,
            "--citizen-ref",
            "CIT-E2E-1",
            "--synthetic",
            "--ds-dir",
            str(state / "sim" / "pki"),
        ],
        flags,
        home,
    )
    out = json.loads(again.stdout)
    assert out["enrollment_package"] == report["package_id"]
    if again.returncode == 0:
        assert out["outcome"] == "issued"
    else:
        # The emulated card is written and locked now: the kiosk refuses, with a reason.
        assert again.returncode == 1 and out["error"]["code"], out


def test_package_signed_by_another_key_is_refused_and_kept_on_the_kiosk(
    kiosk: DaemonProcess, flags: list[str], home: Path, tmp_path: Path
) -> None:
    # The fleet has another key on record for this kiosk (a swapped disk, a forged package).
    other = DeviceIdentity.create(tmp_path / "other")
    proc = _fleet(
        [
            "appliance.central.enrollcli",
            DEV,
            "--policy",
            "2,7",
            "--attempts",
            "1",
            "--register-device-key",
            str(tmp_path / "other" / "device.pub"),
            "--upload-timeout",
            "60",
        ],
        flags,
        home,
    )
    assert other.key_id
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["upload_status"] == "rejected"
    assert report["verification"]["code"] == "bad_signature"
    assert report["unverified_replies"] > 0  # every reply was flagged too
    # The kiosk keeps its sealed records for a technician; no plaintext anywhere.
    sealed = list((kiosk.state_dir / "sealed").glob("*.sealed"))
    assert len(sealed) == 3
    assert scan_for_plaintext_biometrics([kiosk.state_dir]) == []
    assert not (home / "central" / DEV / report["package_id"] / "records").exists()


def test_receiver_killed_while_the_real_kiosk_uploads(
    broker: Mosquitto,
    controller: Controller,
    fleet_kit: FleetKit,
    daemon_factory: Callable[..., DaemonProcess],
    home: Path,
    tmp_path: Path,
) -> None:
    """The kiosk's own uploader against the receiver process: SIGSTOP at the first ack (the
    upload is then certainly unfinished), SIGKILL, restart; the kiosk's re-sends and the
    broker's queued chunks complete the package and the kiosk purges it."""
    import os
    import signal

    from tests.central.procs import ReceiverProc

    d = daemon_factory(broker, DEV)
    text = d.config_path.read_text()
    for kind in ("camera", "fingerprint"):
        text = text.replace(f"[hardware.{kind}]\nenabled = false\n", f"[hardware.{kind}]\n")
    text = text.replace(
        "[simulation]\nfingerprint = false\ncard = false\n",
        "[simulation]\nfingerprint = true\ncard = false\nline_rate = false\n",
    )
    text += "[enrollment]\nchunk_bytes = 1024\nupload_window = 4\nchunk_timeout_s = 1\n"
    d.config_path.write_text(text)
    t0 = time.time()
    d.start()
    wait_online(controller, DEV, after=t0, timeout=30)
    wait_for(
        lambda: (
            controller.request(DEV, "status")["result"]["devices"]["fingerprint"]["state"] == "ok"
        ),
        30,
        "fingerprint healthy",
    )
    from appliance.central.clitools import register_device_key

    register_device_key(home, DEV, d.state_dir / "device.pub")
    receiver = ReceiverProc(
        home, broker, tmp_path / "receiver.log", fleet_kit.flags(broker.port, "central")[2:]
    )
    receiver.start()
    try:
        acks = controller.subscribe(f"kiosk/{DEV}/upload/ack")
        events = controller.subscribe(f"kiosk/{DEV}/events/enrollment.purged")

        def ok(reply: dict[str, Any]) -> dict[str, Any]:
            assert reply["ok"] is True, reply
            result: dict[str, Any] = reply["result"]
            return result

        ok(
            controller.request(
                DEV, "enrollment.start", {"citizen_ref": "CIT-K9", "finger_policy": [2]}
            )
        )
        ok(controller.request(DEV, "enrollment.portrait", {"timeout_s": 20}, timeout=60))
        ok(controller.request(DEV, "enrollment.finger", {"attempts": 1}, timeout=60))
        fin = ok(controller.request(DEV, "enrollment.finish", timeout=60))
        assert fin["bytes"] > 20 * 1024  # dozens of 1 KiB chunks
        pid = fin["package_id"]
        get_json(acks, 30, lambda a: a.get("package_id") == pid and "received" in a)
        assert receiver.proc is not None
        os.kill(receiver.proc.pid, signal.SIGSTOP)
        store = PackageStore(home / "central")
        assert store.result(DEV, pid) is None  # stopped mid-upload
        receiver.kill9()
        receiver.start()
        purged = get_json(events, 60, lambda m: m["data"].get("package_id") == pid)
        assert purged["type"] == "enrollment.purged"
        res = store.result(DEV, pid)
        assert res is not None and res["status"] == "complete"
        assert list((d.state_dir / "sealed").glob("*.sealed")) == []
        assert scan_for_plaintext_biometrics([d.state_dir]) == []
    finally:
        receiver.stop()
        d.terminate()


def test_demo_helper_runs_the_flow_and_prints_the_summary(
    kiosk: DaemonProcess,
    broker: Mosquitto,
    flags: list[str],
    home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from appliance.central.clitools import register_device_key

    register_device_key(home, DEV, kiosk.state_dir / "device.pub")  # approved, as by a claim
    rc = enroll_and_issue(
        home, device=DEV, state_dir=kiosk.state_dir, port=broker.port, broker=flags
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "finger 6 (left thumb)" in out and "skipped: bandaged" in out
    assert "Package verified by the centre: device signature ok" in out
    assert "exceptions 6:bandaged, 10:missing" in out
    assert "the kiosk purged its sealed copy" in out
    assert "Card issued and verified" in out and "passive authentication ok" in out
