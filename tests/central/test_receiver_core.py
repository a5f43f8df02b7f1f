"""The receiver's logic on the real on-disk store, fed chunk messages directly (the MQTT
boundary is exercised in test_receiver_mqtt.py)."""

from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path
from typing import Any

import pytest

from appliance.central.package import split_package
from appliance.central.receiver import ReceiverCore, registry_device_keys
from appliance.central.store import PackageStore
from appliance.central.testkit import build_package, standard_records
from appliance.trust.sealed import SealedStore, scan_for_plaintext_biometrics, verify_ack
from tests.central.conftest import DEVICE, Fleet

RECORDS = standard_records((2, 7))


class Wire:
    """What the core published, by topic leaf."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def __call__(self, topic: str, payload: bytes) -> bool:
        self.sent.append((topic, payload))
        return True

    def acks(self) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p in self.sent if t.endswith("/upload/ack")]

    def receipts(self) -> list[bytes]:
        return [p for t, p in self.sent if t.endswith("/upload/receipt")]

    def statuses(self) -> list[dict[str, Any]]:
        return [a for a in self.acks() if "status" in a]


def _core(fleet: Fleet, wire: Wire, store: PackageStore | None = None) -> ReceiverCore:
    return ReceiverCore(
        store or fleet.store,
        fleet.enrollment,
        fleet.ingest,
        registry_device_keys(fleet.home),
        wire,
        background=False,
        reannounce_s=0.0,
    )


def _topic(pkg: str, device: str = DEVICE) -> str:
    return f"kiosk/{device}/upload/{pkg}"


def test_chunks_out_of_order_with_duplicates_complete_once(fleet: Fleet) -> None:
    built = build_package(fleet.kiosk, fleet.enrollment.public_key, device=DEVICE, records=RECORDS)
    chunks = split_package(built.package_id, built.data, 4096)
    assert len(chunks) > 5
    order = [*range(len(chunks)), 0, 3, 3]
    random.Random(7).shuffle(order)
    wire = Wire()
    core = _core(fleet, wire)
    for i in order:
        core.handle(_topic(built.package_id), chunks[i])
    statuses = wire.statuses()
    assert statuses[0] == {"package_id": built.package_id, "status": "complete"}
    received = sorted({i for a in wire.acks() for i in a.get("received", [])})
    assert received == list(range(len(chunks)))
    assert len(wire.receipts()) >= 1
    # The receipt is a valid ingest acknowledgement naming every sealed record.
    ack = verify_ack(wire.receipts()[0], [fleet.root.public_key], device_id=DEVICE, now=1e9)
    assert [s for _i, s in ack.records] == [r["sealed_sha256"] for r in built.manifest["records"]]
    # Stored: the package, the manifest and the plaintext records, all 0600 in 0700 dirs.
    d = fleet.store.package_dir(DEVICE, built.package_id)
    result = json.loads((d / "result.json").read_text())
    assert result["status"] == "complete" and result["announced_at"]
    assert not (d / "chunks").exists()
    records = sorted((d / "records").iterdir())
    assert [p.read_bytes() for p in records] == built.plaintexts
    for p in [*records, d / "package.pkg", d / "manifest.json", d / "result.json"]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


def test_receipt_lets_the_kiosk_shred_exactly_its_records(fleet: Fleet, tmp_path: Path) -> None:
    """The far end of the receipt: the kiosk's SealedStore.apply_ack accepts it."""
    built = build_package(fleet.kiosk, fleet.enrollment.public_key, device=DEVICE, records=RECORDS)
    kiosk_store = SealedStore(tmp_path / "sealed", fleet.enrollment.public_key, device_id=DEVICE)
    from appliance.central.package import decode_container, decode_sealed_file

    for blob in decode_container(built.data).sealed_files:
        sealed = decode_sealed_file(blob)
        (kiosk_store.directory / f"{sealed.record_id}.sealed").write_bytes(blob)
    kiosk_store.put("unrelated-record", bytearray(b"x" * 10), kind="finger")
    wire = Wire()
    core = _core(fleet, wire)
    for c in split_package(built.package_id, built.data):
        core.handle(_topic(built.package_id), c)
    result = kiosk_store.apply_ack(wire.receipts()[0], [fleet.root.public_key], now=1e9)
    assert sorted(result.shredded) == sorted(r["record_id"] for r in built.manifest["records"])
    assert [r.record_id for r in kiosk_store.list()] == ["unrelated-record"]


