"""Every rule of appliance/citizen/validation.py with good and bad values (docs/citizen-data.md).

The fixed ``TODAY`` keeps the tests independent of the calendar; each bad case asserts the
exact set of (field, rule) pairs, so a rule that fires too eagerly fails as well as a missing one.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from typing import Any

import pytest

from appliance.citizen import (
    CitizenDataInvalid,
    Rule,
    Stage,
    card_expiry,
    check_citizen,
    validate_citizen,
    validate_many,
)
from appliance.citizen.provinces import PROVINCES
from appliance.citizen.validation import accepted_expiries, age_on, anniversary
from appliance.errors import ApplianceError

TODAY = dt.date(2026, 12, 3)

# A woman born 1990 (4th digit 1, 5th-6th "90"), registered in Hà Nội (001), card issued at 36:
# valid until her 40th birthday.
GOOD: dict[str, Any] = {
    "citizen_ref": "CIT-0001",
    "personal_id": "001190012345",
    "full_name": "Nguyễn Thị Mai",
    "date_of_birth": "1990-02-15",
    "sex": "F",
    "nationality": "Việt Nam",
    "date_of_issue": "2026-11-22",
    "date_of_expiry": "2030-02-15",
    "father": "Nguyễn Văn Bình",
    "mother": "Trần Thị Hoa",
    "old_id_number": "013456789",
}


def rec(**changes: Any) -> dict[str, Any]:
    out = {**GOOD, **changes}
    return {k: v for k, v in out.items() if v is not _ABSENT}


_ABSENT: Any = object()


def refused(data: dict[str, Any], stage: Stage = Stage.ISSUANCE) -> set[tuple[str, Rule]]:
    with pytest.raises(CitizenDataInvalid) as info:
        validate_citizen(data, today=TODAY, stage=stage)
    return info.value.rules


def test_the_good_record_passes_and_comes_back_normalised() -> None:
    r = validate_citizen(GOOD, today=TODAY)
    assert r.personal_id == "001190012345"
    assert r.date_of_birth == dt.date(1990, 2, 15)
    assert r.date_of_issue == dt.date(2026, 11, 22)
    assert r.date_of_expiry == dt.date(2030, 2, 15)
    assert r.sex == "F" and r.citizen_ref == "CIT-0001" and r.old_id_number == "013456789"
    assert r.as_dict()["full_name"] == "Nguyễn Thị Mai"
    assert check_citizen(GOOD, today=TODAY) == []


# --- the issue's examples -------------------------------------------------------------------


def test_number_contradicting_sex_and_birth_year() -> None:
    # The repository's own former example: 001099012345 is a man born 1999, not a woman of 1990.
    assert refused(rec(personal_id="001099012345")) == {
        ("personal_id", Rule.ID_CENTURY_SEX),
        ("personal_id", Rule.ID_BIRTH_YEAR),
    }


def test_province_999() -> None:
    assert refused(rec(personal_id="999190012345")) == {("personal_id", Rule.ID_PROVINCE)}


def test_birth_date_in_2099() -> None:
    # The number agrees with a woman born 2099, so only the date itself is refused.
    assert refused(rec(date_of_birth="2099-01-01", personal_id="001399012345")) == {
        ("date_of_birth", Rule.BIRTH_FUTURE)
    }


def test_a_six_year_old() -> None:
    six = rec(date_of_birth="2020-05-05", personal_id="001320012345", date_of_expiry=_ABSENT)
    assert refused(six) == {("date_of_birth", Rule.AGE_MINIMUM)}
    with pytest.raises(CitizenDataInvalid) as info:
        validate_citizen(six, today=TODAY)
    assert "aged 6" in info.value.message


def test_expiry_before_issue() -> None:
    assert refused(rec(date_of_expiry="2026-11-21")) == {
        ("date_of_expiry", Rule.EXPIRY_BEFORE_ISSUE)
    }
    assert refused(rec(date_of_expiry="2026-11-22")) == {
        ("date_of_expiry", Rule.EXPIRY_BEFORE_ISSUE)
    }


def test_every_problem_is_reported_at_once() -> None:
    bad = rec(
        personal_id="999099012345",
        sex="X",
        date_of_birth="2098-01-01",
        date_of_expiry="2020-01-01",
        full_name="Mai",
        old_id_number="12",
        colour="blue",
    )
    rules = refused(bad)
    assert rules == {
        ("colour", Rule.UNKNOWN_FIELD),
        ("personal_id", Rule.ID_PROVINCE),
        ("personal_id", Rule.ID_BIRTH_YEAR),
        ("sex", Rule.SEX),
        ("date_of_birth", Rule.BIRTH_FUTURE),
        ("old_id_number", Rule.OLD_ID_FORMAT),
        ("full_name", Rule.NAME_WORDS),
        ("date_of_expiry", Rule.EXPIRY_BEFORE_ISSUE),
    }


def test_the_error_is_in_the_tree_names_field_and_rule_and_hides_the_number() -> None:
    with pytest.raises(CitizenDataInvalid) as info:
        validate_citizen(rec(personal_id="999190012345", sex="X"), today=TODAY, where="CIT-0001")
    err = info.value
    assert isinstance(err, ApplianceError) and err.code == "citizen_invalid"
    assert err.message.startswith("CIT-0001: ")
    assert "999190012345" not in err.message
    assert {"field": "sex", "rule": "sex", "message": "must be M or F, got 'X'"} in err.details[
        "problems"
    ]
    assert err.to_dict()["code"] == "citizen_invalid"


# --- the 12-digit number --------------------------------------------------------------------


@pytest.mark.parametrize("pid", ["00119001234", "0011900123456", "00119001234X", " 001190012345"])
def test_number_must_be_12_digits(pid: str) -> None:
    assert refused(rec(personal_id=pid)) == {("personal_id", Rule.ID_FORMAT)}


def test_number_of_another_type_is_refused() -> None:
    assert refused(rec(personal_id=1190012345)) == {("personal_id", Rule.TYPE)}


def test_province_list_is_the_official_one() -> None:
    assert len(PROVINCES) == 63
    assert all(len(c) == 3 and c.isdigit() for c in PROVINCES)
    assert PROVINCES["001"] == "Hà Nội" and PROVINCES["096"] == "Cà Mau"
    assert PROVINCES["079"] == "Hồ Chí Minh"


@pytest.mark.parametrize("code", ["001", "031", "079", "096"])
def test_listed_provinces_pass(code: str) -> None:
    validate_citizen(rec(personal_id=code + "190012345"), today=TODAY)


@pytest.mark.parametrize("code", ["000", "003", "005", "097", "100", "999"])
def test_unlisted_provinces_are_refused(code: str) -> None:
    assert refused(rec(personal_id=code + "190012345")) == {("personal_id", Rule.ID_PROVINCE)}


@pytest.mark.parametrize(
    ("digit", "sex", "birth", "ok"),
    [
        ("0", "M", "1990-02-15", True),
        ("1", "F", "1990-02-15", True),
        ("1", "M", "1990-02-15", False),
        ("0", "F", "1990-02-15", False),
        ("2", "M", "2005-02-15", True),
        ("3", "F", "2005-02-15", True),
        ("2", "F", "2005-02-15", False),
        ("1", "F", "2005-02-15", False),  # right sex, wrong century
        ("3", "F", "1905-02-15", False),
    ],
)
def test_century_and_sex_digit(digit: str, sex: str, birth: str, ok: bool) -> None:
    yy = birth[2:4]
    issued = dt.date(2026, 11, 22)
    born = dt.date.fromisoformat(birth)
    expiry = card_expiry(born, issued)
    data = rec(
        personal_id=f"001{digit}{yy}012345",
        sex=sex,
        date_of_birth=birth,
        date_of_expiry=_ABSENT if expiry is None else expiry.isoformat(),
    )
    if ok:
        validate_citizen(data, today=TODAY)
    else:
        assert refused(data) == {("personal_id", Rule.ID_CENTURY_SEX)}


def test_birth_year_digits() -> None:
    validate_citizen(rec(), today=TODAY)
    assert refused(rec(personal_id="001191012345")) == {("personal_id", Rule.ID_BIRTH_YEAR)}
    assert refused(rec(personal_id="001109012345")) == {("personal_id", Rule.ID_BIRTH_YEAR)}


# --- the old number, sex, required fields, types ---------------------------------------------


@pytest.mark.parametrize("old", ["013456789", None, ""])
def test_old_cmnd_number_good(old: str | None) -> None:
    r = validate_citizen(rec(old_id_number=old), today=TODAY)
    assert r.old_id_number == (old or None)


@pytest.mark.parametrize("old", ["12345678", "0134567890", "01345678X", 13456789])
def test_old_cmnd_number_bad(old: object) -> None:
    assert refused(rec(old_id_number=old)) == {("old_id_number", Rule.OLD_ID_FORMAT)}


@pytest.mark.parametrize("sex", ["X", "m", "Nữ", 1])
def test_sex_must_be_m_or_f(sex: object) -> None:
    assert refused(rec(sex=sex)) == {("sex", Rule.SEX)}


@pytest.mark.parametrize(
    "field", ["personal_id", "full_name", "date_of_birth", "sex", "date_of_issue"]
)
def test_required_fields(field: str) -> None:
    for missing in (_ABSENT, None, ""):
        rules = refused(rec(**{field: missing}))
        assert (field, Rule.REQUIRED) in rules
        assert {f for f, _r in rules} <= {field, "date_of_expiry"}


def test_nationality_defaults_and_cannot_be_blank() -> None:
    assert validate_citizen(rec(nationality=_ABSENT), today=TODAY).nationality == "Việt Nam"
    assert refused(rec(nationality="  ")) == {("nationality", Rule.REQUIRED)}


def test_unknown_fields_are_named() -> None:
    assert refused(rec(colour="blue")) == {("colour", Rule.UNKNOWN_FIELD)}


# --- dates -----------------------------------------------------------------------------------


@pytest.mark.parametrize("birth", ["1990-02-15", "15/02/1990", "15021990", dt.date(1990, 2, 15)])
def test_date_forms_accepted(birth: object) -> None:
    assert validate_citizen(rec(date_of_birth=birth), today=TODAY).date_of_birth == dt.date(
        1990, 2, 15
    )


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("1990-02-30", Rule.DATE_FORMAT),
        ("30/02/1990", Rule.DATE_FORMAT),
        ("1990/02/15", Rule.DATE_FORMAT),
        ("19900215", Rule.DATE_FORMAT),
        ("15/021990", Rule.DATE_FORMAT),
        ("1502/1990", Rule.DATE_FORMAT),
        ("soon", Rule.DATE_FORMAT),
        (19900215, Rule.TYPE),
        (dt.datetime(1990, 2, 15, 8, 0), Rule.TYPE),
    ],
)
def test_bad_dates(value: object, rule: Rule) -> None:
    assert refused(rec(date_of_birth=value)) == {("date_of_birth", rule)}


def test_birth_before_1900_and_in_the_future() -> None:
    validate_citizen(
        rec(date_of_birth="1900-01-01", personal_id="001000012345", sex="M", date_of_expiry=None),
        today=TODAY,
    )
    assert refused(rec(date_of_birth="1899-12-31", personal_id="001199012345")) == {
        ("date_of_birth", Rule.BIRTH_TOO_EARLY)
    }
    # Tomorrow is in the future; the number agrees with a woman born 2026.
    tomorrow = rec(date_of_birth="2026-12-04", personal_id="001326012345", date_of_issue=None)
    assert refused(tomorrow, Stage.DIRECTORY) == {("date_of_birth", Rule.BIRTH_FUTURE)}
    born_today = rec(date_of_birth="2026-12-03", personal_id="001326012345")
    born_today.update(date_of_issue=None, date_of_expiry=None)
    validate_citizen(born_today, today=TODAY, stage=Stage.DIRECTORY)


def test_issue_date_not_in_the_future() -> None:
    validate_citizen(rec(date_of_issue="2026-12-03"), today=TODAY)
    assert refused(rec(date_of_issue="2026-12-04")) == {("date_of_issue", Rule.ISSUE_FUTURE)}


# --- age -------------------------------------------------------------------------------------


def test_fourteen_on_the_issue_date_exactly() -> None:
    born = "2012-11-22"  # 14 on 2026-11-22; card valid until 25 (2037-11-22)
    ok = rec(date_of_birth=born, personal_id="001312012345", date_of_expiry="2037-11-22")
    validate_citizen(ok, today=TODAY)
    day_before = {**ok, "date_of_issue": "2026-11-21"}
    assert refused(day_before) == {("date_of_birth", Rule.AGE_MINIMUM)}


def test_age_at_the_stages() -> None:
    six = {
        **rec(date_of_birth="2020-05-05", personal_id="001320012345"),
        "date_of_issue": None,
        "date_of_expiry": None,
    }
    # The population directory holds every citizen; enrolling or issuing needs 14 years.
    validate_citizen(six, today=TODAY, stage=Stage.DIRECTORY)
    assert refused(six, Stage.ENROLLMENT) == {("date_of_birth", Rule.AGE_MINIMUM)}
    assert refused(six, Stage.ISSUANCE) == {("date_of_issue", Rule.REQUIRED)}


# --- expiry by the age milestones -------------------------------------------------------------


@pytest.mark.parametrize(
    ("birth", "issued", "expiry"),
    [
        (dt.date(2010, 6, 1), dt.date(2026, 6, 1), dt.date(2035, 6, 1)),  # 16 -> 25
        (dt.date(2003, 6, 2), dt.date(2026, 6, 1), dt.date(2028, 6, 2)),  # a day before 23 -> 25
        (dt.date(2003, 6, 1), dt.date(2026, 6, 1), dt.date(2043, 6, 1)),  # 23: within 2 years -> 40
        (dt.date(1990, 2, 15), dt.date(2026, 11, 22), dt.date(2030, 2, 15)),  # 36 -> 40
        (dt.date(1988, 6, 1), dt.date(2026, 6, 1), dt.date(2048, 6, 1)),  # 38 -> 60
        (dt.date(1970, 6, 1), dt.date(2026, 6, 1), dt.date(2030, 6, 1)),  # 56 -> 60
        (dt.date(1968, 6, 2), dt.date(2026, 6, 1), dt.date(2028, 6, 2)),  # a day before 58 -> 60
        (dt.date(1968, 6, 1), dt.date(2026, 6, 1), None),  # 58: within 2 years of 60 -> none
        (dt.date(1950, 6, 1), dt.date(2026, 6, 1), None),  # over 60 -> none
    ],
)
def test_card_expiry_milestones(birth: dt.date, issued: dt.date, expiry: dt.date | None) -> None:
    assert card_expiry(birth, issued) == expiry


def test_wrong_milestone_is_refused_with_the_expected_one() -> None:
    # The repository's former example card (2035) was not a milestone of a 1990 birth.
    with pytest.raises(CitizenDataInvalid) as info:
        validate_citizen(rec(date_of_expiry="2035-02-15"), today=TODAY)
    assert info.value.rules == {("date_of_expiry", Rule.EXPIRY_MILESTONE)}
    assert "2030-02-15 (age 40)" in info.value.message
    assert refused(rec(date_of_expiry=None)) == {("date_of_expiry", Rule.EXPIRY_MILESTONE)}


def test_over_sixty_has_no_expiry() -> None:
    old = rec(
        personal_id="001060012345",
        sex="M",
        full_name="Trần Văn Sáu",
        date_of_birth="1960-03-01",
        date_of_expiry=None,
    )
    r = validate_citizen(old, today=TODAY)
    assert r.date_of_expiry is None
    no_field = {k: v for k, v in old.items() if k != "date_of_expiry"}
    assert validate_citizen(no_field, today=TODAY).date_of_expiry is None
    with pytest.raises(CitizenDataInvalid) as info:
        validate_citizen({**old, "date_of_expiry": "2030-03-01"}, today=TODAY)
    assert info.value.rules == {("date_of_expiry", Rule.EXPIRY_MILESTONE)}
    assert "no expiry" in info.value.message


def test_directory_entry_without_issue_date_checks_the_expiry_is_a_milestone() -> None:
    entry = rec(date_of_issue=None)
    validate_citizen(entry, today=TODAY, stage=Stage.DIRECTORY)
    assert refused({**entry, "date_of_expiry": "2035-02-15"}, Stage.DIRECTORY) == {
        ("date_of_expiry", Rule.EXPIRY_MILESTONE)
    }


# --- leap days -------------------------------------------------------------------------------


def test_leap_day_birth_anniversaries_and_age() -> None:
    born = dt.date(2004, 2, 29)
    assert anniversary(born, 25) == dt.date(2029, 2, 28)  # common year: last day of February
    assert anniversary(born, 40) == dt.date(2044, 2, 29)  # leap year
    assert age_on(born, dt.date(2018, 2, 27)) == 13
    assert age_on(born, dt.date(2018, 2, 28)) == 14
    assert age_on(born, dt.date(2020, 2, 28)) == 15  # a leap year: 16 only on the 29th
    assert age_on(born, dt.date(2020, 2, 29)) == 16
    assert card_expiry(born, dt.date(2026, 11, 22)) == dt.date(2029, 2, 28)
    assert accepted_expiries(born, dt.date(2026, 11, 22)) == (
        dt.date(2029, 2, 28),
        dt.date(2029, 3, 1),
    )


@pytest.mark.parametrize(
    ("expiry", "ok"),
    [("2029-02-28", True), ("2029-03-01", True), ("2029-02-27", False), ("2029-03-02", False)],
)
def test_leap_day_birth_expiry(expiry: str, ok: bool) -> None:
    data = rec(date_of_birth="2004-02-29", personal_id="001304012345", date_of_expiry=expiry)
    if ok:
        validate_citizen(data, today=TODAY)
    else:
        assert refused(data) == {("date_of_expiry", Rule.EXPIRY_MILESTONE)}


def test_leap_day_birth_age_minimum() -> None:
    data = rec(date_of_birth="2012-02-29", personal_id="001312012345", date_of_expiry=_ABSENT)
    assert refused({**data, "date_of_issue": "2026-02-27"}) == {("date_of_birth", Rule.AGE_MINIMUM)}
    validate_citizen(
        {**data, "date_of_issue": "2026-02-28", "date_of_expiry": "2037-02-28"}, today=TODAY
    )


def test_leap_day_dates_parse_only_in_leap_years() -> None:
    validate_citizen(rec(date_of_issue="2024-02-29", date_of_expiry="2030-02-15"), today=TODAY)
    assert refused(rec(date_of_issue="2026-02-29")) == {("date_of_issue", Rule.DATE_FORMAT)}


# --- names -----------------------------------------------------------------------------------


def test_nfd_names_are_normalised_to_nfc() -> None:
    nfd = unicodedata.normalize("NFD", "Nguyễn Thị Mai")
    assert nfd != "Nguyễn Thị Mai"
    r = validate_citizen(
        rec(full_name=nfd, mother=unicodedata.normalize("NFD", "Trần Thị Hoa")), today=TODAY
    )
    assert r.full_name == "Nguyễn Thị Mai"
    assert unicodedata.is_normalized("NFC", r.full_name)
    assert r.mother == "Trần Thị Hoa"


def test_spaces_are_collapsed() -> None:
    r = validate_citizen(
        rec(full_name="  Nguyễn \t Thị   Mai ", permanent_residence="12  Lê Lợi,\u00a0Hà Nội"),
        today=TODAY,
    )
    assert r.full_name == "Nguyễn Thị Mai"
    assert r.permanent_residence == "12 Lê Lợi, Hà Nội"


@pytest.mark.parametrize(
    "name", ["Nguyễn Thị Mai", "H'Hen Niê", "Y-Moan Ênuôl", "Đặng Thị Ngọc Ánh", "Lò Văn Giàng"]
)
def test_allowed_names(name: str) -> None:
    assert validate_citizen(rec(full_name=name), today=TODAY).full_name == name


@pytest.mark.parametrize(
    "name", ["Nguyễn Thị M4i", "Nguyễn <Mai>", "Nguyễn Thị Mai 🙂", "Nguyễn Thị_Mai", "Иван Петров"]
)
def test_refused_name_characters(name: str) -> None:
    assert refused(rec(full_name=name)) == {("full_name", Rule.NAME_CHARACTERS)}


def test_control_characters_names_and_texts() -> None:
    assert refused(rec(full_name="Nguyễn\x00 Mai")) == {("full_name", Rule.NAME_CHARACTERS)}
    assert refused(rec(place_of_origin="Hà\x1b Nội")) == {("place_of_origin", Rule.TEXT_CHARACTERS)}
    assert refused(rec(father="Nguyễn\x7f Bình")) == {("father", Rule.NAME_CHARACTERS)}


def test_name_needs_two_words_and_a_bounded_length() -> None:
    assert refused(rec(full_name="Mai")) == {("full_name", Rule.NAME_WORDS)}
    assert refused(rec(full_name="Nguyễn " + "A" * 120)) == {("full_name", Rule.TOO_LONG)}
    assert refused(rec(permanent_residence="x" * 251)) == {("permanent_residence", Rule.TOO_LONG)}
    assert refused(rec(full_name=["Nguyễn", "Mai"])) == {("full_name", Rule.TYPE)}


def test_every_allowed_name_letter_has_an_mrz_form() -> None:
    from appliance.citizen.validation import NAME_LETTERS
    from appliance.lds.mrz import transliterate

    for ch in NAME_LETTERS:
        out = transliterate(ch)
        assert len(out) >= 1 and out.isalpha() and out.isascii(), ch


# --- batches ---------------------------------------------------------------------------------


def test_validate_many_splits_good_and_bad() -> None:
    good, bad = validate_many(
        [("a", GOOD), ("b", rec(personal_id="999190012345")), ("c", rec(sex="X"))], today=TODAY
    )
    assert list(good) == ["a"]
    assert {k: {(p.field, p.rule) for p in v} for k, v in bad.items()} == {
        "b": {("personal_id", Rule.ID_PROVINCE)},
        "c": {("sex", Rule.SEX)},
    }


def test_today_is_the_date_in_vietnam() -> None:
    from appliance.citizen.validation import today_in_vietnam

    # UTC+7 all year (no daylight saving time); read around the call in case midnight passes.
    before = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=7)).date()
    got = today_in_vietnam()
    after = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=7)).date()
    assert got in {before, after}
