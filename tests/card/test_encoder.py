"""The chip encoder end to end on a real pcscd + vpcd stack with the project's emulated card:
personalise, lock, read back; BAC with a wrong MRZ; writes after lock; faults mid-write;
packages refused before any write."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from typing import Any

import pytest

from appliance.drivers.card import apdu as A
from appliance.drivers.card.apdu import CommandApdu
from appliance.drivers.card.emulator import EmrtdApplet, Faults
from appliance.drivers.card.link import PcscLink
from appliance.errors import ApplianceError, DeviceError, TrustError
from appliance.lds import issuance, testpki
from appliance.lds.files import FILE_FIDS

from .conftest import BIRTH, DOC, EXPIRY, dg13, td1, wait_card_state


def _issued(enc: Any, package: issuance.IssuancePackage) -> dict[str, Any]:
    result = enc.encode(package)
    assert result["outcome"] == "issued"
    assert result["passive_authentication"]["passed"] is True
    return result


def test_personalise_lock_and_read_back(make_encoder, insert_card, package, events, face) -> None:
    emu = insert_card()
    enc = make_encoder()
    steps: list[str] = []
    result = enc.encode(package, progress=steps.append)
    assert result["outcome"] == "issued"
    assert result["extended_apdu"] is True
    assert set(result["files"]) == {"EF.COM", "DG1", "DG2", "DG13", "EF.SOD"}
    for name, info in result["files"].items():
        assert info["sha256"] == hashlib.sha256(bytes(package.files[name])).hexdigest()
    assert "write:EF.SOD" in steps and steps.index("write:EF.SOD") > steps.index("write:DG2")
    assert steps[-1] == "verify:read"
    assert emu.applet.locked
    # What the chip holds is byte for byte the package.
    for name, data in package.files.items():
        assert bytes(emu.applet.files[FILE_FIDS[name]]) == bytes(data)
    issued = events.wait_for("card.issued")
    assert issued["package_id"] == "pkg-0001"
    events.wait_for("card.inserted")

    read = enc.read(DOC, BIRTH, EXPIRY)
    assert read["passive_authentication"]["passed"] is True
    assert read["passive_authentication"]["data_groups"] == {"DG1": "ok", "DG2": "ok", "DG13": "ok"}
    assert read["dg1"]["document_number"] == DOC
    assert read["dg1"]["primary"] == "NGUYEN"
    assert read["dg13"]["full_name"] == "Nguyễn Thị Minh Khai"
    assert read["dg13"]["father"] == "Nguyễn Văn Bình"
    assert read["dg13"]["old_id_number"] == "025123456"
    assert read["dg2"]["sha256"] == hashlib.sha256(bytes(package.files["DG2"])).hexdigest()
    # The portrait itself never leaves in a reply.
    text = json.dumps(read, ensure_ascii=False)
    assert base64.b64encode(face[:64]).decode() not in text
    assert face[40:80].hex() not in text


def test_short_apdus_only_need_more_exchanges(make_encoder, insert_card, package) -> None:
    insert_card()
    short = _issued(make_encoder(extended_apdu=False), package)
    assert short["extended_apdu"] is False
    # 20 KB at 255 bytes per UPDATE BINARY and 224 per READ BINARY: > 150 APDUs.
    assert short["apdus"] > 150


def test_extended_apdus_need_far_fewer_exchanges(make_encoder, insert_card, package) -> None:
    insert_card()
    ext = _issued(make_encoder(), package)
    assert ext["apdus"] < 60


def test_wrong_mrz_is_refused_by_bac(make_encoder, insert_card, package) -> None:
    insert_card()
    enc = make_encoder()
    _issued(enc, package)
    with pytest.raises(DeviceError) as ei:
        enc.read(DOC, "900102", EXPIRY)
    assert ei.value.code == "bac_failed"
    with pytest.raises(DeviceError) as ei:
        enc.read("079190001235", BIRTH, EXPIRY)
    assert ei.value.code == "bac_failed"
    assert enc.read(DOC, BIRTH, EXPIRY)["passive_authentication"]["passed"]


def test_writes_and_plain_reads_refused_after_lock(
    make_encoder, insert_card, package, profile
) -> None:
    emu = insert_card()
    enc = make_encoder()
    _issued(enc, package)
    link = PcscLink()
    try:
        link.connect(link.find_reader(""))
        assert link.transmit(CommandApdu(0, 0xA4, 4, 0x0C, profile.aid_bytes)).ok
        refused = [
            CommandApdu(0, 0xE0, 0, 0, bytes.fromhex("63040010010F")),  # CREATE FILE
            CommandApdu(0, 0xA4, 2, 0x0C, b"\x01\x01"),  # plain SELECT DG1
            CommandApdu(0, 0xD6, 0, 0, b"\x00"),  # UPDATE BINARY
            CommandApdu(0, 0xDA, 0, 0x62, bytes.fromhex("62060400040004 00")[:8]),  # PUT DATA
            CommandApdu(0, 0xDA, 0xDE, 0xAD),  # lock again
            CommandApdu(0, 0xB0, 0x81, 0, ne=4),  # READ BINARY by SFI, plain
        ]
        for cmd in refused:
            assert link.transmit(cmd).sw == A.SW_SECURITY_STATUS, cmd
    finally:
        link.close()
    before = {fid: bytes(d) for fid, d in emu.applet.files.items()}
    # Encoding the issued card again is refused before anything is written.
    with pytest.raises(DeviceError) as ei:
        enc.encode(package)
    assert ei.value.code == "card_not_blank"
    assert {fid: bytes(d) for fid, d in emu.applet.files.items()} == before


def _spoiled(exc: ApplianceError) -> dict[str, Any]:
    assert exc.code == "card_spoiled", exc.to_dict()
    return exc.details


def test_card_pulled_mid_write_is_spoiled(make_encoder, insert_card, package, events) -> None:
    emu = insert_card(Faults(pull_on_update=3))
    enc = make_encoder()
    with pytest.raises(DeviceError) as ei:
        enc.encode(package)
    d = _spoiled(ei.value)
    assert d["step"].startswith("write:")
    assert d["cause"]["code"] in ("card_removed", "card_mute")
    assert emu.pulled.is_set()
    assert not emu.applet.locked
    ev = events.wait_for("card.spoiled")
    assert ev["step"] == d["step"] and ev["package_id"] == "pkg-0001"


def test_write_failure_6581_is_spoiled(make_encoder, insert_card, package, events) -> None:
    emu = insert_card(Faults(fail_on_update=5))
    enc = make_encoder()
    with pytest.raises(DeviceError) as ei:
        enc.encode(package)
    d = _spoiled(ei.value)
    assert d["step"].startswith("write:")
    assert d["cause"]["details"]["status"] == 0x6581
    assert not emu.applet.locked
    assert events.wait_for("card.spoiled")["step"] == d["step"]


def test_slow_card_still_issues(make_encoder, insert_card, package) -> None:
    emu = insert_card(Faults(delay_s=0.002))
    result = _issued(make_encoder(), package)
    assert emu.apdus_seen >= result["apdus"] - 2


def test_deadline_passing_mid_write_is_spoiled_with_its_step(
    make_encoder, insert_card, package
) -> None:
    emu = insert_card(Faults(delay_s=0.001))
    enc = make_encoder(extended_apdu=False)
    cancelled = threading.Event()

    def progress(step: str) -> None:
        if step == "write:DG2":
            cancelled.set()  # what the dispatcher does when the command's timeout passes

    with pytest.raises(DeviceError) as ei:
        enc.encode(package, cancelled=cancelled, progress=progress)
    d = _spoiled(ei.value)
    assert d["step"] == "write:DG2"
    assert d["cause"]["code"] == "timeout"
    assert not emu.applet.locked


def _tamper(package: issuance.IssuancePackage, name: str, fn) -> issuance.IssuancePackage:
    files = {k: base64.b64encode(bytes(v)).decode() for k, v in package.files.items()}
    files[name] = base64.b64encode(fn(bytes(package.files[name]))).decode()
    return issuance.IssuancePackage.model_validate({"package_id": "bad", "files": files})


def _flip_last_sig_byte(sod: bytes) -> bytes:
    b = bytearray(sod)
    b[-3] ^= 0x01
    return bytes(b)


def _dg13_changed(_old: bytes) -> bytes:
    from appliance.lds.files import encode_dg13

    d = dg13()
    return encode_dg13(type(d)(**{**d.__dict__, "full_name": "Trần Văn Giả"}))


@pytest.mark.parametrize(
    ("name", "fn", "code"),
    [
        ("EF.SOD", _flip_last_sig_byte, ("sod_signature_invalid", "lds_malformed")),
        ("DG13", _dg13_changed, ("dg_hash_mismatch",)),
        ("DG2", lambda b: b[:-1] + bytes([b[-1] ^ 0xFF]), ("dg_hash_mismatch",)),
        ("DG1", lambda b: b[:10], ("lds_malformed",)),
        ("EF.COM", lambda b: bytes.fromhex("600A5F0104303130375C0161"), ("lds_malformed",)),
    ],
)
def test_tampered_packages_are_refused_before_any_write(
    make_encoder, insert_card, package, name, fn, code
) -> None:
    emu = insert_card()
    enc = make_encoder()
    with pytest.raises(ApplianceError) as ei:
        enc.encode(_tamper(package, name, fn))
    assert ei.value.code in code, ei.value.to_dict()
    assert emu.apdus_seen == 0 and emu.applet.files == {}


def test_package_from_another_csca_is_refused(make_encoder, insert_card, face) -> None:
    emu = insert_card()
    rogue = testpki.make_test_pki("ROGUE CSCA VN")
    pkg = issuance.build_issuance_package(
        package_id="rogue",
        mrz=td1(),
        dg13=dg13(),
        face_records=[face],
        ds_key=rogue.ds_key,
        ds_cert=rogue.ds_cert,
    )
    enc = make_encoder()
    with pytest.raises(TrustError) as ei:
        enc.encode(pkg)
    assert ei.value.code == "sod_chain_invalid"
    assert emu.apdus_seen == 0


def test_no_trust_bundle_refuses_to_write(make_encoder, insert_card, package) -> None:
    emu = insert_card()
    enc = make_encoder(trust_bundle=None)
    with pytest.raises(TrustError) as ei:
        enc.encode(package)
    assert ei.value.code == "trust_bundle_missing"
    assert emu.apdus_seen == 0


def test_monitor_reports_insert_and_remove(make_encoder, insert_card, events, pcsc_stack) -> None:
    enc = make_encoder()
    events.wait_for("device.health")
    emu = insert_card()
    ins = events.wait_for("card.inserted")
    assert ins["atr"] == emu.applet.profile.atr.upper()
    assert enc.status()["card_present"] is True
    emu.pull()
    events.wait_for("card.removed")
    assert enc.status()["card_present"] is False
    assert enc.health().state == "ok"


def test_absent_reader_is_reported_not_raised(make_encoder, events) -> None:
    enc = make_encoder(reader="No Such Reader")
    ev = events.wait_for("device.health")
    assert ev["state"] == "disconnected"
    assert enc.health().state == "disconnected"
    with pytest.raises(DeviceError) as ei:
        enc.read(DOC, BIRTH, EXPIRY)
    assert ei.value.code == "reader_absent"


def test_emulator_survives_malformed_apdus_on_the_stack(insert_card) -> None:
    emu = insert_card()
    link = PcscLink()
    try:
        link.connect(link.find_reader(""))
        for raw in [
            b"\x00\xa4\x04",
            b"\x00\xb0\x00\x00\x05\x01",
            b"\x0c\xb0\x00\x00\x02\x8e\x00",
            b"\x80\xca\x00\x00\x00",
            b"\x00\xd6\x00\x00\x00\x00\x03\x01",
        ]:
            resp = A.ResponseApdu.decode(link.transmit_raw(raw))
            assert resp.sw != A.SW_OK
        # still alive and answering properly
        sel = link.transmit(CommandApdu(0, 0xA4, 4, 0x0C, emu.applet.profile.aid_bytes))
        assert sel.ok
    finally:
        link.close()


def test_card_pulled_then_reinserted_keeps_its_content(
    make_encoder, insert_card, package, profile, pcsc_stack
) -> None:
    applet = EmrtdApplet(profile)
    emu = insert_card(applet=applet)
    enc = make_encoder()
    _issued(enc, package)
    emu.pull()
    wait_card_state(pcsc_stack, False)
    insert_card(applet=applet)
    assert enc.read(DOC, BIRTH, EXPIRY)["passive_authentication"]["passed"]


T0_ATR = "3B09" + b"Appliance".hex().upper()  # T=0 only: no interface bytes, no TCK


def test_t0_card_with_get_response_and_6cxx(make_encoder, insert_card, package, profile) -> None:
    """A T=0 card that hands data out through 61xx/GET RESPONSE and corrects Le with 6Cxx."""
    t0 = profile.model_copy(update={"atr": T0_ATR, "extended_length": False})
    emu = insert_card(Faults(get_response=True, exact_le=True), applet=EmrtdApplet(t0))
    link = PcscLink()
    try:
        link.connect(link.find_reader(""))
        assert link.protocol_name == "T=0"
        assert link.atr.hex().upper() == T0_ATR
        assert link.transmit(CommandApdu(0, 0xA4, 4, 0x0C, t0.aid_bytes)).ok
        assert link.transmit(CommandApdu(0, 0xE0, 0, 0, bytes.fromhex("63040005011E"))).ok
        assert link.transmit(CommandApdu(0, 0xA4, 2, 0x0C, b"\x01\x1e")).ok
        assert link.transmit(CommandApdu(0, 0xD6, 0, 0, b"\x60\x03abc")).ok
        n = link.apdu_count
        r = link.transmit(CommandApdu(0, 0xB0, 0, 0, ne=256))  # 6C05, then 61 05, GET RESPONSE
        assert r.ok and r.data == b"\x60\x03abc"
        assert link.apdu_count - n == 3
    finally:
        link.close()
    emu.applet = EmrtdApplet(t0)  # a fresh blank card behind the same connection
    result = make_encoder().encode(package)
    assert result["outcome"] == "issued" and result["extended_apdu"] is False


def test_silent_write_error_is_caught_by_the_read_back(
    make_encoder, insert_card, package, events
) -> None:
    """The card answers 9000 but stores a flipped byte: never reported as issued."""
    emu = insert_card(Faults(corrupt_on_update=4))
    with pytest.raises(DeviceError) as ei:
        make_encoder().encode(package)
    d = _spoiled(ei.value)
    assert d["step"] == "verify:compare"
    assert d["cause"]["code"] == "readback_mismatch" and d["cause"]["details"]["files"]
    assert emu.applet.locked  # written and locked, yet spoiled: the chip is wrong
    assert "card.issued" not in events.types()
