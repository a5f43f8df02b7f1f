"""Sealed biometric records: sealing, the on-disk store, signed acknowledgements, shredding."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from appliance.errors import TrustError
from appliance.trust.certs import FleetRoot
from appliance.trust.keys import b64decode, b64encode
from appliance.trust.sealed import (
    EnrollmentKeyPair,
    SealedStore,
    build_ack,
    load_enrollment_public_key,
    scan_for_plaintext_biometrics,
    verify_ack,
)

from .fleet import NOW, Fleet


def _jpeg() -> bytes:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (120, 90, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64), 128, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _fir() -> bytes:
    # ISO/IEC 19794-4:2005 general header magic, version, then filler.
    return b"FIR\x00010\x00" + bytes(range(200))


@pytest.fixture
def central(tmp_path: Path) -> EnrollmentKeyPair:
    pair = EnrollmentKeyPair.generate()
    pair.save(tmp_path / "central")
    return pair


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(FleetRoot.create(tmp_path / "root"), tmp_path)


@pytest.fixture
def store(tmp_path: Path, central: EnrollmentKeyPair) -> SealedStore:
    pub = load_enrollment_public_key(tmp_path / "central" / "enrollment.pub")
    return SealedStore(tmp_path / "state" / "sealed", pub, device_id="kiosk-001")


def test_put_seals_and_centre_unseals(store: SealedStore, central: EnrollmentKeyPair) -> None:
    records = {"portrait-1": _jpeg(), "finger-1": _fir(), "finger-png": _png()}
    for rid, data in records.items():
        rec = store.put(rid, data, kind="portrait" if "portrait" in rid else "finger")
        path = store.directory / f"{rid}.sealed"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert rec.size == len(data) + 48  # SealedBox overhead: ephemeral key + MAC
    # No plaintext image or record magic anywhere in the state dir.
    assert scan_for_plaintext_biometrics([store.directory.parent]) == []
    for rid, data in records.items():
        meta, blob = store.read(rid)
        assert meta.record_id == rid
        assert data not in blob
        assert central.unseal(blob) == data
        header, plain = central.unseal_file(store.directory / f"{rid}.sealed")
        assert plain == data and header["id"] == rid
    assert {r.record_id for r in store.list()} == set(records)


def test_scanner_finds_plaintext(tmp_path: Path) -> None:
    """The scan used above can fail: plaintext files are found."""
    (tmp_path / "a.jpg").write_bytes(_jpeg())
    (tmp_path / "b.bin").write_bytes(b"junk" + _png() + b"junk")
    (tmp_path / "c.rec").write_bytes(b"xx" + _fir())
    found = {(p.name, kind) for p, kind in scan_for_plaintext_biometrics([tmp_path])}
    assert ("a.jpg", "jpeg") in found
    assert ("b.bin", "png") in found
    assert ("c.rec", "iso19794-4") in found


def test_bytearray_plaintext_is_wiped(store: SealedStore, central: EnrollmentKeyPair) -> None:
    data = bytearray(_jpeg())
    original = bytes(data)
    store.put("r1", data, kind="portrait")
    assert data == bytearray(len(original))
    assert central.unseal(store.read("r1")[1]) == original


def test_put_validates(store: SealedStore) -> None:
    with pytest.raises(TrustError) as err:
        store.put("../escape", b"x", kind="finger")
    assert err.value.code == "invalid_name"
    store.put("r1", b"x", kind="finger")
    with pytest.raises(TrustError) as err:
        store.put("r1", b"y", kind="finger")
    assert err.value.code == "record_exists"
    with pytest.raises(TrustError) as err:
        store.read("nope")
    assert err.value.code == "record_missing"


def test_corrupt_file_is_skipped_and_detected(store: SealedStore) -> None:
    store.put("good", b"abc", kind="finger")
    (store.directory / "bad.sealed").write_bytes(b"APSEAL1\n\x00\x00\x00\x02{}tampered")
    assert [r.record_id for r in store.list()] == ["good"]
    path = store.directory / "good.sealed"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(TrustError) as err:
        store.read("good")
    assert err.value.code == "sealed_corrupt"


def test_ack_shreds_exactly_the_acknowledged_records(store: SealedStore, fleet: Fleet) -> None:
    a = store.put("a", _jpeg(), kind="portrait")
    b = store.put("b", _fir(), kind="finger")
    store.put("c", _fir(), kind="finger")
    ingest = fleet.operator(roles=("ingest",), devices=("*",))
    ack = build_ack(
        ingest,
        "kiosk-001",
        [("a", a.sha256), ("b", "0" * 64), ("zz", "1" * 64), ("../x", "2" * 64)],
        issued_at=NOW,
    )
    result = store.apply_ack(ack, [fleet.root.public_key], now=NOW)
    assert result.shredded == ["a"]
    assert result.mismatched == ["b"]
    assert result.unknown == ["zz", "../x"]
    assert sorted(p.name for p in store.directory.iterdir()) == ["b.sealed", "c.sealed"]
    # Replaying the same acknowledgement is harmless.
    again = store.apply_ack(ack, [fleet.root.public_key], now=NOW)
    assert again.shredded == [] and again.unknown[0] == "a"
    ack_b = build_ack(ingest, "kiosk-001", [("b", b.sha256)], issued_at=NOW)
    assert store.apply_ack(ack_b, [fleet.root.public_key], now=NOW).shredded == ["b"]


def _assert_refused(store: SealedStore, fleet: Fleet, ack: bytes, code: str) -> None:
    before = sorted(p.name for p in store.directory.iterdir())
    with pytest.raises(TrustError) as err:
        store.apply_ack(ack, [fleet.root.public_key], now=NOW)
    assert err.value.code == code
    assert sorted(p.name for p in store.directory.iterdir()) == before


def test_ack_refusals_delete_nothing(store: SealedStore, fleet: Fleet) -> None:
    rec = store.put("a", _jpeg(), kind="portrait")
    pairs = [("a", rec.sha256)]
    operator = fleet.operator(roles=("operator", "admin"), devices=("*",))
    _assert_refused(store, fleet, build_ack(operator, "kiosk-001", pairs), "forbidden_role")
    ingest = fleet.operator(roles=("ingest",), devices=("*",))
    _assert_refused(store, fleet, build_ack(ingest, "kiosk-002", pairs), "wrong_target")
    scoped = fleet.operator(roles=("ingest",), devices=("kiosk-009",))
    _assert_refused(store, fleet, build_ack(scoped, "kiosk-001", pairs), "wrong_target")
    rogue = fleet.operator(
        roles=("ingest",), devices=("*",), root=FleetRoot.create(fleet.tmp / "r")
    )
    _assert_refused(store, fleet, build_ack(rogue, "kiosk-001", pairs), "untrusted_issuer")
    expired = fleet.operator(
        roles=("ingest",), devices=("*",), issued_at=NOW - 7200, not_after=NOW - 3600
    )
    _assert_refused(store, fleet, build_ack(expired, "kiosk-001", pairs), "cert_expired")
    with pytest.raises(TrustError) as err:
        store.apply_ack(
            build_ack(ingest, "kiosk-001", pairs),
            [fleet.root.public_key],
            now=NOW,
            revoked={ingest.key_id},
        )
    assert err.value.code == "cert_revoked"
    assert (store.directory / "a.sealed").exists()
    # Tampered body (another record list) under the original signature.
    env = json.loads(build_ack(ingest, "kiosk-001", [("x", "0" * 64)]))
    body = json.loads(b64decode(env["body"], what="b"))
    body["records"] = [{"id": "a", "sha256": rec.sha256}]
    env["body"] = b64encode(json.dumps(body).encode())
    _assert_refused(store, fleet, json.dumps(env).encode(), "bad_signature")
    del env["sig"]
    _assert_refused(store, fleet, json.dumps(env).encode(), "unsigned")
    for junk in (b"", b"[]", b"{}", b'{"typ":"appliance.sealed-ack.v1","sig":"x"}'):
        _assert_refused(store, fleet, junk, "malformed_envelope")


def test_verify_ack_returns_pairs(fleet: Fleet) -> None:
    ingest = fleet.operator(roles=("ingest",), devices=("kiosk-001",))
    ack = build_ack(ingest, "kiosk-001", [("r", "ab" * 32)], issued_at=NOW)
    v = verify_ack(ack, [fleet.root.public_key], device_id="kiosk-001", now=NOW)
    assert v.records == (("r", "ab" * 32),)
    assert v.issuer == ingest.key_id


def test_central_key_files(tmp_path: Path, central: EnrollmentKeyPair) -> None:
    again = EnrollmentKeyPair.load(tmp_path / "central")
    assert again.public_key == central.public_key
    assert stat.S_IMODE((tmp_path / "central" / "enrollment.key").stat().st_mode) == 0o600
    with pytest.raises(TrustError):
        central.unseal(b"not a sealed box at all" * 3)
    with pytest.raises(TrustError):
        load_enrollment_public_key(tmp_path / "missing.pub")


def test_ack_finishes_a_shred_interrupted_by_a_crash(store: SealedStore, fleet: Fleet) -> None:
    a = store.put("a", _fir(), kind="finger")
    path = store.directory / "a.sealed"
    path.write_bytes(bytes(path.stat().st_size))  # zeros written, the unlink never happened
    ingest = fleet.operator(roles=("ingest",), devices=("*",))
    ack = build_ack(ingest, "kiosk-001", [("a", a.sha256)], issued_at=NOW)
    result = store.apply_ack(ack, [fleet.root.public_key], now=NOW)
    assert result.shredded == ["a"] and result.mismatched == []
    assert not path.exists()
