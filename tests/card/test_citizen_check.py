"""The kiosk's own citizen check (docs/card.md, "Citizen data"): a package signed by a Document
Signer the kiosk trusts, whose citizen data is inconsistent, is refused by ``card.encode`` with
``citizen_invalid`` naming every field and rule, and the card in the reader stays blank (read
through pcscd + vpcd, then issued with the consistent package)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from appliance.citizen.validation import CitizenDataInvalid
from appliance.drivers.card.apdu import SW_FILE_NOT_FOUND
from appliance.drivers.card.device import EmrtdCard
from appliance.drivers.card.link import PcscLink
from appliance.drivers.card.profile import CardProfile
from appliance.drivers.card.teststack import PcscTestStack
from appliance.errors import DeviceStatusError
from appliance.lds import files, issuance, mrz, testpki
from appliance.lds.files import FILE_FIDS

from .conftest import dg13, td1

# Each case changes the consistent citizen of conftest.py (a woman born 1990-01-01, number
# 079190001234, issued 2025-01-01, valid to 2030-01-01) in DG1 and DG13 alike, so that only the
# rules named fire.
CASES: dict[str, tuple[dict[str, str], dict[str, str], set[tuple[str, str]]]] = {
    # A man's century digit (0) and another birth year (85) in a woman's number born 1990.
    "number_vs_sex_and_birth_year": (
        {"document_number": "079085001234"},
        {"personal_id": "079085001234"},
        {("personal_id", "id_century_sex"), ("personal_id", "id_birth_year")},
    ),
    # Issued at 35: the card runs to the 40th birthday (2030), not 2035.
    "expiry_off_the_milestone": (
        {"expiry": "350101"},
        {"date_of_expiry": "01/01/2035"},
        {("date_of_expiry", "expiry_milestone")},
    ),
    # Born 2019 (century-and-sex digit 3, year 19): six years old on the issue date.
    "six_years_old": (
        {"document_number": "079319001234", "birth": "190101", "expiry": "440101"},
        {
            "personal_id": "079319001234",
            "date_of_birth": "01/01/2019",
            "date_of_expiry": "01/01/2044",
        },
        {("date_of_birth", "age_minimum")},
    ),
    # DG13 is consistent, the MRZ says M.
    "mrz_contradicts_dg13": (
        {"sex": "M"},
        {},
        {("DG1.sex", "mrz_mismatch")},
    ),
}


def _package(
    pki: tuple[testpki.TestPki, dict[str, Path]],
    face: bytes,
    m: mrz.Td1,
    d: files.Dg13 | None,
    package_id: str,
) -> issuance.IssuancePackage:
    p, _ = pki
    return issuance.build_issuance_package(
        package_id=package_id,
        mrz=m,
        dg13=d,
        face_records=[face],
        ds_key=p.ds_key,
        ds_cert=p.ds_cert,
    )


def _assert_blank(stack: PcscTestStack, profile: CardProfile) -> None:
    """Through pcscd + vpcd as a kiosk would: the applet answers and there is no EF.COM."""
    link = PcscLink()
    try:
        link.connect(stack.reader_name)
        card = EmrtdCard(link, profile, extended=False)
        card.select_application()
        with pytest.raises(DeviceStatusError) as ei:
            card.select_file(FILE_FIDS["EF.COM"])
        assert ei.value.status == SW_FILE_NOT_FOUND
    finally:
        link.close()


@pytest.mark.parametrize("case", sorted(CASES))
def test_inconsistent_citizen_is_refused_and_the_card_stays_blank(
    make_encoder: Any,
    insert_card: Any,
    pcsc_stack: PcscTestStack,
    profile: CardProfile,
    pki: tuple[testpki.TestPki, dict[str, Path]],
    face: bytes,
    package: issuance.IssuancePackage,
    case: str,
) -> None:
    mrz_change, dg13_change, rules = CASES[case]
    bad = _package(pki, face, replace(td1(), **mrz_change), replace(dg13(), **dg13_change), case)
    emu = insert_card()
    enc = make_encoder()
    steps: list[str] = []
    with pytest.raises(CitizenDataInvalid) as ei:
        enc.encode(bad, progress=steps.append)
    err = ei.value
    assert err.code == "citizen_invalid"
    assert {(p["field"], p["rule"]) for p in err.to_dict()["details"]["problems"]} == rules
    for field, rule in rules:  # the message names each field and rule too
        assert field in err.message and f"[{rule}]" in err.message
    assert steps == ["check_package"]  # refused before waiting for the card
    assert emu.apdus_seen == 0 and emu.applet.files == {}
    _assert_blank(pcsc_stack, profile)
    # The same card takes the consistent package.
    assert enc.encode(package)["outcome"] == "issued"
    assert emu.applet.locked


def test_cccd_without_dg13_is_refused(
    make_encoder: Any,
    insert_card: Any,
    pcsc_stack: PcscTestStack,
    profile: CardProfile,
    pki: tuple[testpki.TestPki, dict[str, Path]],
    face: bytes,
) -> None:
    emu = insert_card()
    enc = make_encoder()
    with pytest.raises(CitizenDataInvalid) as ei:
        enc.encode(_package(pki, face, td1(), None, "no-dg13"))
    assert ei.value.rules == {("DG13", "required")}
    assert emu.apdus_seen == 0
    _assert_blank(pcsc_stack, profile)


def test_icao_document_without_dg13_is_still_issued(
    make_encoder: Any,
    insert_card: Any,
    pki: tuple[testpki.TestPki, dict[str, Path]],
    face: bytes,
) -> None:
    # ICAO 9303-11 Appendix D's specimen number: not a CCCD, no citizen record to check.
    specimen = mrz.Td1("L898902C3", "740812", "F", "120415", "ERIKSSON", "ANNA MARIA")
    insert_card()
    enc = make_encoder()
    assert enc.encode(_package(pki, face, specimen, None, "icao"))["outcome"] == "issued"