def test_tampered_package_is_rejected_and_the_verdict_kept(fleet: Fleet) -> None:
    def flip(files: list[bytes]) -> None:
        files[0] = files[0][:-1] + bytes([files[0][-1] ^ 1])

    built = build_package(
        fleet.kiosk, fleet.enrollment.public_key, device=DEVICE, records=RECORDS, tamper_sealed=flip
    )
    wire = Wire()
    core = _core(fleet, wire)
    chunks = split_package(built.package_id, built.data, 8192)
    for c in chunks:
        core.handle(_topic(built.package_id), c)
    [status] = wire.statuses()
    assert status["status"] == "rejected" and status["code"] == "sealed_mismatch"
    assert wire.receipts() == []
    res = fleet.store.result(DEVICE, built.package_id)
    assert res is not None and res["status"] == "rejected"
    assert not (fleet.store.package_dir(DEVICE, built.package_id) / "records").exists()
    # A re-sent chunk gets the same verdict again, without a second verification.
    core.handle(_topic(built.package_id), chunks[0])
    assert [s["status"] for s in wire.statuses()] == ["rejected", "rejected"]
    assert core.stats["rejected"] == 1


def test_unknown_device_is_held_until_approved(fleet: Fleet) -> None:
    from appliance.trust.keys import DeviceIdentity

    stranger = DeviceIdentity.create(fleet.home / "stranger")
    built = build_package(
        stranger, fleet.enrollment.public_key, device="kiosk-new", records=RECORDS
    )
    wire = Wire()
    core = _core(fleet, wire)
    chunks = split_package(built.package_id, built.data)
    for c in chunks:
        core.handle(_topic(built.package_id, "kiosk-new"), c)
    held = wire.statuses()[-1]
    assert held["status"] == "held" and held["code"] == "unknown_device"
    assert fleet.store.result("kiosk-new", built.package_id) is None
    assert core.retry_pending() == 1  # still unknown: held again, nothing stored
    assert fleet.store.result("kiosk-new", built.package_id) is None
    # Once approved, the next retry verifies it (without any re-send from the kiosk).
    fleet.register("kiosk-new", stranger)
    assert core.retry_pending() == 1
    assert wire.statuses()[-1]["status"] == "complete"
    assert core.retry_pending() == 0


def test_receiver_restart_resumes_a_half_received_upload(fleet: Fleet) -> None:
    built = build_package(fleet.kiosk, fleet.enrollment.public_key, device=DEVICE, records=RECORDS)
    chunks = split_package(built.package_id, built.data, 4096)
    half = len(chunks) // 2
    wire1 = Wire()
    core1 = _core(fleet, wire1)
    for c in chunks[:half]:
        core1.handle(_topic(built.package_id), c)
    assert wire1.statuses() == []
    # A new process: a fresh core over the same directory.
    wire2 = Wire()
    core2 = _core(fleet, wire2, PackageStore(fleet.store.root))
    assert core2.resume() == (0, 0)
    assert fleet.store.received(DEVICE, built.package_id) == list(range(half))
    for c in chunks[half - 2 :]:  # overlap: two duplicates
        core2.handle(_topic(built.package_id), c)
    assert wire2.statuses() == [{"package_id": built.package_id, "status": "complete"}]
    assert core2.stats["duplicates"] == 2


def test_receiver_stopped_before_the_verdict_verifies_at_start(fleet: Fleet) -> None:
    built = build_package(fleet.kiosk, fleet.enrollment.public_key, device=DEVICE, records=RECORDS)
    store = fleet.store
    # Every chunk stored, no verdict (the receiver died between the last chunk and verifying).
    from appliance.central.package import decode_chunk

    for c in split_package(built.package_id, built.data, 4096):
        header, data = decode_chunk(c)
        store.put_chunk(DEVICE, header, data)
    assert store.pending() == [(DEVICE, built.package_id)]
    wire = Wire()
    core = _core(fleet, wire, PackageStore(store.root))
    assert core.resume() == (1, 0)
    assert wire.statuses() == [{"package_id": built.package_id, "status": "complete"}]
    assert store.pending() == []
    # A verdict that never reached the broker is announced at the next start.
    res_path = store.package_dir(DEVICE, built.package_id) / "result.json"
    res = json.loads(res_path.read_text())
    del res["announced_at"]
    res_path.write_text(json.dumps(res))
    wire2 = Wire()
    assert _core(fleet, wire2, PackageStore(store.root)).resume() == (0, 1)
    assert wire2.statuses()[0]["status"] == "complete" and len(wire2.receipts()) == 1


