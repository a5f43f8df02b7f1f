"""Enrollment end to end on the simulated kit over a real mosquitto in the production
configuration (mutual TLS, the shipped ACL, commands signed under the fleet root), including
kill -9 in the middle of a capture and of an upload, a broker outage during the upload, and
scans of the state and temporary directories for plaintext biometrics after each.

The central side here is a small protocol peer (reassemble chunks, check the package, ack,
send the signed receipt) connected as the ACL's ``central`` identity, so the device side is
tested on its own; appliance/central has the real receiver."""

from __future__ import annotations

import hashlib
import json
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from appliance.devtools.broker import Mosquitto
from appliance.devtools.controller import Controller
from appliance.devtools.fleetkit import FleetKit
from appliance.enrollment import package as pk
from appliance.protocol import package as contract
from appliance.trust.certs import FleetRoot, OperatorKey
from appliance.trust.keys import (
    DeviceSignature,
    load_public_key,
    verify_device_message,
)
from appliance.trust.sealed import (
    EnrollmentKeyPair,
    build_ack,
    read_sealed_file,
    scan_for_plaintext_biometrics,
)
from tests.helpers import DaemonProcess, get_json, wait_for, wait_online

DEV = "kiosk-enroll"


@pytest.fixture
def broker(tls_broker: Mosquitto) -> Mosquitto:
    """The production broker: mutual TLS, the shipped ACL."""
    return tls_broker


@pytest.fixture
def controller(signed_controller: Controller) -> Controller:
    """The fleet's controller certificate; every command signed under the fleet root."""
    return signed_controller


@dataclass
class Central:
    """A minimal central peer speaking docs/enrollment.md over the broker."""

    ctl: Controller
    enrollment: EnrollmentKeyPair
    ingest: OperatorKey
    ack: bool = True
    chunks: dict[str, dict[int, bytes]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    done: queue.Queue[tuple[str, dict[str, Any], list[bytes]]] = field(default_factory=queue.Queue)
    completed: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.q = self.ctl.subscribe(f"kiosk/{DEV}/upload/+")
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                topic, payload, _r = self.q.get(timeout=0.2)
            except queue.Empty:
                continue
            if topic.endswith(("/ack", "/receipt")):
                continue
            header, body = contract.decode_chunk(payload)
            pid = header.package_id
            self.chunks.setdefault(pid, {})[header.index] = body
            self.counts[pid] = header.count
            if self.ack:
                self.ctl.publish(
                    f"kiosk/{DEV}/upload/ack",
                    json.dumps({"package_id": pid, "received": [header.index]}),
                )
            if pid in self.completed:
                continue  # a re-announcement of a package already answered
            if len(self.chunks[pid]) == header.count and self.ack:
                self.completed.add(pid)
                data = b"".join(self.chunks[pid][i] for i in range(header.count))
                assert hashlib.sha256(data).hexdigest() == header.package_sha256
                self._complete(pid, data)

    def _complete(self, pid: str, data: bytes) -> None:
        c = contract.decode_container(data)
        manifest = json.loads(c.manifest_bytes)
        records = []
        for rec, blob in zip(manifest["records"], c.sealed_files, strict=True):
            assert hashlib.sha256(blob).hexdigest() != ""
            tmp = Path(tempfile.mkdtemp()) / "r.sealed"
            tmp.write_bytes(blob)
            hdr, sealed = read_sealed_file(tmp)
            assert hdr["sha256"] == rec["sealed_sha256"]
            plain = self.enrollment.unseal(sealed)
            assert pk.record_digest(plain) == rec["sha256"]
            records.append(plain)
        pk.verify_chain(manifest["records"], manifest["chain_head"])
        self.ctl.publish(
            f"kiosk/{DEV}/upload/ack", json.dumps({"package_id": pid, "status": "complete"})
        )
        receipt = build_ack(
            self.ingest, DEV, [(r["record_id"], r["sealed_sha256"]) for r in manifest["records"]]
        )
        self.ctl.publish(f"kiosk/{DEV}/upload/receipt", receipt)
        self.done.put(
            (
                pid,
                {
                    "manifest": manifest,
                    "signature": c.signature,
                    "manifest_bytes": c.manifest_bytes,
                },
                records,
            )
        )

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)


