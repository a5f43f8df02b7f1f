"""Where citizen data enters: the centre's citizens file, the centre's issuance, and the LDS
(DG1's MRZ against DG13) all refuse what the one validation refuses, naming field and rule."""

from __future__ import annotations

import datetime as dt
import json
import unicodedata
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from appliance.central.citizens import Citizen, load_citizens, synthetic_citizen
from appliance.central.issue import DocumentSigner, build_for_enrollment
from appliance.central.store import PackageStore
from appliance.citizen import CitizenDataInvalid, Rule, Stage, validate_citizen
from appliance.errors import ApplianceError, ConfigError
from appliance.lds.files import NO_EXPIRY_TEXT, Dg13
from appliance.lds.issuance import check_issuance_data
from appliance.lds.mrz import NO_EXPIRY
from appliance.lds.testpki import make_test_pki, write_test_pki

GOOD: dict[str, Any] = {
    "personal_id": "001190012345",
    "full_name": "Nguyễn Thị Mai",
    "date_of_birth": "1990-02-15",
    "sex": "F",
    "date_of_issue": "2026-11-22",
    "date_of_expiry": "2030-02-15",
}


# --- the citizens file (appliance/central/citizens.py) ----------------------------------------


def test_citizens_file_refuses_the_issues_examples_all_at_once(tmp_path: Path) -> None:
    entries = {
        "OK": GOOD,
        "NFD": {**GOOD, "full_name": unicodedata.normalize("NFD", "Nguyễn  Thị Mai")},
        "CONTRADICTS": {**GOOD, "personal_id": "001099012345"},
        "P999": {**GOOD, "personal_id": "999190012345"},
        "Y2099": {**GOOD, "date_of_birth": "2099-01-01", "personal_id": "001399012345"},
        "SIX": {**GOOD, "date_of_birth": "2020-05-05", "personal_id": "001320012345"},
        "BACKWARDS": {**GOOD, "date_of_expiry": "2026-01-01"},
    }
    path = tmp_path / "citizens.json"
    path.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_citizens(path)
    where = {p for p, _reason in info.value.problems}
    assert where == {
        "CONTRADICTS.personal_id",
        "P999.personal_id",
        "Y2099.date_of_birth",
        "SIX.date_of_birth",
        "BACKWARDS.date_of_expiry",
    }
    reasons = " ".join(r for _p, r in info.value.problems)
    for rule in ("id_century_sex", "id_birth_year", "id_province", "birth_future", "age_minimum"):
        assert f"[{rule}]" in reasons
    assert "[expiry_before_issue]" in reasons
    # The message a CLI prints lists them, one per line, naming entry, field and rule.
    assert "\n  P999.personal_id: province code 999 is not in the official list" in str(info.value)

    # The good entries alone load, the NFD name in NFC with its spaces collapsed.
    ok = {k: entries[k] for k in ("OK", "NFD")}
    path.write_text(json.dumps(ok, ensure_ascii=False), encoding="utf-8")
    loaded = load_citizens(path)
    assert loaded["NFD"].full_name == "Nguyễn Thị Mai" == loaded["OK"].full_name
    assert loaded["OK"].ethnicity == "Kinh"  # the model's defaults still apply


def test_synthetic_citizens_pass_the_validation() -> None:
    # The generator and the validation share card_expiry: every synthetic citizen is valid,
    # whatever the day (a milestone two years ahead, a 29 February).
    for today in (dt.date(2026, 11, 22), dt.date(2024, 2, 29), dt.date(2027, 3, 1)):
        for i in range(150):
            c = synthetic_citizen(f"CIT-{i}", today=today)
            validate_citizen(c.model_dump(), today=today)
            check_issuance_data(c.td1(), c.dg13(), today=today)


# --- the centre's issuance (appliance/central/issue.py) ---------------------------------------


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> DocumentSigner:
    paths = write_test_pki(make_test_pki(), tmp_path_factory.mktemp("pki"))
    return DocumentSigner.load(paths["ds_key"].parent)


def test_issuance_refuses_an_inconsistent_citizen_before_anything_is_built(
    tmp_path: Path, signer: DocumentSigner
) -> None:
    store = PackageStore(tmp_path / "central")
    bad = Citizen.model_validate({**GOOD, "citizen_ref": "CIT-B", "personal_id": "999099012345"})
    with pytest.raises(CitizenDataInvalid) as info:
        build_for_enrollment(store, "kiosk-1", "pkg-1", bad, signer)
    assert info.value.code == "citizen_invalid"
    assert info.value.rules == {
        ("personal_id", Rule.ID_PROVINCE),
        ("personal_id", Rule.ID_CENTURY_SEX),
        ("personal_id", Rule.ID_BIRTH_YEAR),
    }
    assert "CIT-B" in info.value.message and "999099012345" not in info.value.message
    # Issuance needs the card's dates: a directory entry without them is not issued.
    undated = Citizen.model_validate({**GOOD, "date_of_issue": None, "date_of_expiry": None})
    with pytest.raises(CitizenDataInvalid) as info:
        build_for_enrollment(store, "kiosk-1", "pkg-1", undated, signer)
    assert ("date_of_issue", Rule.REQUIRED) in info.value.rules
    # A consistent citizen passes the validation and reaches the store (no such enrollment).
    good = Citizen.model_validate(GOOD)
    with pytest.raises(ApplianceError) as err:
        build_for_enrollment(store, "kiosk-1", "pkg-1", good, signer)
    assert err.value.code == "enrollment_unknown"


# --- the LDS: DG1's MRZ against DG13 (appliance/lds/issuance.py) -------------------------------