def test_restarted_upload_with_new_content_replaces_the_old_chunks(fleet: Fleet) -> None:
    a = build_package(fleet.kiosk, fleet.enrollment.public_key, device=DEVICE, records=RECORDS)
    b = build_package(
        fleet.kiosk,
        fleet.enrollment.public_key,
        device=DEVICE,
        records=RECORDS,
        package_id=a.package_id,
    )
    assert a.data != b.data
    wire = Wire()
    core = _core(fleet, wire)
    ca, cb = split_package(a.package_id, a.data, 4096), split_package(b.package_id, b.data, 4096)
    for c in ca[:-1]:
        core.handle(_topic(a.package_id), c)
    for c in cb:
        core.handle(_topic(b.package_id), c)
    assert wire.statuses()[-1]["status"] == "complete"
    res = fleet.store.result(DEVICE, a.package_id)
    import hashlib

    assert res is not None and res["package_sha256"] == hashlib.sha256(b.data).hexdigest()
    # The finished id re-used for other content is refused without touching the result.
    core.handle(_topic(a.package_id), ca[0])
    assert wire.statuses()[-1]["code"] == "package_id_reused"


@pytest.mark.parametrize(
    "topic,payload",
    [
        ("kiosk/kiosk-c1/upload/ack", b'{"package_id":"x","received":[0]}'),
        ("kiosk/kiosk-c1/upload/receipt", b"{}"),
        ("kiosk/kiosk-c1/upload/..", b"\x00\x02{}"),
        ("kiosk/kiosk-c1/upload/p1", b""),
        ("kiosk/kiosk-c1/upload/p1", b"\x00\x05{bad}"),
        ("kiosk/kiosk-c1/upload/p1", b"\xff\xff"),
        ("kiosk/../upload/p1", b"\x00\x02{}"),
        ("other/kiosk-c1/upload/p1", b"\x00\x02{}"),
    ],
)
def test_garbage_is_dropped_without_acknowledgement(
    fleet: Fleet, topic: str, payload: bytes
) -> None:
    wire = Wire()
    _core(fleet, wire).handle(topic, payload)
    assert wire.sent == []


def test_chunk_with_wrong_hash_or_foreign_id_is_not_acknowledged(fleet: Fleet) -> None:
    built = build_package(fleet.kiosk, fleet.enrollment.public_key, device=DEVICE, records=RECORDS)
    chunk = split_package(built.package_id, built.data, 4096)[1]
    wire = Wire()
    core = _core(fleet, wire)
    core.handle(_topic(built.package_id), chunk[:-1] + bytes([chunk[-1] ^ 1]))
    core.handle(_topic("another-id"), chunk)
    core.handle("kiosk/../x/upload/p", chunk)
    assert wire.sent == []
    assert core.stats["malformed"] == 2


def test_store_holds_no_plaintext_outside_records(fleet: Fleet) -> None:
    built = build_package(fleet.kiosk, fleet.enrollment.public_key, device=DEVICE, records=RECORDS)
    wire = Wire()
    core = _core(fleet, wire)
    chunks = split_package(built.package_id, built.data, 4096)
    for c in chunks[:-1]:
        core.handle(_topic(built.package_id), c)
    # Mid-upload, only ciphertext is on disk.
    assert scan_for_plaintext_biometrics([fleet.store.root]) == []
    core.handle(_topic(built.package_id), chunks[-1])
    d = fleet.store.package_dir(DEVICE, built.package_id)
    hits = {p.parent.name for p, _kind in scan_for_plaintext_biometrics([fleet.store.root])}
    assert hits == {"records"}
    assert os.listdir(d / "records")