@pytest.fixture
def fleet(fleet_kit: FleetKit) -> tuple[FleetRoot, EnrollmentKeyPair, OperatorKey, Path]:
    """The kit's fleet root, central enrollment key pair and ingest signer (the kiosks of
    daemon_factory trust this root and seal to this enrollment key)."""
    home = fleet_kit.home
    ingest = OperatorKey.load(home / "ingest.key", home / "ingest.cert")
    return FleetRoot.load(home), EnrollmentKeyPair.load(home), ingest, home


def make_kiosk(
    daemon_factory: Callable[..., DaemonProcess],
    broker: Mosquitto,
    home: Path,
    *,
    line_rate: bool = False,
    extra: str = "",
) -> DaemonProcess:
    d = daemon_factory(broker, DEV)
    # The daemon's (and its emulators') temporary files go to a directory the test can scan.
    tmp = d.workdir / "tmp"
    tmp.mkdir()
    d.extra_env["TMPDIR"] = str(tmp)
    text = d.config_path.read_text()
    for kind in ("camera", "fingerprint", "card"):
        text = text.replace(f"[hardware.{kind}]\nenabled = false\n", f"[hardware.{kind}]\n")
    text = text.replace(
        "[simulation]\nfingerprint = false\ncard = false\n",
        f"[simulation]\nfingerprint = true\ncard = false\nline_rate = {str(line_rate).lower()}\n",
    )
    text = text.replace("[hardware.card]\n", "[hardware.card]\nenabled = false\n")
    assert f'enrollment_key = "{home}' in text  # trust from the kit (daemon_factory)
    d.config_path.write_text(text + extra)
    return d


def start(d: DaemonProcess, ctl: Controller) -> None:
    t0 = time.time()
    d.start()
    wait_online(ctl, DEV, after=t0)
    wait_for(
        lambda: ctl.request(DEV, "status")["result"]["devices"]["fingerprint"]["state"] == "ok",
        30,
        "the fingerprint sensor",
    )


