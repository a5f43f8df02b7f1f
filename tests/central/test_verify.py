"""The centre's package checks (docs/enrollment.md "The package"): a genuine package passes;
each kind of tampering is refused with its own reason."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from appliance.central.package import (
    HASH_0,
    chain,
    decode_container,
    decode_sealed_file,
)
from appliance.central.testkit import build_package, finger_record, standard_records
from appliance.central.verify import verify_package
from appliance.enrollment.package import encode_container
from appliance.errors import TrustError
from appliance.trust.keys import DeviceIdentity
from tests.central.conftest import DEVICE, Fleet

RECORDS = standard_records((2, 3, 7, 1))


def _verify(fleet: Fleet, data: bytes, device: str = DEVICE, **kw: Any) -> Any:
    return verify_package(
        data,
        device_id=device,
        device_public_key=fleet.kiosk.public_key,
        enrollment_key=fleet.enrollment,
        **kw,
    )


def _refused(fleet: Fleet, data: bytes, code: str, **kw: Any) -> TrustError:
    with pytest.raises(TrustError) as info:
        _verify(fleet, data, **kw)
    assert info.value.code == code, (info.value.code, info.value.message)
    return info.value


def test_chain_follows_the_spec() -> None:
    import hashlib

    a, b = hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()
    h1 = hashlib.sha256(hashlib.sha256(b"").digest() + bytes.fromhex(a)).hexdigest().upper()
    h2 = hashlib.sha256(bytes.fromhex(h1) + bytes.fromhex(b)).hexdigest().upper()
    assert hashlib.sha256(b"").hexdigest().upper() == HASH_0
    assert chain([a, b]) == [h1, h2]
    assert chain([b, a])[-1] != h2  # order matters


def test_genuine_package_verifies(fleet: Fleet) -> None:
    built = build_package(fleet.kiosk, fleet.enrollment.public_key, device=DEVICE, records=RECORDS)
    v = _verify(fleet, built.data, package_id=built.package_id)
    assert [r.plaintext for r in v.records] == built.plaintexts
    assert [r.entry.position for r in v.records] == [0, 2, 3, 7, 1]
    assert v.records[1].parsed["views"] == 1 and v.records[0].parsed["images"] == 1
    assert v.signer_key_id == fleet.kiosk.key_id
    assert [s for _i, s in v.receipt_records] == [
        r["sealed_sha256"] for r in built.manifest["records"]
    ]
    summary = json.dumps(v.summary())
    assert "FAC" not in summary and len(summary) < 5000  # metadata only


def test_signature_by_another_key_is_refused(fleet: Fleet) -> None:
    impostor = DeviceIdentity.create(fleet.home / "impostor")
    built = build_package(impostor, fleet.enrollment.public_key, device=DEVICE, records=RECORDS)
    _refused(fleet, built.data, "bad_signature")


def test_manifest_changed_after_signing_is_refused(fleet: Fleet) -> None:
    built = build_package(fleet.kiosk, fleet.enrollment.public_key, device=DEVICE, records=RECORDS)
    c = decode_container(built.data)
    forged = c.manifest_bytes.replace(b"citizen-001", b"citizen-002")
    assert forged != c.manifest_bytes
    _refused(fleet, encode_container(forged, c.signature, c.sealed_files), "bad_signature")
    # A signature header that is not one at all.
    _refused(fleet, encode_container(c.manifest_bytes, "nonsense", c.sealed_files), "bad_signature")


def test_package_for_another_device_is_refused(fleet: Fleet) -> None:
    built = build_package(
        fleet.kiosk, fleet.enrollment.public_key, device="kiosk-other", records=RECORDS
    )
    _refused(fleet, built.data, "wrong_device")


def test_swapped_records_break_the_chain(fleet: Fleet) -> None:
    def swap(m: dict[str, Any]) -> None:
        r = m["records"]
        # Swap the two fingers' content (ids, hashes, seals) but keep the seq and chain values
        # in place: what a device that reorders captures would sign.
        for key in ("record_id", "kind", "position", "sha256", "sealed_sha256", "sealed_size"):
            r[1][key], r[2][key] = r[2][key], r[1][key]

    def swap_files(files: list[bytes]) -> None:
        files[1], files[2] = files[2], files[1]

    built = build_package(
        fleet.kiosk,
        fleet.enrollment.public_key,
        device=DEVICE,
        records=RECORDS,
        tamper_manifest=swap,
        tamper_sealed=swap_files,
    )
    err = _refused(fleet, built.data, "chain_broken")
    assert err.details.get("seq") == 2


def test_dropped_record_is_refused(fleet: Fleet) -> None:
    def drop(m: dict[str, Any]) -> None:
        del m["records"][2]
        for i, r in enumerate(m["records"], start=1):
            r["seq"] = i

    def drop_file(files: list[bytes]) -> None:
        del files[2]

    built = build_package(
        fleet.kiosk,
        fleet.enrollment.public_key,
        device=DEVICE,
        records=RECORDS,
        tamper_manifest=drop,
        tamper_sealed=drop_file,
    )
    _refused(fleet, built.data, "chain_broken")
    # Dropping a sealed file in transit only (manifest intact) is a framing fault.
    built = build_package(
        fleet.kiosk,
        fleet.enrollment.public_key,
        device=DEVICE,
        records=RECORDS,
        tamper_sealed=drop_file,
    )
    _refused(fleet, built.data, "package_malformed")


def test_chain_head_must_be_the_last_value(fleet: Fleet) -> None:
    def head(m: dict[str, Any]) -> None:
        m["chain_head"] = m["records"][-2]["hash"]

    built = build_package(
        fleet.kiosk,
        fleet.enrollment.public_key,
        device=DEVICE,
        records=RECORDS,
        tamper_manifest=head,
    )
    _refused(fleet, built.data, "chain_broken")


def test_corrupted_sealed_blob_is_refused(fleet: Fleet) -> None:
    def flip_ciphertext(files: list[bytes]) -> None:
        b = bytearray(files[1])
        b[-10] ^= 0x01
        files[1] = bytes(b)

    built = build_package(
        fleet.kiosk,
        fleet.enrollment.public_key,
        device=DEVICE,
        records=RECORDS,
        tamper_sealed=flip_ciphertext,
    )
    _refused(fleet, built.data, "sealed_mismatch")

    def reseal_consistently(files: list[bytes]) -> None:
        # Damage the ciphertext and fix up the sealed header so the file is self-consistent:
        # the signed manifest's sealed_sha256 still catches it.
        import hashlib

        sealed = decode_sealed_file(files[1])
        ct = bytearray(sealed.ciphertext)
        ct[5] ^= 0xFF
        header = dict(sealed.header, sha256=hashlib.sha256(bytes(ct)).hexdigest())
        hdr = json.dumps(header).encode()
        files[1] = b"APSEAL1\n" + struct.pack(">I", len(hdr)) + hdr + bytes(ct)

    built = build_package(
        fleet.kiosk,
        fleet.enrollment.public_key,
        device=DEVICE,
        records=RECORDS,
        tamper_sealed=reseal_consistently,
    )
    _refused(fleet, built.data, "sealed_mismatch")


def test_record_sealed_to_another_key_does_not_open(fleet: Fleet) -> None:
    from appliance.trust.sealed import EnrollmentKeyPair

    other = EnrollmentKeyPair.generate()
    built = build_package(fleet.kiosk, other.public_key, device=DEVICE, records=RECORDS)
    _refused(fleet, built.data, "unseal_failed")


def test_signed_but_wrong_record_hash_is_refused(fleet: Fleet) -> None:
    def lie(m: dict[str, Any]) -> None:
        m["records"][0]["sha256"] = "00" * 32

    built = build_package(
        fleet.kiosk,
        fleet.enrollment.public_key,
        device=DEVICE,
        records=RECORDS,
        tamper_manifest=lie,
    )
    _refused(fleet, built.data, "record_hash_mismatch")


def test_unparseable_or_mislabelled_record_is_refused(fleet: Fleet) -> None:
    junk = [("face", 0, b"FAC\x00010\x00not really a record")]
    built = build_package(fleet.kiosk, fleet.enrollment.public_key, device=DEVICE, records=junk)
    _refused(fleet, built.data, "record_malformed")
    mislabelled = [("finger", 4, finger_record(5))]  # the record says position 5
    built = build_package(
        fleet.kiosk, fleet.enrollment.public_key, device=DEVICE, records=mislabelled
    )
    _refused(fleet, built.data, "record_malformed")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"APPKG1\n",
        b"APPKG1\n\x00\x00\x00\x05{}",
        b"APPKG1\n\xff\xff\xff\xff",
        b"NOTAPKG" + b"\x00" * 20,
    ],
)
def test_broken_framing_is_refused(fleet: Fleet, data: bytes) -> None:
    _refused(fleet, data, "package_malformed")


def test_manifest_with_bad_fields_is_refused_after_a_valid_signature(fleet: Fleet) -> None:
    def bad(m: dict[str, Any]) -> None:
        m["records"][0]["position"] = 42

    built = build_package(
        fleet.kiosk,
        fleet.enrollment.public_key,
        device=DEVICE,
        records=RECORDS,
        tamper_manifest=bad,
    )
    err = _refused(fleet, built.data, "package_malformed")
    assert "position" in err.message