def _citizen() -> Citizen:
    return Citizen.model_validate(
        {**GOOD, "full_name": "Đặng Thị Ngọc Ánh", "old_id_number": "013456789"}
    )


def test_mrz_and_dg13_of_a_good_citizen_agree() -> None:
    c = _citizen()
    check_issuance_data(c.td1(), c.dg13(), today=dt.date(2026, 12, 3))
    # DG13 dates as the public readers want them (dd/MM/yyyy) are read the same way.
    d = c.dg13()
    slashed = replace(d, date_of_birth="15/02/1990", date_of_issue="22/11/2026")
    check_issuance_data(c.td1(), replace(slashed, date_of_expiry="15/02/2030"))
    check_issuance_data(c.td1(), None)  # no DG13: nothing to check the MRZ against


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"document_number": "001190012346"}, "DG1.document_number"),
        ({"birth": "900216"}, "DG1.birth"),
        ({"sex": "M"}, "DG1.sex"),
        ({"expiry": "350215"}, "DG1.expiry"),
        ({"primary": "Tran"}, "DG1.name"),
    ],
)
def test_mrz_disagreeing_with_dg13_is_refused(change: dict[str, str], field: str) -> None:
    c = _citizen()
    with pytest.raises(CitizenDataInvalid) as info:
        check_issuance_data(replace(c.td1(), **change), c.dg13())
    assert info.value.rules == {(field, Rule.MRZ_MISMATCH)}


def test_dg13_text_must_already_be_normalised() -> None:
    # The chip keeps what is written: an NFD name or a double space is refused, not rewritten.
    c = _citizen()
    nfd = replace(c.dg13(), full_name=unicodedata.normalize("NFD", c.full_name))
    with pytest.raises(CitizenDataInvalid) as info:
        check_issuance_data(c.td1(), nfd)
    assert info.value.rules == {("full_name", Rule.NOT_NORMALISED)}
    spaced = replace(
        c.dg13(), permanent_residence="12  Lê Lợi", sex=unicodedata.normalize("NFD", "Nữ")
    )
    with pytest.raises(CitizenDataInvalid) as info:
        check_issuance_data(c.td1(), spaced)
    assert info.value.rules == {
        ("permanent_residence", Rule.NOT_NORMALISED),
        ("sex", Rule.NOT_NORMALISED),
    }


def test_issuance_writes_normalised_text(tmp_path: Path, signer: DocumentSigner) -> None:
    # The centre normalises the citizen before it makes DG13: an NFD name gets through to the
    # store (without that step check_issuance_data would refuse DG13's name as not_normalised).
    c = Citizen.model_validate(
        {**GOOD, "full_name": unicodedata.normalize("NFD", "Nguyễn Thị Mai")}
    )
    with pytest.raises(ApplianceError) as err:
        build_for_enrollment(PackageStore(tmp_path / "central"), "kiosk-1", "pkg-1", c, signer)
    assert err.value.code == "enrollment_unknown"  # past the checks, to the store


def test_dg13_is_validated_as_a_record() -> None:
    c = _citizen()
    d = replace(c.dg13(), sex="Nam", date_of_expiry="15022035", old_id_number="12")
    with pytest.raises(CitizenDataInvalid) as info:
        check_issuance_data(c.td1(), d)
    assert info.value.rules == {
        ("personal_id", Rule.ID_CENTURY_SEX),
        ("date_of_expiry", Rule.EXPIRY_MILESTONE),
        ("old_id_number", Rule.OLD_ID_FORMAT),
    }
    with pytest.raises(CitizenDataInvalid) as info:
        check_issuance_data(c.td1(), Dg13(personal_id="001190012345", full_name="Nguyễn Thị Mai"))
    assert {("sex", Rule.REQUIRED), ("date_of_birth", Rule.REQUIRED)} <= info.value.rules


def test_over_sixty_dg13_without_expiry_passes() -> None:
    old = Citizen.model_validate(
        {
            **GOOD,
            "personal_id": "001060012345",
            "sex": "M",
            "full_name": "Trần Văn Sáu",
            "date_of_birth": "1960-03-01",
            "date_of_expiry": None,
        }
    )
    validate_citizen(old.model_dump(), today=dt.date(2026, 12, 3), stage=Stage.ISSUANCE)
    # DG13 says "Không thời hạn", the MRZ carries fillers (docs/card.md): they agree.
    assert old.dg13().date_of_expiry == NO_EXPIRY_TEXT and old.td1().expiry == NO_EXPIRY
    check_issuance_data(old.td1(), old.dg13(), today=dt.date(2026, 12, 3))
    # An MRZ with a date where DG13 has none, or fillers where DG13 has a date, is refused.
    dated = replace(old.td1(), expiry="301231")
    with pytest.raises(CitizenDataInvalid) as info:
        check_issuance_data(dated, old.dg13(), today=dt.date(2026, 12, 3))
    assert info.value.rules == {("DG1.expiry", Rule.MRZ_MISMATCH)}
    c = _citizen()
    with pytest.raises(CitizenDataInvalid) as info:
        check_issuance_data(replace(c.td1(), expiry=NO_EXPIRY), c.dg13())
    assert info.value.rules == {("DG1.expiry", Rule.MRZ_MISMATCH)}
    # "Không thời hạn" on a card that must expire is refused as the wrong milestone.
    with pytest.raises(CitizenDataInvalid) as info:
        check_issuance_data(
            replace(c.td1(), expiry=NO_EXPIRY), replace(c.dg13(), date_of_expiry=NO_EXPIRY_TEXT)
        )
    assert info.value.rules == {("date_of_expiry", Rule.EXPIRY_MILESTONE)}
