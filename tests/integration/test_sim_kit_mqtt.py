"""The daemon on the simulated kit, commanded with signed commands over a real mosquitto with
mutual TLS and the shipped ACL: the production drivers
talk to the fingerprint emulator on a real pty and to the card emulator through a real pcscd +
vpcd stack, both child processes of the daemon."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import load_pem_x509_certificate

from appliance.devtools.broker import Mosquitto
from appliance.devtools.controller import Controller
from appliance.lds import issuance
from appliance.lds.files import Dg13
from appliance.lds.mrz import Td1
from appliance.trust.sealed import scan_for_plaintext_biometrics
from tests.helpers import DaemonProcess, get_json, wait_for, wait_online

DEV = "kiosk-simkit"


@pytest.fixture
def broker(tls_broker: Mosquitto) -> Mosquitto:
    """The production broker: mutual TLS, the shipped ACL."""
    return tls_broker


@pytest.fixture
def controller(signed_controller: Controller) -> Controller:
    """The fleet's controller certificate; every command signed under the fleet root."""
    return signed_controller


@pytest.fixture
def simkit(
    broker: Mosquitto, controller: Controller, daemon_factory: Callable[..., DaemonProcess]
) -> Iterator[DaemonProcess]:
    d = daemon_factory(broker, DEV)
    tmp = d.workdir / "tmp"  # the daemon's and emulators' TMPDIR, scanned after captures
    tmp.mkdir()
    d.extra_env["TMPDIR"] = str(tmp)
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
    wait_online(controller, DEV, after=t0)

    def all_ok() -> bool:
        devices = controller.request(DEV, "status")["result"]["devices"]
        return all(devices[k]["state"] == "ok" for k in ("fingerprint", "card"))

    wait_for(all_ok, 30, "fingerprint and card healthy")
    yield d
    d.terminate()


def test_fingerprint_capture_over_mqtt(simkit: DaemonProcess, controller: Controller) -> None:
    progress = controller.subscribe(f"kiosk/{DEV}/events/command.progress")
    reply = controller.request(
        DEV,
        "fingerprint.capture",
        {"position": 2, "timeout_s": 30, "min_quality": 30, "attempts": 2},
        timeout=60,
    )
    assert reply["ok"] is True, reply
    result = reply["result"]
    assert result["position"] == 2 and 0 <= result["quality"] <= 100
    assert result["record_id"]
    steps = []
    while True:
        try:
            msg = get_json(progress, 2)
        except AssertionError:
            break
        steps.append(msg["data"]["step"])
    assert "waiting_for_finger" in steps and "captured" in steps
    # No image bytes travel in the reply: nothing long enough to be one.
    assert len(json.dumps(reply)) < 4000
    status = controller.request(DEV, "fingerprint.status")["result"]
    assert status
    assert scan_for_plaintext_biometrics([simkit.state_dir, simkit.workdir / "tmp"]) == []


