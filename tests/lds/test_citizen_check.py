"""``verify_package``'s citizen check (docs/card.md, "Citizen data"): after Passive
Authentication, on the kiosk's clock as a date in Vietnam."""

from __future__ import annotations

import base64
import datetime as dt

import pytest

from appliance.citizen.validation import CitizenDataInvalid, card_expiry
from appliance.errors import TrustError
from appliance.lds import files, issuance, mrz, testpki


@pytest.fixture(scope="module")
def pki() -> testpki.TestPki:
    return testpki.make_test_pki()


def _citizen(issued: dt.date) -> tuple[mrz.Td1, files.Dg13]:
    """A woman born 1990-01-01 in Hanoi, issued on ``issued``, with the milestone expiry."""
    expiry = card_expiry(dt.date(1990, 1, 1), issued)
    assert expiry is not None
    m = mrz.Td1("001190012345", "900101", "F", expiry.strftime("%y%m%d"), "Lê", "Thị Thu")
    d = files.Dg13(
        personal_id="001190012345",
        full_name="Lê Thị Thu",
        date_of_birth="01/01/1990",
        sex="Nữ",
        nationality="Việt Nam",
        date_of_issue=issued.strftime("%d/%m/%Y"),
        date_of_expiry=expiry.strftime("%d/%m/%Y"),
    )
    return m, d


def _package(pki: testpki.TestPki, m: mrz.Td1, d: files.Dg13 | None) -> issuance.IssuancePackage:
    return issuance.build_issuance_package(
        package_id="p-1", mrz=m, dg13=d, face_records=None, ds_key=pki.ds_key, ds_cert=pki.ds_cert
    )


def test_a_tampered_dg13_is_a_hash_mismatch_before_it_is_a_citizen(pki: testpki.TestPki) -> None:
    pkg = _package(pki, *_citizen(dt.date(2025, 1, 1)))
    assert issuance.verify_package(pkg, [pki.csca_cert]).pa.passed
    wire = pkg.model_dump(mode="json")
    raw = base64.b64decode(wire["files"]["DG13"])
    # After signing, DG13 is made to say "Nam" (a man).
    d = files.decode_dg13(raw)
    forged = files.encode_dg13(type(d)(**{**d.__dict__, "sex": "Nam"}))
    wire["files"]["DG13"] = base64.b64encode(forged).decode()
    bad = issuance.IssuancePackage.model_validate(wire)
    with pytest.raises(TrustError) as ei:
        issuance.verify_package(bad, [pki.csca_cert])
    # The forged DG13 also contradicts the number and the MRZ: the signature is checked first.
    assert ei.value.code == "dg_hash_mismatch"


def test_today_is_the_kiosk_clock_as_a_date_in_vietnam(pki: testpki.TestPki) -> None:
    # 18:00 UTC is already the next day in Vietnam (UTC+7): a card issued on that next day
    # passes at that instant, and is issued in the future for the real clock today.
    now = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).replace(hour=18, minute=0)
    vn_day = now.date() + dt.timedelta(days=1)
    pkg = _package(pki, *_citizen(vn_day))
    assert issuance.verify_package(pkg, [pki.csca_cert], now=now).pa.passed
    with pytest.raises(CitizenDataInvalid) as ei:
        issuance.verify_package(pkg, [pki.csca_cert])
    assert ei.value.rules == {("date_of_issue", "issue_future")}


def test_documents_without_dg13(pki: testpki.TestPki) -> None:
    m, _ = _citizen(dt.date(2025, 1, 1))
    with pytest.raises(CitizenDataInvalid) as ei:
        issuance.verify_package(_package(pki, m, None), [pki.csca_cert])
    assert ei.value.rules == {("DG13", "required")}
    assert "DG13" in ei.value.message
    # Not a CCCD (not 12 digits): no citizen record, only the ICAO checks.
    for number in ("L898902C3", "C01X00T4", "00119001234"):
        other = mrz.Td1(number, "900101", "F", "350101", "LE", "THU")
        assert issuance.verify_package(_package(pki, other, None), [pki.csca_cert]).pa.passed