def ok(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply["ok"] is True, reply
    result: dict[str, Any] = reply["result"]
    return result


def assert_no_plaintext(d: DaemonProcess) -> None:
    """Nothing with an image or biometric-record magic number in the state dir or in the
    daemon's temporary directory (its TMPDIR)."""
    roots = [d.state_dir, d.workdir / "tmp"]
    assert all(r.exists() for r in roots)
    found = scan_for_plaintext_biometrics(roots)
    assert found == [], found


@pytest.fixture
def central(fleet_kit: FleetKit, tls_broker: Mosquitto, fleet: Any) -> Iterator[Central]:
    _root, enr, ingest, _home = fleet
    with fleet_kit.controller(tls_broker.port, signer=None, identity="central") as conn:
        c = Central(conn, enr, ingest)
        yield c
        c.stop()


def test_full_enrollment_is_sealed_signed_uploaded_and_purged(
    broker: Mosquitto,
    controller: Controller,
    daemon_factory: Callable[..., DaemonProcess],
    fleet: Any,
    central: Central,
) -> None:
    _root, _enr, _ingest, home = fleet
    d = make_kiosk(daemon_factory, broker, home)
    start(d, controller)
    events = controller.subscribe(f"kiosk/{DEV}/events/#")
    s = ok(
        controller.request(
            DEV,
            "enrollment.start",
            {
                "citizen_ref": "CIT-0001",
                "finger_policy": "4-4-2",
                "exceptions": [{"position": 10, "reason": "missing"}],
            },
        )
    )
    assert s["plan"] == [2, 3, 4, 5, 7, 8, 9, 1, 6]
    # one session at a time; intrusive commands wait
    assert (
        controller.request(DEV, "enrollment.start", {"citizen_ref": "X"})["error"]["code"] == "busy"
    )
    assert controller.request(DEV, "camera.snapshot", {})["error"]["code"] == "busy"
    ok(controller.request(DEV, "enrollment.portrait", {"timeout_s": 20}, timeout=60))
    for _ in range(8):
        r = ok(
            controller.request(
                DEV, "enrollment.finger", {"min_quality": 20, "attempts": 1}, timeout=60
            )
        )
        assert 0 <= r["quality"] <= 100
    # The finger service's "lift" step reaches the wire as the session command's progress.
    get_json(
        events,
        10,
        lambda m: (
            m["type"] == "command.progress"
            and m["data"]["command"] == "enrollment.finger"
            and m["data"]["step"] == "lift"
        ),
    )
    ok(controller.request(DEV, "enrollment.skip", {"position": 6, "reason": "bandaged"}))
    review = ok(controller.request(DEV, "enrollment.review"))
    assert review["complete"] is True and review["remaining"] == []
    fin = ok(controller.request(DEV, "enrollment.finish", timeout=60))
    pid, info, records = central.done.get(timeout=60)
    assert pid == fin["package_id"]
    manifest = info["manifest"]
    assert [r["kind"] for r in manifest["records"]] == ["face"] + ["finger"] * 8
    assert {e["position"]: e["reason"] for e in manifest["exceptions"]} == {
        10: "missing",
        6: "bandaged",
    }
    assert records[0][:4] == b"FAC\x00" and all(r[:4] == b"FIR\x00" for r in records[1:])
    device_pub = load_public_key(d.state_dir / "device.pub")
    verify_device_message(
        device_pub, info["manifest_bytes"], DeviceSignature.from_header(info["signature"])
    )
    # One manifest model on both ends: the signed bytes are exactly the contract's Manifest
    # as the kiosk built it, and the centre's parse of them gives the same fields back.
    model = contract.Manifest.model_validate_json(info["manifest_bytes"])
    assert model.device == DEV and len(model.records) == len(manifest["records"])
    dumped = model.model_dump(mode="json", exclude_unset=True)
    assert (
        json.dumps(dumped, separators=(",", ":"), ensure_ascii=False).encode()
        == (info["manifest_bytes"])
    )
    get_json(
        events, 60, lambda m: m["type"] == "enrollment.purged" and m["data"]["package_id"] == pid
    )
    assert list((d.state_dir / "sealed").glob("*")) == []
    assert list((d.state_dir / "outgoing").glob("*")) == []
    assert_no_plaintext(d)
    d.terminate()


def test_kill9_mid_capture_resumes_the_session_without_plaintext(
    broker: Mosquitto,
    controller: Controller,
    daemon_factory: Callable[..., DaemonProcess],
    fleet: Any,
    central: Central,
) -> None:
    _root, _enr, _ingest, home = fleet
    d = make_kiosk(daemon_factory, broker, home, line_rate=True)
    start(d, controller)
    ok(
        controller.request(
            DEV, "enrollment.start", {"citizen_ref": "CIT-2", "finger_policy": [2, 7]}
        )
    )
    ok(controller.request(DEV, "enrollment.portrait", {"timeout_s": 20}, timeout=60))
    progress = controller.subscribe(f"kiosk/{DEV}/events/command.progress")
    controller.send(DEV, "enrollment.finger", {"attempts": 1})
    # The image is on the wire (UpImage at 57,600 baud takes seconds): kill now.
    get_json(
        progress,
        30,
        lambda m: m["data"]["step"] == "captured" or m["data"]["step"] == "waiting_for_finger",
    )
    d.kill9()
    assert_no_plaintext(d)
    events = controller.subscribe(f"kiosk/{DEV}/events/#")
    start(d, controller)
    resumed = get_json(events, 30, lambda m: m["type"] == "enrollment.resumed")
    assert resumed["data"]["remaining"] == [2, 7]
    for _ in range(2):
        ok(
            controller.request(
                DEV, "enrollment.finger", {"attempts": 1, "min_quality": 10}, timeout=90
            )
        )
    fin = ok(controller.request(DEV, "enrollment.finish", timeout=60))
    pid, info, _records = central.done.get(timeout=60)
    assert pid == fin["package_id"] and len(info["manifest"]["records"]) == 3
    assert_no_plaintext(d)
    d.terminate()


def test_upload_survives_kill9_and_a_broker_outage(
    make_tls_broker: Callable[..., Mosquitto],
    fleet_kit: FleetKit,
    daemon_factory: Callable[..., DaemonProcess],
    fleet: Any,
) -> None:
    _root, enr, ingest, home = fleet
    b = make_tls_broker()
    d = make_kiosk(
        daemon_factory,
        b,
        home,
        extra="[enrollment]\nchunk_bytes = 2048\nupload_window = 4\nchunk_timeout_s = 1\n",
    )
    with (
        fleet_kit.controller(b.port, signer="fleet-all") as ctl,
        fleet_kit.controller(b.port, signer=None, identity="central") as conn,
    ):
        central = Central(conn, enr, ingest, ack=False)  # receives, acknowledges nothing yet
        start(d, ctl)
        ok(ctl.request(DEV, "enrollment.start", {"citizen_ref": "CIT-3", "finger_policy": [2]}))
        ok(ctl.request(DEV, "enrollment.portrait", {"timeout_s": 20}, timeout=60))
        ok(ctl.request(DEV, "enrollment.finger", {"attempts": 1, "min_quality": 10}, timeout=60))
        fin = ok(ctl.request(DEV, "enrollment.finish", timeout=60))
        pid = fin["package_id"]
        wait_for(lambda: len(central.chunks.get(pid, {})) >= 2, 30, "chunks on the wire")
        d.kill9()  # mid-upload
        assert_no_plaintext(d)
        central.stop()
    b.stop()  # and the broker goes down too
    d.start()  # the kiosk restarts while the broker is down
    b.start()
    with (
        fleet_kit.controller(b.port, signer="fleet-all") as ctl,
        fleet_kit.controller(b.port, signer=None, identity="central") as conn,
    ):
        central = Central(conn, enr, ingest, ack=True)
        events = ctl.subscribe(f"kiosk/{DEV}/events/#")
        got_pid, _info, records = central.done.get(timeout=90)
        assert got_pid == pid and len(records) == 2
        get_json(events, 60, lambda m: m["type"] == "enrollment.purged")
        central.stop()
    assert list((d.state_dir / "sealed").glob("*")) == []
    assert_no_plaintext(d)
    d.terminate()


def test_enrollment_refused_without_an_enrollment_key(
    broker: Mosquitto,
    controller: Controller,
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    d = daemon_factory(broker, DEV, enrollment_key=False)
    t0 = time.time()
    d.start()
    wait_online(controller, DEV, after=t0)
    reply = controller.request(DEV, "enrollment.start", {"citizen_ref": "CIT-9"})
    assert reply["error"]["code"] == "not_provisioned"
    d.terminate()


def test_instant_issuance_can_be_disabled_per_kiosk(
    broker: Mosquitto,
    controller: Controller,
    daemon_factory: Callable[..., DaemonProcess],
    fleet: Any,
) -> None:
    _root, _enr, _ingest, home = fleet
    d = make_kiosk(daemon_factory, broker, home, extra="[enrollment]\ninstant_issuance = false\n")
    start(d, controller)
    reply = controller.request(DEV, "enrollment.start", {"citizen_ref": "CIT-7", "issuance": True})
    assert reply["error"]["code"] == "issuance_disabled"
    ok(controller.request(DEV, "enrollment.start", {"citizen_ref": "CIT-7"}))
    ok(controller.request(DEV, "enrollment.cancel", {"reason": "test"}))
    d.terminate()
