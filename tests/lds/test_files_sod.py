"""EF.COM, DG1, DG2, DG13 and EF.SOD: spec vectors, round trips, Passive Authentication."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from appliance.errors import ConfigError, ProtocolError, TrustError
from appliance.lds import files, issuance, mrz, sod, testpki
from appliance.lds.tlv import parse_single, tlv

ICAO_COM = "60145F0104303130365F36063034303030305C026175"


@pytest.fixture(scope="module")
def pki() -> testpki.TestPki:
    return testpki.make_test_pki()


def test_ef_com_matches_the_icao_example() -> None:
    assert files.encode_ef_com([1, 2], "0106", "040000").hex().upper() == ICAO_COM
    com = files.decode_ef_com(bytes.fromhex(ICAO_COM))
    assert com == files.EfCom("0106", "040000", (1, 2))


def test_ef_com_refuses_unknown_tags() -> None:
    with pytest.raises(ProtocolError):
        files.decode_ef_com(bytes.fromhex("600B5F0104303130375C026199"[:26]))
    with pytest.raises(ValueError):
        files.encode_ef_com([7])


def test_dg1_round_trip() -> None:
    m = mrz.Td1("079090001234", "900101", "M", "350101", "Lê", "Văn Tám")
    dg1 = files.encode_dg1(m)
    assert dg1[:5] == bytes.fromhex("615D5F1F5A")  # 3 + 90 bytes
    assert files.decode_dg1(dg1) == mrz.parse_td1(m.text())


def test_dg1_refuses_bad_check_digits() -> None:
    text = mrz.Td1("079090001234", "900101", "M", "350101", "LE", "TAM").text()
    bad = text[:36] + str((int(text[36]) + 1) % 10) + text[37:]  # birth check digit
    with pytest.raises(ProtocolError):
        files.encode_dg1(bad)


def _record(n: int = 1000) -> bytes:
    return files.face_record_from_jpeg(b"\xff\xd8" + bytes(n), 10, 12)


def test_dg2_round_trip_and_structure() -> None:
    rec = _record()
    dg2 = files.encode_dg2([rec])
    assert dg2[0] == 0x75 and dg2[4:6] == b"\x7f\x61"
    assert files.decode_dg2(dg2) == [rec]
    assert rec[:4] == b"FAC\x00" and int.from_bytes(rec[8:12], "big") == len(rec)
    assert files.decode_dg2(files.encode_dg2([rec, rec])) == [rec, rec]


def test_dg2_refuses_what_is_not_a_face_record() -> None:
    with pytest.raises(ValueError):
        files.encode_dg2([b"\xff\xd8 a bare jpeg"])
    with pytest.raises(ValueError):
        files.encode_dg2([])
    with pytest.raises(ValueError):
        files.face_record_from_jpeg(b"PNG", 1, 1)


def _dg13() -> files.Dg13:
    return files.Dg13(
        # Hanoi (001), a woman born in the 1900s (1), in 1999 (99); issued at 24: to her 40th.
        personal_id="001199012345",
        full_name="Đặng Thị Ngọc Ánh",
        date_of_birth="15/03/1999",
        sex="Nữ",
        nationality="Việt Nam",
        ethnicity="Kinh",
        religion="Không",
        place_of_origin="Xã Đông Hội, Đông Anh, Hà Nội",
        permanent_residence="Số 5 ngõ 12 Phố Huế, Hai Bà Trưng, Hà Nội",
        identifying_marks="Sẹo chấm C 1cm dưới sau đuôi mắt phải",
        date_of_issue="10/05/2023",
        date_of_expiry="15/03/2039",
        father="Đặng Văn Hùng",
        mother="Nguyễn Thị Lan",
        spouse="Phạm Minh Quân",
        old_id_number="013456789",
    )


def test_dg13_round_trip_and_layout() -> None:
    d = _dg13()
    raw = files.encode_dg13(d)
    assert raw[0] == 0x6D
    assert files.DG13_OID_DER in raw
    # Field 2, as public readers expect: 30 LL 02 01 02 0C LL <utf8>
    name = "Đặng Thị Ngọc Ánh".encode()
    assert tlv(0x30, b"\x02\x01\x02" + tlv(0x0C, name)) in raw
    assert files.decode_dg13(raw) == d


def _dg13_raw(fields: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(tlv(0x30, tlv(0x02, bytes([n])) + v) for n, v in fields)
    return tlv(0x6D, tlv(0x30, tlv(0x02, b"\x01") + files.DG13_OID_DER + tlv(0x31, body)))


def _u(s: str) -> bytes:
    return tlv(0x0C, s.encode())


def test_dg13_is_read_by_number_and_tolerates_both_readings_of_15_16() -> None:
    # Out of order, field 14 absent, old ID in 16 and chip id in 15 (the other reading).
    raw = _dg13_raw(
        [
            (16, _u("025123456")),
            (2, _u("Hồ Văn Nam")),
            (15, _u("3F2A00B1C4D5E6F7")),
            (1, _u("079090001234")),
            (13, tlv(0x30, _u("Hồ Văn A") + _u("Lê Thị B"))),
            (42, _u("future field")),
        ]
    )
    d = files.decode_dg13(raw)
    assert d.personal_id == "079090001234" and d.full_name == "Hồ Văn Nam"
    assert d.old_id_number == "025123456" and d.chip_id == "3F2A00B1C4D5E6F7"
    assert (d.father, d.mother, d.spouse) == ("Hồ Văn A", "Lê Thị B", None)
    assert 42 in d.unknown_fields
    # The reading this project writes: 15 = old ID number.
    d2 = files.decode_dg13(
        _dg13_raw([(1, _u("079090001234")), (2, _u("X")), (15, _u("025123456"))])
    )
    assert d2.old_id_number == "025123456" and d2.chip_id is None


@pytest.mark.parametrize(
    "raw",
    [
        bytes.fromhex("6D00"),
        bytes.fromhex("6D023000"),
        _dg13_raw([(2, _u("no personal id"))]),
        _dg13_raw([(1, _u("079090001234")), (2, tlv(0x0C, b"\xff\xfe"))]),
        _dg13_raw([(1, tlv(0x02, b"\x01")), (2, _u("x"))]),
    ],
)
def test_malformed_dg13_is_a_clear_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        files.decode_dg13(raw)


def test_dg13_refuses_a_bad_personal_id() -> None:
    with pytest.raises(ValueError):
        files.encode_dg13(files.Dg13(personal_id="12345", full_name="A"))


def _dgs() -> dict[int, bytes]:
    return {
        1: files.encode_dg1(mrz.Td1("079090001234", "900101", "M", "350101", "LE", "TAM")),
        2: files.encode_dg2([_record()]),
        13: files.encode_dg13(_dg13()),
    }


def test_sod_sign_and_passive_authentication(pki: testpki.TestPki) -> None:
    dgs = _dgs()
    raw = sod.sign_sod(dgs, pki.ds_key, pki.ds_cert)
    parsed = sod.parse_sod(raw)
    assert parsed.hash_algorithm == "sha256" and set(parsed.dg_hashes) == {1, 2, 13}
    res = sod.passive_authentication(raw, dgs, [pki.csca_cert])
    assert res.passed, res.errors
    assert res.data_groups == {1: "ok", 2: "ok", 13: "ok"}


def test_sod_is_standard_cms_for_openssl(pki: testpki.TestPki, tmp_path: Path) -> None:
    """Cross-check with an independent implementation: openssl verifies our SignedData."""
    raw = sod.sign_sod(_dgs(), pki.ds_key, pki.ds_cert)
    cms_der = parse_single(raw, 0x77)
    (tmp_path / "sod.der").write_bytes(cms_der)
    (tmp_path / "csca.pem").write_bytes(pki.csca_cert.public_bytes(serialization.Encoding.PEM))
    out = subprocess.run(
        [
            "openssl",
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            str(tmp_path / "sod.der"),
            "-CAfile",
            str(tmp_path / "csca.pem"),
            "-purpose",
            "any",
            "-binary",
            "-out",
            str(tmp_path / "lso.der"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "lso.der").read_bytes() == sod.parse_sod(raw).content


def test_rsa_document_signer(pki: testpki.TestPki) -> None:
    key = rsa.generate_private_key(65537, 2048)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=RSA DS,C=VN"))
        .issuer_name(pki.csca_cert.subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(pki.csca_key, hashes.SHA256())
    )
    dgs = _dgs()
    res = sod.passive_authentication(sod.sign_sod(dgs, key, cert, "sha384"), dgs, [pki.csca_cert])
    assert res.passed and res.hash_algorithm == "sha384"


def test_pa_detects_a_changed_data_group(pki: testpki.TestPki) -> None:
    dgs = _dgs()
    raw = sod.sign_sod(dgs, pki.ds_key, pki.ds_cert)
    dgs[13] = files.encode_dg13(files.Dg13(personal_id="001099012345", full_name="Giả Mạo"))
    res = sod.passive_authentication(raw, dgs, [pki.csca_cert])
    assert not res.passed and res.data_groups[13] == "mismatch" and res.signature_valid
    with pytest.raises(TrustError) as ei:
        res.raise_for_failure()
    assert ei.value.code == "dg_hash_mismatch"


def test_pa_detects_a_missing_or_extra_data_group(pki: testpki.TestPki) -> None:
    dgs = _dgs()
    raw = sod.sign_sod({1: dgs[1], 2: dgs[2]}, pki.ds_key, pki.ds_cert)
    res = sod.passive_authentication(raw, dgs, [pki.csca_cert])
    assert res.data_groups[13] == "not_in_sod" and not res.passed
    res = sod.passive_authentication(raw, {1: dgs[1]}, [pki.csca_cert])
    assert res.data_groups[2] == "not_read" and not res.passed


def test_pa_detects_a_bad_signature(pki: testpki.TestPki) -> None:
    dgs = _dgs()
    raw = bytearray(sod.sign_sod(dgs, pki.ds_key, pki.ds_cert))
    raw[-5] ^= 0x40  # inside the ECDSA signature, the last field of SignedData
    res = sod.passive_authentication(bytes(raw), dgs, [pki.csca_cert])
    assert not res.signature_valid and not res.passed
    with pytest.raises(TrustError) as ei:
        res.raise_for_failure()
    assert ei.value.code == "sod_signature_invalid"


def test_pa_refuses_an_unknown_csca_and_an_expired_ds(pki: testpki.TestPki) -> None:
    dgs = _dgs()
    raw = sod.sign_sod(dgs, pki.ds_key, pki.ds_cert)
    other = testpki.make_test_pki()  # same subject name, different key
    res = sod.passive_authentication(raw, dgs, [other.csca_cert])
    assert res.signature_valid and not res.chain_valid
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=4000)
    res = sod.passive_authentication(raw, dgs, [pki.csca_cert], now=later)
    assert not res.chain_valid and "validity" in res.errors[0]


def test_sod_parse_errors_are_clear() -> None:
    for bad in (b"", bytes.fromhex("7700"), tlv(0x77, b"\x30\x03\x06\x01\x00"), tlv(0x60, b"")):
        with pytest.raises(ProtocolError):
            sod.parse_sod(bad)


def test_trust_bundle_loading(pki: testpki.TestPki, tmp_path: Path) -> None:
    paths = testpki.write_test_pki(pki, tmp_path / "pki")
    assert (paths["ds_key"].stat().st_mode & 0o777) == 0o600
    assert len(sod.load_trust_bundle(paths["csca_cert"])) == 1
    d = tmp_path / "bundle"
    d.mkdir()
    (d / "a.pem").write_bytes(paths["csca_cert"].read_bytes())
    (d / "b.der").write_bytes(pki.csca_cert.public_bytes(serialization.Encoding.DER))
    (d / "README").write_text("ignored")
    assert len(sod.load_trust_bundle(d)) == 2
    (tmp_path / "junk.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n")
    for bad in (tmp_path / "junk.pem", tmp_path / "missing.pem", tmp_path / "empty"):
        if bad.name == "empty":
            bad.mkdir()
        with pytest.raises(ConfigError):
            sod.load_trust_bundle(bad)


def test_issuance_package_checks(pki: testpki.TestPki) -> None:
    m = mrz.Td1("001199012345", "990315", "F", "390315", "Đặng", "Thị Ngọc Ánh")
    pkg = issuance.build_issuance_package(
        package_id="x-1",
        mrz=m,
        dg13=_dg13(),
        face_records=[_record()],
        ds_key=pki.ds_key,
        ds_cert=pki.ds_cert,
    )
    v = issuance.verify_package(pkg, [pki.csca_cert])
    assert list(v.files) == ["EF.COM", "DG1", "DG2", "DG13", "EF.SOD"]
    assert v.mrz.document_number == "001199012345" and v.pa.passed
    wire = pkg.model_dump_json()
    assert issuance.IssuancePackage.model_validate_json(wire) == pkg
    # EF.COM that does not list DG13
    files_b64 = pkg.model_dump(mode="json")["files"]
    import base64

    files_b64["EF.COM"] = base64.b64encode(files.encode_ef_com([1, 2])).decode()
    bad = issuance.IssuancePackage.model_validate({"package_id": "x-2", "files": files_b64})
    with pytest.raises(ProtocolError):
        issuance.verify_package(bad, [pki.csca_cert])


@pytest.mark.parametrize(
    "payload",
    [
        {"package_id": "a", "files": {"DG1": "AAAA"}},
        {"package_id": "a b", "files": {}},
        {"package_id": "a", "files": {"EF.COM": "!!", "DG1": "AA==", "EF.SOD": "AA=="}},
        {
            "package_id": "a",
            "files": {"EF.COM": "AA==", "DG1": "AA==", "EF.SOD": "AA==", "DG99": "AA=="},
        },
        {
            "package_id": "a",
            "files": {"EF.COM": "AA==", "DG1": "AA==", "EF.SOD": "AA=="},
            "extra": 1,
        },
    ],
)
def test_malformed_package_payloads_are_refused(payload: dict[str, object]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        issuance.IssuancePackage.model_validate(payload)


def test_pa_without_require_all_lists_unread_groups(pki: testpki.TestPki) -> None:
    dgs = _dgs()
    raw = sod.sign_sod(dgs, pki.ds_key, pki.ds_cert)
    res = sod.passive_authentication(
        raw, {1: dgs[1], 13: dgs[13]}, [pki.csca_cert], require_all=False
    )
    assert res.passed and res.not_read == [2]
    assert res.to_dict()["not_read"] == ["DG2"]


_SIGNED: dict[str, bytes] = {}


def _signed_sod() -> bytes:
    if "sod" not in _SIGNED:
        p = testpki.make_test_pki()
        _SIGNED["sod"] = sod.sign_sod(_dgs(), p.ds_key, p.ds_cert)
        _SIGNED["csca"] = p.csca_cert.public_bytes(serialization.Encoding.DER)
    return _SIGNED["sod"]


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(0, 2000), value=st.integers(0, 255))
def test_corrupted_sod_never_crashes_and_never_passes_unless_unsigned(pos: int, value: int) -> None:
    raw = bytearray(_signed_sod())
    pos %= len(raw)
    if raw[pos] == value:
        return
    raw[pos] = value
    anchors = [x509.load_der_x509_certificate(_SIGNED["csca"])]
    try:
        res = sod.passive_authentication(bytes(raw), _dgs(), anchors)
    except ProtocolError as exc:
        assert exc.code == "lds_malformed"
        return
    if res.passed:
        # Only bytes outside what is signed or hashed may change without detection (e.g. the
        # SignedData version field): the signed attributes, content and signature must not.
        parsed = sod.parse_sod(bytes(raw))
        original = sod.parse_sod(_signed_sod())
        assert parsed.signed_bytes == original.signed_bytes
        assert parsed.content == original.content
        assert parsed.signature == original.signature


@settings(max_examples=300, deadline=None)
@given(
    which=st.sampled_from(["com", "dg1", "dg2", "dg13"]),
    pos=st.integers(0, 1500),
    value=st.integers(0, 255),
)
def test_corrupted_files_give_a_clear_error_or_a_value(which: str, pos: int, value: int) -> None:
    dgs = _dgs()
    raw = bytearray(
        {"com": files.encode_ef_com([1, 2, 13]), "dg1": dgs[1], "dg2": dgs[2], "dg13": dgs[13]}[
            which
        ]
    )
    raw[pos % len(raw)] = value
    decode = {
        "com": files.decode_ef_com,
        "dg1": files.decode_dg1,
        "dg2": files.decode_dg2,
        "dg13": files.decode_dg13,
    }[which]
    try:
        decode(bytes(raw))
    except ProtocolError as exc:
        assert exc.code == "lds_malformed"


def test_dg2_carries_the_camera_face_record_and_ours_parses_there() -> None:
    """Interop with the camera's ISO/IEC 19794-5 codec (appliance.biometrics.face_record)."""
    from appliance.biometrics.face_record import FaceImage, FaceRecord

    cam = FaceRecord((FaceImage(image=b"\xff\xd8" + bytes(300), width=480, height=640),)).encode()
    assert files.decode_dg2(files.encode_dg2([cam])) == [cam]
    ours = files.face_record_from_jpeg(b"\xff\xd8" + bytes(300), 480, 640)
    parsed = FaceRecord.decode(ours)
    assert (parsed.images[0].width, parsed.images[0].height) == (480, 640)
    assert parsed.images[0].image == b"\xff\xd8" + bytes(300)
