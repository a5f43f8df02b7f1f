"""Properties over generated citizens: every consistent record passes, and each single
inconsistency is refused by exactly its rule."""

from __future__ import annotations

import datetime as dt
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.citizen import Rule, card_expiry, validate_citizen
from appliance.citizen.provinces import PROVINCES
from appliance.citizen.validation import CitizenDataInvalid, anniversary

TODAY = dt.date(2026, 12, 3)
_NAMES = ["Nguyễn", "Trần", "Lê", "Đặng", "Thị", "Văn", "Ngọc", "Ánh", "Hương", "Dũng", "Yến"]


@st.composite
def citizens(draw: st.DrawFn) -> dict[str, object]:
    sex = draw(st.sampled_from("MF"))
    birth = draw(st.dates(dt.date(1930, 1, 1), dt.date(2012, 12, 3)))
    # Issued on a day the citizen was at least 14, from 2016 (Circular 07/2016) to today.
    issued = draw(st.dates(max(anniversary(birth, 14), dt.date(2016, 1, 1)), TODAY))
    words = draw(st.lists(st.sampled_from(_NAMES), min_size=2, max_size=4))
    form = draw(st.sampled_from(["NFC", "NFD"]))
    digit = (0 if birth.year < 2000 else 2) + (sex == "F")
    province = draw(st.sampled_from(sorted(PROVINCES)))
    serial = draw(st.integers(0, 999_999))
    expiry = card_expiry(birth, issued)
    return {
        "personal_id": f"{province}{digit}{birth.year % 100:02d}{serial:06d}",
        "full_name": unicodedata.normalize(form, "  ".join(words)),
        "date_of_birth": birth.isoformat(),
        "sex": sex,
        "date_of_issue": issued.isoformat(),
        "date_of_expiry": None if expiry is None else expiry.isoformat(),
    }


@settings(max_examples=300, derandomize=True, deadline=None)
@given(citizens())
def test_consistent_citizens_pass_normalised(data: dict[str, object]) -> None:
    r = validate_citizen(data, today=TODAY)
    assert unicodedata.is_normalized("NFC", r.full_name) and "  " not in r.full_name


@settings(max_examples=200, derandomize=True, deadline=None)
@given(citizens())
def test_the_other_sex_contradicts_the_number(data: dict[str, object]) -> None:
    flipped = {**data, "sex": "F" if data["sex"] == "M" else "M"}
    try:
        validate_citizen(flipped, today=TODAY)
    except CitizenDataInvalid as exc:
        assert exc.rules == {("personal_id", Rule.ID_CENTURY_SEX)}
    else:
        raise AssertionError("a number of the other sex was accepted")


@settings(max_examples=200, derandomize=True, deadline=None)
@given(citizens(), st.integers(1, 3000))
def test_any_other_expiry_is_refused(data: dict[str, object], shift: int) -> None:
    issued = dt.date.fromisoformat(str(data["date_of_issue"]))
    expiry = data["date_of_expiry"]
    other = (
        issued + dt.timedelta(days=shift)
        if expiry is None
        else dt.date.fromisoformat(str(expiry)) + dt.timedelta(days=shift)
    )
    birth = dt.date.fromisoformat(str(data["date_of_birth"]))
    if (birth.month, birth.day) == (2, 29) and (other.month, other.day) == (2, 28):
        return  # the other accepted reading of a 29 February milestone
    try:
        validate_citizen({**data, "date_of_expiry": other.isoformat()}, today=TODAY)
    except CitizenDataInvalid as exc:
        assert exc.rules == {("date_of_expiry", Rule.EXPIRY_MILESTONE)}
    else:
        raise AssertionError(f"expiry {other} accepted instead of {expiry}")