def test_card_encode_and_read_over_mqtt(simkit: DaemonProcess, controller: Controller) -> None:
    pki = simkit.state_dir / "sim" / "pki"
    ds_key = serialization.load_pem_private_key((pki / "ds.key").read_bytes(), None)
    ds_cert = load_pem_x509_certificate((pki / "ds.pem").read_bytes())
    # A consistent citizen (the kiosk checks it): a woman born 1990 in Hanoi, issued at 35,
    # valid to her 40th birthday.
    mrz = Td1(
        document_number="001190012345",
        birth="900215",
        sex="F",
        expiry="300215",
        primary="NGUYEN",
        secondary="THI MAI",
    )
    dg13 = Dg13(
        personal_id="001190012345",
        full_name="Nguyễn Thị Mai",
        date_of_birth="15021990",
        sex="Nữ",
        nationality="Việt Nam",
        date_of_issue="01/06/2025",
        date_of_expiry="15/02/2030",
    )
    package = issuance.build_issuance_package(
        package_id="pkg-mqtt-1",
        mrz=mrz,
        dg13=dg13,
        face_records=None,
        ds_key=ds_key,
        ds_cert=ds_cert,  # type: ignore[arg-type]
    )
    args: dict[str, Any] = json.loads(package.model_dump_json())
    reply = controller.request(DEV, "card.encode", args, timeout=90)
    assert reply["ok"] is True, reply
    assert reply["result"]["outcome"] == "issued", reply
    read = controller.request(
        DEV,
        "card.read",
        {"document_number": "001190012345", "birth": "900215", "expiry": "300215"},
        timeout=60,
    )
    assert read["ok"] is True, read
    text = json.dumps(read["result"], ensure_ascii=False)
    assert "NGUYEN" in text and "Nguyễn Thị Mai" in text
    # A tampered package is refused before any write.
    bad = json.loads(package.model_dump_json())
    dg13_bytes = base64.b64decode(bad["files"]["DG13"])
    assert b"Mai" in dg13_bytes
    bad["files"]["DG13"] = base64.b64encode(dg13_bytes.replace(b"Mai", b"Mao")).decode()
    bad["package_id"] = "pkg-mqtt-2"
    refused = controller.request(DEV, "card.encode", bad, timeout=60)
    assert refused["ok"] is False
    assert refused["error"]["code"] == "dg_hash_mismatch", refused
    # Signed by the centre's Document Signer, but the MRZ says M for a woman's number: refused
    # as citizen data, every problem named in the reply, before the card is looked at.
    wrong = issuance.build_issuance_package(
        package_id="pkg-mqtt-3",
        mrz=replace(mrz, sex="M"),
        dg13=dg13,
        face_records=None,
        ds_key=ds_key,
        ds_cert=ds_cert,  # type: ignore[arg-type]
    )
    wrong_args = json.loads(wrong.model_dump_json())
    refused = controller.request(DEV, "card.encode", wrong_args, timeout=60)
    assert refused["ok"] is False
    assert refused["error"]["code"] == "citizen_invalid", refused
    assert refused["error"]["details"]["problems"] == [
        {"field": "DG1.sex", "rule": "mrz_mismatch", "message": "the MRZ's sex is not DG13's"}
    ]


def test_camera_capture_over_mqtt(simkit: DaemonProcess, controller: Controller) -> None:
    reply = controller.request(DEV, "camera.capture", {"timeout_s": 20}, timeout=40)
    assert reply["ok"] is True, reply
    result = reply["result"]
    assert result["met"] is True and result["score"] >= result["min_quality"]
    assert result["record"]["format"] == "ISO/IEC 19794-5:2005"
    assert result["record"]["bytes"] > 1000
    assert len(json.dumps(reply)) < 8000  # metadata only, never the image
    status = controller.request(DEV, "camera.status")["result"]
    assert status["health"]["state"] == "ok"
    assert scan_for_plaintext_biometrics([simkit.state_dir, simkit.workdir / "tmp"]) == []
    # A technician's snapshot is refused while an enrollment is active; none is now.
    snap = controller.request(DEV, "camera.snapshot", {"width": 160})
    assert snap["ok"] is True, snap


def test_snapshot_image_is_never_written_to_the_store(
    simkit: DaemonProcess, controller: Controller
) -> None:
    snap = controller.request(DEV, "camera.snapshot", {"width": 160}, cid="snap-1")
    assert snap["ok"] is True and len(snap["result"]["jpeg_base64"]) > 100
    repeat = controller.request(DEV, "camera.snapshot", {"width": 160}, cid="snap-1")
    assert repeat["result"]["jpeg_base64"] == "(not stored)"
    db = (simkit.state_dir / "appliance.db").read_bytes()
    wal = simkit.state_dir / "appliance.db-wal"
    blob = db + (wal.read_bytes() if wal.exists() else b"")
    assert snap["result"]["jpeg_base64"][:200].encode() not in blob
    assert b"/9j/" not in blob  # base64 of a JPEG's first bytes
