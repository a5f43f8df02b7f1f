"""Sealed packages carried on removable media: the kiosk exports only what it signed (never a
key), the centre imports with the upload's own storage and verification, an import followed by
the same package's upload is stored once, and the kiosk purges on the receipt."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from appliance import cli
from appliance.central.package import decode_container
from appliance.central.receiver import ReceiverCore, import_packages, registry_device_keys
from appliance.central.testkit import build_package, standard_records
from appliance.enrollment.export import export_packages
from appliance.enrollment.upload import Uploader
from appliance.protocol.topics import Topics
from appliance.store import Store
from appliance.trust.keys import DeviceIdentity
from appliance.trust.sealed import SealedStore, build_ack
from tests.central.conftest import DEVICE, Fleet


def _queue(fleet: Fleet, store: Store, n: int, identity: DeviceIdentity | None = None) -> list[str]:
    """Queue ``n`` packages on the kiosk as EnrollmentManager.finish does."""
    out = fleet.kiosk_pub.parent / "outgoing"
    out.mkdir(exist_ok=True)
    ids = []
    for i in range(n):
        built = build_package(
            identity or fleet.kiosk,
            fleet.enrollment.public_key,
            device=DEVICE,
            records=standard_records((2,), seed=i + 1),
        )
        path = out / f"{built.package_id}.pkg"
        path.write_bytes(built.data)
        # the kiosk keeps each sealed record until the receipt (SealedStore's files)
        sealed = fleet.kiosk_pub.parent / "sealed"
        sealed.mkdir(exist_ok=True)
        blobs = decode_container(built.data).sealed_files
        for rec, blob in zip(built.manifest["records"], blobs, strict=True):
            (sealed / f"{rec['record_id']}.sealed").write_bytes(blob)
        records = [[r["record_id"], r["sealed_sha256"]] for r in built.manifest["records"]]
        with store.transaction() as c:
            c.execute(
                "INSERT INTO enrollment_uploads (package_id, session_id, path, total_bytes, "
                "state, created, records) VALUES (?,?,?,?,?,?,?)",
                (
                    built.package_id,
                    "s",
                    str(path),
                    len(built.data),
                    "pending",
                    i,
                    json.dumps(records),
                ),
            )
        ids.append(built.package_id)
    return ids


def _core(fleet: Fleet, sent: list[tuple[str, bytes]]) -> ReceiverCore:
    def publish(topic: str, payload: bytes) -> bool:
        sent.append((topic, payload))
        return True

    return ReceiverCore(
        fleet.store,
        fleet.enrollment,
        fleet.ingest,
        registry_device_keys(fleet.home),
        publish,
        background=False,
        reannounce_s=0.0,
    )


def test_export_then_import_then_upload_is_stored_once_and_purged(
    fleet: Fleet, tmp_path: Path
) -> None:
    state = fleet.kiosk_pub.parent
    store = Store(state)
    ids = _queue(fleet, store, 3)
    # a package in the queue this device did not sign is not exported
    stranger = DeviceIdentity.create(tmp_path / "stranger")
    foreign = _queue(fleet, store, 1, identity=stranger)[0]
    usb = tmp_path / "usb"
    seen: list[str] = []
    out = export_packages(store, state, DEVICE, usb, progress=lambda n, t, w: seen.append(w))
    assert out["exported"] == ids
    assert [s["package_id"] for s in out["skipped"]] == [foreign]
    assert len(seen) == 4
    files = sorted(p.name for p in (usb / DEVICE).iterdir())
    assert files == sorted([*(f"{i}.pkg" for i in ids), "export.json"])  # no key, no database
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (usb / DEVICE).iterdir())
    # the packages stay queued on the kiosk until the receipt
    assert (state / "outgoing" / f"{ids[0]}.pkg").exists()

    sent: list[tuple[str, bytes]] = []
    core = _core(fleet, sent)
    first = import_packages(core, usb)
    assert first["counts"] == {"complete": 3}
    assert sorted(fleet.store.results(DEVICE), key=lambda r: r["package_id"])[0]["status"] == (
        "complete"
    )
    receipts = [p for t, p in sent if t.endswith("/upload/receipt")]
    assert len(receipts) == 3
    assert import_packages(core, usb)["counts"] == {"duplicate": 3}

    # Back online: the kiosk uploads its queue; the centre has them, answers with the verdict
    # and the receipt again, stores nothing twice, and the kiosk purges.
    sealed = SealedStore(state / "sealed", fleet.enrollment.public_key, device_id=DEVICE)
    box: list[Uploader] = []

    def to_centre(topic: str, payload: bytes, *, qos: int = 1) -> bool:
        core.handle(topic, payload)
        return True

    def to_kiosk(topic: str, payload: bytes) -> bool:
        box[0].on_message(topic, payload)
        return True

    core.publish = to_kiosk
    up = Uploader(
        store=store,
        topics=Topics("kiosk", DEVICE),
        publish=to_centre,
        connected=lambda: 1,
        sealed=sealed,
        roots=[fleet.root.public_key],
        revoked=[],
        emit=lambda *_a, **_k: None,
        chunk_bytes=32 * 1024,
        window=8,
        chunk_timeout_s=5.0,
    )
    box.append(up)
    before = core.stats["complete"]
    up._send_pending()
    while up._inbox:
        up._on_ack(up._inbox.popleft()[1])
    states = dict(store.conn.execute("SELECT package_id, state FROM enrollment_uploads"))
    assert {states[i] for i in ids} == {"purged"}
    assert not any((state / "outgoing" / f"{i}.pkg").exists() for i in ids)
    assert core.stats["complete"] == before  # verified once, at the import
    # the stranger's package, never exported, went up the ordinary way and was refused there
    verdicts = {r["package_id"]: r["status"] for r in fleet.store.results(DEVICE)}
    assert verdicts == {**dict.fromkeys(ids, "complete"), foreign: "rejected"}
    assert states[foreign] == "rejected"
    store.close()


def test_a_damaged_copy_is_reported_and_a_listing_for_another_device_refused(
    fleet: Fleet, tmp_path: Path
) -> None:
    state = fleet.kiosk_pub.parent
    store = Store(state)
    ids = _queue(fleet, store, 2)
    usb = tmp_path / "usb"
    export_packages(store, state, DEVICE, usb)
    pkg = usb / DEVICE / f"{ids[1]}.pkg"
    data = bytearray(pkg.read_bytes())
    data[-5] ^= 1
    pkg.write_bytes(bytes(data))
    out = import_packages(_core(fleet, []), usb)
    outcomes = {r["package_id"]: r["outcome"] for r in out["packages"]}
    assert outcomes == {ids[0]: "complete", ids[1]: "damaged"}
    (usb / DEVICE).rename(usb / "kiosk-other")
    from appliance.errors import ApplianceError

    with pytest.raises(ApplianceError) as info:
        import_packages(_core(fleet, []), usb)
    assert info.value.code == "import_malformed"
    store.close()


def test_the_command_lines_say_what_they_did(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = fleet.kiosk_pub.parent
    store = Store(state)
    _queue(fleet, store, 2)
    store.close()
    usb = tmp_path / "usb"
    assert cli.main(["enrollment", "export", "--to", str(usb), "--state-dir", str(state)]) == 0
    out: Any = capsys.readouterr()
    assert "exported 2 package(s)" in out.out and "[2/2]" in out.err
    argv = ["fleet", "receive", "import", str(usb), "--home", str(fleet.home)]
    assert cli.main(argv) == 0
    out = capsys.readouterr()
    assert "imported from" in out.out and "2 complete" in out.out
    assert cli.main(argv) == 0
    assert "2 duplicate" in capsys.readouterr().out


def test_receipts_are_judged_with_the_kiosks_clock(fleet: Fleet, tmp_path: Path) -> None:
    """The receipt's ingest certificate is judged with the kiosk's trusted time, not the
    board's system clock: a kiosk whose trusted time is past the certificate's expiry keeps
    its package (cert_expired), whatever the system clock says."""
    state = fleet.kiosk_pub.parent
    store = Store(state)
    ids = _queue(fleet, store, 1)
    core = _core(fleet, [])
    box: list[Uploader] = []

    def to_centre(topic: str, payload: bytes, *, qos: int = 1) -> bool:
        core.handle(topic, payload)
        return True

    def to_kiosk(topic: str, payload: bytes) -> bool:
        box[0].on_message(topic, payload)
        return True

    core.publish = to_kiosk
    kiosk_now = [fleet.ingest.certificate.not_after + 1.0]
    up = Uploader(
        store=store,
        topics=Topics("kiosk", DEVICE),
        publish=to_centre,
        connected=lambda: 1,
        sealed=SealedStore(state / "sealed", fleet.enrollment.public_key, device_id=DEVICE),
        roots=[fleet.root.public_key],
        revoked=[],
        emit=lambda *_a, **_k: None,
        chunk_bytes=32 * 1024,
        window=8,
        chunk_timeout_s=5.0,
        now=lambda: kiosk_now[0],
    )
    box.append(up)
    up._send_pending()
    state_of = lambda: store.conn.execute(  # noqa: E731
        "SELECT state FROM enrollment_uploads WHERE package_id=?", (ids[0],)
    ).fetchone()[0]
    assert state_of() != "purged"
    assert store.audit_tail(5)[-1]["outcome"] == "cert_expired"
    kiosk_now[0] = fleet.ingest.certificate.not_after - 60
    receipt = fleet.store.results(DEVICE)[0]["receipt"]
    up._on_receipt(build_ack(fleet.ingest, DEVICE, [(r["id"], r["sha256"]) for r in receipt]))
    assert state_of() == "purged"
    store.close()
