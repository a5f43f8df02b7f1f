"""One validation of a citizen's record, for the kiosk, the centre and issuance.

Pure functions, no I/O: :func:`validate_citizen` takes a mapping (a JSON object, a pydantic
model's ``model_dump()``, DG13's fields as ``lds.issuance.check_issuance_data`` passes them)
and returns a normalised :class:`CitizenRecord`, or raises :class:`CitizenDataInvalid`
listing EVERY problem at once, each naming the field and the rule (:class:`Rule`).
docs/citizen-data.md lists every rule with its source.

Sources of the rules (cited at each rule below):
- Circular 07/2016/TT-BCA and its Annex 1, restated by Circular 59/2021/TT-BCA art. 4: the
  12-digit personal identification number ``PPP G YY NNNNNN``: province of birth
  registration, century and sex, last two digits of the birth year, random part (no check
  digit).
- Law on Citizen Identification 2014 art. 19 and 21 / Law on Identification 2023 art. 19
  and 21: who gets a card (14 and over in the 2021 roll-out the kiosk serves) and the renewal
  ages 25, 40 and 60; a card issued within two years before one of them stays valid until the
  next one; from 60 the card has no expiry.
- ICAO 9303 Part 3 §6 (names: what can be transliterated into the MRZ) for the characters a
  name may use; Unicode NFC because the chip's DG13 and the population database compare names
  as text (cccd-dg13 layout: UTF8String).

Speed matters (the centre validates batches of 100,000 records, bench/citizen_validation.py):
the hot path is plain Python on pre-built tables (regular expressions, a frozenset of
allowed name characters, the province mapping), no pydantic model per record.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, NamedTuple

from ..errors import ApplianceError
from ..protocol.codes import ErrorCode
from .provinces import PROVINCES


class Stage(StrEnum):
    """Where a record is checked; each stage adds rules to the one before it."""

    # A directory entry / lookup answer: structure, names, plausible dates; the card dates
    # only when present (the population database holds every citizen, of any age).
    DIRECTORY = "directory"
    # A citizen being enrolled: also at least 14 years old today (or on the issue date).
    ENROLLMENT = "enrollment"
    # A card about to be issued (the centre, the LDS): the issue date is required and the
    # expiry must be the one the age milestones give (none from 60).
    ISSUANCE = "issuance"


class Rule(StrEnum):
    """The enumerated rule codes of a refusal (stable: they travel in replies and reports)."""

    REQUIRED = "required"  # a required field is absent or empty
    UNKNOWN_FIELD = "unknown_field"  # a field this record does not have
    TYPE = "type"  # not a string / not a date where one is expected
    DATE_FORMAT = "date_format"  # a text date that is not a calendar date
    ID_FORMAT = "id_format"  # the personal number is not 12 digits
    ID_PROVINCE = "id_province"  # its first 3 digits are not an official province code
    ID_CENTURY_SEX = "id_century_sex"  # its 4th digit contradicts the sex or birth century
    ID_BIRTH_YEAR = "id_birth_year"  # its 5th-6th digits are not the birth year's last two
    OLD_ID_FORMAT = "old_id_format"  # the old CMND number is not 9 digits
    SEX = "sex"  # not M / F
    BIRTH_FUTURE = "birth_future"  # born after today
    BIRTH_TOO_EARLY = "birth_too_early"  # born before 1900
    ISSUE_FUTURE = "issue_future"  # issued after today
    AGE_MINIMUM = "age_minimum"  # younger than 14 on the issue date
    EXPIRY_BEFORE_ISSUE = "expiry_before_issue"  # expiry on or before the issue date
    EXPIRY_MILESTONE = "expiry_milestone"  # expiry is not the one the age milestones give
    NAME_CHARACTERS = "name_characters"  # a character a name may not carry
    NAME_WORDS = "name_words"  # a full name without a family name and a given name
    TEXT_CHARACTERS = "text_characters"  # a control character in a text field
    TOO_LONG = "too_long"  # longer than the field allows
    MRZ_MISMATCH = "mrz_mismatch"  # DG1's MRZ says something else than the record (DG13)
    NOT_NORMALISED = "not_normalised"  # DG13 text not in NFC / with runs of spaces


@dataclass(frozen=True, slots=True)
class Problem:
    """One refusal: which field, which rule, and a sentence a clerk can act on."""

    field: str
    rule: Rule
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message} [{self.rule}]"

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "rule": str(self.rule), "message": self.message}


class CitizenDataInvalid(ApplianceError):
    """A citizen record broke one or more rules; ``problems`` lists every one of them.

    Messages never carry the full personal number (logs and audit rows keep them).
    """

    code = ErrorCode.CITIZEN_INVALID

    def __init__(self, problems: list[Problem], *, where: str = "") -> None:
        self.problems = list(problems)
        prefix = f"{where}: " if where else ""
        summary = "; ".join(str(p) for p in self.problems)
        super().__init__(
            f"{prefix}citizen data refused ({len(self.problems)} problem(s)): {summary}",
            details={"problems": [p.to_dict() for p in self.problems]},
        )

    @property
    def rules(self) -> set[tuple[str, Rule]]:
        """``{(field, rule), ...}``: what tests and callers usually compare."""
        return {(p.field, p.rule) for p in self.problems}


class CitizenRecord(NamedTuple):
    """A citizen's details after validation: names and texts in NFC with collapsed spaces.

    A named tuple (immutable, and built at C speed: the centre makes 100,000 of them in a batch).
    """

    personal_id: str
    full_name: str
    date_of_birth: dt.date
    sex: str  # "M" / "F"
    nationality: str
    date_of_issue: dt.date | None
    date_of_expiry: dt.date | None  # None: no expiry (60 and over), or not issued yet
    ethnicity: str | None = None
    religion: str | None = None
    place_of_origin: str | None = None
    permanent_residence: str | None = None
    identifying_marks: str | None = None
    father: str | None = None
    mother: str | None = None
    spouse: str | None = None
    old_id_number: str | None = None
    citizen_ref: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Field name -> value (dates as :class:`datetime.date`), for a model to take."""
        return self._asdict()


# --- tables -----------------------------------------------------------------------------------

# Circular 07/2016/TT-BCA (Circular 59/2021/TT-BCA art. 4): the 4th digit codes century of
# birth and sex.
# (first year of the century, male digit); female = male + 1.
_CENTURY_DIGIT: Final = {1900: 0, 2000: 2, 2100: 4, 2200: 6, 2300: 8}

# Law on Citizen Identification 2014 art. 21(1) / Law on Identification 2023 art. 21(1).
MILESTONES: Final = (25, 40, 60)
# ... art. 21(2): a card issued within 2 years before a milestone runs to the next one.
_GRACE_YEARS: Final = 2
# Law on Citizen Identification 2014 art. 19(1): a card for every citizen from 14 years of age
# (the roll-out this kiosk serves; the 2023 law allows cards under 14 on request).
MINIMUM_AGE: Final = 14
EARLIEST_BIRTH: Final = dt.date(1900, 1, 1)

_DIGITS12 = re.compile(r"[0-9]{12}")
_DIGITS9 = re.compile(r"[0-9]{9}")
_ISO_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
# DG13 dates: dd/MM/yyyy (what public readers parse) or ddMMyyyy (the kiosk's first encoder).
_DMY_DATE = re.compile(r"([0-9]{2})(/?)([0-9]{2})\2([0-9]{4})")
# C0/C1 control characters, except tab, line feed and carriage return: white space, collapsed.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f-\x9f]")

NAME_MAX = 120  # the existing Citizen model's bound; DG13 field 2 has none of its own
TEXT_MAX = 250  # addresses: long enough for "số nhà, thôn, xã, huyện, tỉnh"


def _name_alphabet() -> frozenset[str]:
    """Letters a Vietnamese name can carry: A-Z/a-z with any diacritics (precomposed, NFC), Đ/đ.

    ICAO 9303 Part 3 §6: every such letter transliterates into the MRZ (diacritics dropped,
    Đ -> D, as appliance/lds/mrz.py does), so a name that passes here always has an MRZ form.
    """
    letters = set("ĐđÐ")
    for cp in (*range(0x41, 0x250), *range(0x1E00, 0x1F00)):
        ch = chr(cp)
        if unicodedata.normalize("NFC", ch) != ch:
            continue
        decomposed = unicodedata.normalize("NFD", ch)
        base, marks = decomposed[0], decomposed[1:]
        if ("A" <= base <= "Z" or "a" <= base <= "z") and all(
            unicodedata.combining(m) for m in marks
        ):
            letters.add(ch)
    return frozenset(letters)


NAME_LETTERS: Final = _name_alphabet()
# Separators inside a name: a space, a hyphen, an apostrophe (Ê Đê / Gia Rai names: "H'Hen").
NAME_SEPARATORS: Final = frozenset(" -'")
_NAME_CHARS: Final = NAME_LETTERS | NAME_SEPARATORS

# Name-like fields (people); the other free-text fields only refuse control characters.
_NAME_FIELDS: Final = ("full_name", "father", "mother", "spouse")
_TEXT_FIELDS: Final = (
    "nationality",
    "ethnicity",
    "religion",
    "place_of_origin",
    "permanent_residence",
    "identifying_marks",
)
_KNOWN: Final = frozenset(
    (
        "citizen_ref",
        "personal_id",
        "full_name",
        "date_of_birth",
        "sex",
        "nationality",
        "date_of_issue",
        "date_of_expiry",
        "old_id_number",
        *_NAME_FIELDS,
        *_TEXT_FIELDS,
    )
)
DEFAULT_NATIONALITY: Final = "Việt Nam"


# --- dates and milestones ---------------------------------------------------------------------


def anniversary(birth: dt.date, years: int) -> dt.date:
    """The day the holder born on ``birth`` reaches ``years`` of age.

    A 29 February birth reaches it on 28 February in a common year: a period counted in years
    ends on the last day of the month when its day does not exist (Civil Code 2015 art. 148,
    as docs/card.md records for the card's milestones). :func:`age_on` counts the same way.
    """
    try:
        return birth.replace(year=birth.year + years)
    except ValueError:  # 29 February, common year
        return dt.date(birth.year + years, 2, 28)


def age_on(birth: dt.date, day: dt.date) -> int:
    """Completed years of age on ``day`` (a 29 February birth completes one on 28 February of
    a common year, as :func:`anniversary`)."""
    years = day.year - birth.year
    return years if day >= anniversary(birth, years) else years - 1


def card_expiry(birth: dt.date, issued: dt.date) -> dt.date | None:
    """The expiry a card issued on ``issued`` must carry, or ``None`` for no expiry.

    Law on Identification 2023 art. 21 (Law on Citizen Identification 2014 art. 21): renewal at
    25, 40 and 60; a card issued within 2 years before one of these ages (on or after the
    birthday two years earlier) stays valid until the next one; from 60 (or issued from 58)
    no expiry.
    """
    for age in MILESTONES:
        if issued < anniversary(birth, age - _GRACE_YEARS):
            return anniversary(birth, age)
    return None


def accepted_expiries(birth: dt.date, issued: dt.date) -> tuple[dt.date | None, ...]:
    """Expiries accepted for a card issued on ``issued``: :func:`card_expiry`, and for a
    29 February birth whose milestone falls in a common year also 1 March (the day after
    28 February, when the years are complete: the law names no day, and another issuer or the
    population database may count that way), nothing else."""
    expected = card_expiry(birth, issued)
    if expected is not None and (birth.month, birth.day) == (2, 29) and expected.day == 28:
        return (expected, expected + dt.timedelta(days=1))
    return (expected,)


def today_in_vietnam() -> dt.date:
    """Today's date in Vietnam (UTC+7, no daylight saving time): what "in the future" means."""
    return dt.datetime.now(dt.UTC).astimezone(dt.timezone(dt.timedelta(hours=7))).date()


def _date(value: object, field: str, problems: list[Problem]) -> dt.date | None:
    """A date from a ``date``, ``YYYY-MM-DD``, or DG13's ``dd/MM/yyyy`` / ``ddMMyyyy`` text."""
    if value.__class__ is str and _ISO_DATE.fullmatch(value):
        # The common case (JSON): the C parser, once the shape is known to be YYYY-MM-DD
        # (fromisoformat alone would also take "20261203" or week dates).
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            problems.append(Problem(field, Rule.DATE_FORMAT, f"{value!r} is not a calendar date"))
            return None
    if isinstance(value, dt.datetime):
        problems.append(Problem(field, Rule.TYPE, "must be a date, not a date and time"))
        return None
    if isinstance(value, dt.date):
        return value
    if not isinstance(value, str):
        problems.append(Problem(field, Rule.TYPE, f"must be a date, got {type(value).__name__}"))
        return None
    m = _ISO_DATE.fullmatch(value)
    if m is not None:
        y, mo, d = int(m[1]), int(m[2]), int(m[3])
    else:
        m = _DMY_DATE.fullmatch(value)
        if m is None:
            problems.append(
                Problem(field, Rule.DATE_FORMAT, f"{value!r} is not YYYY-MM-DD or dd/MM/yyyy")
            )
            return None
        d, mo, y = int(m[1]), int(m[3]), int(m[4])
    try:
        return dt.date(y, mo, d)
    except ValueError:
        problems.append(Problem(field, Rule.DATE_FORMAT, f"{value!r} is not a calendar date"))
        return None


# --- text -------------------------------------------------------------------------------------


def normalise_text(value: str) -> str:
    """Unicode NFC, runs of white space collapsed to one space, trimmed."""
    if not value.isascii():
        value = unicodedata.normalize("NFC", value)
    return " ".join(value.split())


def _text(value: object, field: str, problems: list[Problem], name: bool, limit: int) -> str | None:
    """``value`` normalised (NFC, collapsed spaces), or ``None`` when absent or refused."""
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(Problem(field, Rule.TYPE, f"must be text, got {type(value).__name__}"))
        return None
    # isprintable() is a fast C pass; only a value that fails it is searched for a control
    # character (a no-break space also fails it, and is merely collapsed below).
    if not value.isprintable() and _CONTROL.search(value):
        rule = Rule.NAME_CHARACTERS if name else Rule.TEXT_CHARACTERS
        problems.append(Problem(field, rule, "contains a control character"))
        return None
    if not value.isascii():
        value = unicodedata.normalize("NFC", value)
    text = " ".join(value.split())
    if not text:
        return None
    if len(text) > limit:
        problems.append(Problem(field, Rule.TOO_LONG, f"longer than {limit} characters"))
    if name and not _NAME_CHARS.issuperset(text):
        bad = "".join(sorted({c for c in text if c not in _NAME_CHARS}))
        problems.append(
            Problem(
                field,
                Rule.NAME_CHARACTERS,
                f"{bad!r} not allowed: letters (with Vietnamese diacritics), space, - and ' only",
            )
        )
    return text


def _texts(
    get: Callable[[str], object],
    fields: tuple[str, ...],
    problems: list[Problem],
    name: bool,
    limit: int,
) -> dict[str, str | None]:
    """:func:`_text` of each field, with the common case (printable text within its limit)
    done inline: the centre runs this ten times per record, 100,000 records per batch."""
    out: dict[str, str | None] = {}
    for f in fields:
        v = get(f)
        if v is None:
            out[f] = None
            continue
        if v.__class__ is str and v.isprintable():
            t = " ".join((v if v.isascii() else unicodedata.normalize("NFC", v)).split())
            if t and len(t) <= limit and (not name or _NAME_CHARS.issuperset(t)):
                out[f] = t
                continue
        out[f] = _text(v, f, problems, name, limit)
    return out


# --- the record -------------------------------------------------------------------------------


def validate_citizen(
    data: Mapping[str, object],
    *,
    today: dt.date | None = None,
    stage: Stage = Stage.ISSUANCE,
    where: str = "",
) -> CitizenRecord:
    """Validate and normalise one citizen record; raise :class:`CitizenDataInvalid` with every
    problem found.

    ``stage`` (:class:`Stage`) says which rules apply: issuance, the strictest, by default.
    ``today`` defaults to the date in Vietnam. ``where`` prefixes the message
    (e.g. the citizen reference) without ever naming the personal number.
    """
    problems: list[Problem] = []
    record = _check(data, problems, today or today_in_vietnam(), stage)
    if problems or record is None:
        raise CitizenDataInvalid(problems, where=where)
    return record


def check_citizen(
    data: Mapping[str, object],
    *,
    today: dt.date | None = None,
    stage: Stage = Stage.ISSUANCE,
) -> list[Problem]:
    """The problems of ``data`` (an empty list when it passes); never raises."""
    problems: list[Problem] = []
    _check(data, problems, today or today_in_vietnam(), stage)
    return problems


def validate_many(
    records: Iterable[tuple[str, Mapping[str, object]]],
    *,
    today: dt.date | None = None,
    stage: Stage = Stage.ISSUANCE,
) -> tuple[dict[str, CitizenRecord], dict[str, list[Problem]]]:
    """A batch keyed by reference: (the valid records, the problems of the others)."""
    day = today or today_in_vietnam()
    good: dict[str, CitizenRecord] = {}
    bad: dict[str, list[Problem]] = {}
    for key, data in records:
        problems: list[Problem] = []
        record = _check(data, problems, day, stage)
        if problems or record is None:
            bad[key] = problems
        else:
            good[key] = record
    return good, bad


def _check(  # noqa: C901, PLR0912, PLR0915  one pass over the rules in docs/citizen-data.md's order, kept inline for speed (docs/performance.md, "Citizen data")
    data: Mapping[str, object], problems: list[Problem], today: dt.date, stage: Stage
) -> CitizenRecord | None:
    """One pass over the rules, in docs/citizen-data.md's order; appends to ``problems``."""
    if not _KNOWN.issuperset(data):
        for key in data:
            if key not in _KNOWN:
                problems.append(Problem(str(key), Rule.UNKNOWN_FIELD, "not a field of a citizen"))

    # Required fields.
    pid = data.get("personal_id")
    if pid is None or pid == "":
        problems.append(Problem("personal_id", Rule.REQUIRED, "the 12-digit number is required"))
        pid = None
    elif not isinstance(pid, str):
        problems.append(Problem("personal_id", Rule.TYPE, "must be text of 12 digits"))
        pid = None
    elif not _DIGITS12.fullmatch(pid):
        got = "a character other than 0-9" if len(pid) == 12 else f"{len(pid)} characters"
        problems.append(Problem("personal_id", Rule.ID_FORMAT, f"must be 12 digits, got {got}"))
        pid = None

    sex = data.get("sex")
    if sex is None or sex == "":
        problems.append(Problem("sex", Rule.REQUIRED, "sex is required (M or F)"))
        sex = None
    elif sex not in ("M", "F"):
        problems.append(Problem("sex", Rule.SEX, f"must be M or F, got {sex!r}"))
        sex = None

    birth_raw = data.get("date_of_birth")
    birth: dt.date | None = None
    if birth_raw is None or birth_raw == "":
        problems.append(Problem("date_of_birth", Rule.REQUIRED, "the birth date is required"))
    else:
        birth = _date(birth_raw, "date_of_birth", problems)
    if birth is not None:
        if birth > today:
            problems.append(
                Problem("date_of_birth", Rule.BIRTH_FUTURE, f"{birth} is after today ({today})")
            )
        elif birth < EARLIEST_BIRTH:
            problems.append(
                Problem("date_of_birth", Rule.BIRTH_TOO_EARLY, f"{birth} is before 1900-01-01")
            )

    # The 12-digit number against sex and birth year (Circular 59/2021/TT-BCA art. 4).
    if pid is not None:
        if pid[:3] not in PROVINCES:
            problems.append(
                Problem(
                    "personal_id",
                    Rule.ID_PROVINCE,
                    f"province code {pid[:3]} is not in the official list "
                    "(Circular 07/2016/TT-BCA)",
                )
            )
        if birth is not None and sex is not None:
            century = birth.year // 100 * 100
            male = _CENTURY_DIGIT.get(century)
            if male is not None:
                expected = male + (sex == "F")
                if int(pid[3]) != expected:
                    problems.append(
                        Problem(
                            "personal_id",
                            Rule.ID_CENTURY_SEX,
                            f"4th digit {pid[3]} contradicts sex {sex} born {birth.year} "
                            f"(expected {expected})",
                        )
                    )
        if birth is not None and pid[4:6] != f"{birth.year % 100:02d}":
            problems.append(
                Problem(
                    "personal_id",
                    Rule.ID_BIRTH_YEAR,
                    f"5th-6th digits {pid[4:6]} are not the birth year {birth.year}'s last two",
                )
            )

    old = data.get("old_id_number")
    if old is not None and old != "":
        if not isinstance(old, str) or not _DIGITS9.fullmatch(old):
            problems.append(
                Problem("old_id_number", Rule.OLD_ID_FORMAT, "the old CMND number is 9 digits")
            )
            old = None
    else:
        old = None

    # Names and texts.
    get = data.get
    full_name = _text(get("full_name"), "full_name", problems, True, NAME_MAX)
    if full_name is None:
        if not any(p.field == "full_name" for p in problems):
            problems.append(Problem("full_name", Rule.REQUIRED, "the full name is required"))
    elif " " not in full_name:
        problems.append(
            Problem("full_name", Rule.NAME_WORDS, "needs a family name and a given name")
        )
    names = _texts(get, _NAME_FIELDS[1:], problems, True, NAME_MAX)
    texts = _texts(get, _TEXT_FIELDS, problems, False, TEXT_MAX)
    if "nationality" not in data:
        texts["nationality"] = DEFAULT_NATIONALITY
    elif texts["nationality"] is None and not any(p.field == "nationality" for p in problems):
        problems.append(Problem("nationality", Rule.REQUIRED, "the nationality is required"))

    # Card dates (Law on Identification 2023 art. 19, 21).
    issue_raw, expiry_raw = data.get("date_of_issue"), data.get("date_of_expiry")
    issued = None if issue_raw in (None, "") else _date(issue_raw, "date_of_issue", problems)
    expiry = None if expiry_raw in (None, "") else _date(expiry_raw, "date_of_expiry", problems)
    if issue_raw in (None, "") and stage is Stage.ISSUANCE:
        problems.append(
            Problem("date_of_issue", Rule.REQUIRED, "the issue date is required to issue a card")
        )
    if issued is not None and issued > today:
        problems.append(
            Problem("date_of_issue", Rule.ISSUE_FUTURE, f"{issued} is after today ({today})")
        )
    dates_sound = birth is not None and not any(
        p.field in ("date_of_birth", "date_of_issue") for p in problems
    )
    card_day = issued if issued is not None else (today if stage is Stage.ENROLLMENT else None)
    if dates_sound and birth is not None and card_day is not None:
        age = age_on(birth, card_day)
        if age < MINIMUM_AGE:
            on = "on the issue date" if issued is not None else "today"
            problems.append(
                Problem(
                    "date_of_birth",
                    Rule.AGE_MINIMUM,
                    f"aged {max(age, 0)} {on} ({card_day}): a card needs {MINIMUM_AGE} years",
                )
            )
            dates_sound = False
    if issued is not None and expiry is not None and expiry <= issued:
        problems.append(
            Problem(
                "date_of_expiry",
                Rule.EXPIRY_BEFORE_ISSUE,
                f"{expiry} is not after the issue date {issued}",
            )
        )
    elif dates_sound and birth is not None and issued is not None:
        if "date_of_expiry" not in {p.field for p in problems}:
            accepted = accepted_expiries(birth, issued)
            if expiry not in accepted:
                problems.append(
                    Problem(
                        "date_of_expiry",
                        Rule.EXPIRY_MILESTONE,
                        _milestone_message(birth, expiry, accepted[0]),
                    )
                )
    elif dates_sound and birth is not None and expiry is not None:
        # No issue date (a directory entry): the expiry can still only be a milestone birthday.
        possible = {anniversary(birth, a) for a in MILESTONES}
        if (birth.month, birth.day) == (2, 29):
            possible |= {d + dt.timedelta(days=1) for d in possible if d.day == 28}
        if expiry not in possible:
            problems.append(
                Problem(
                    "date_of_expiry",
                    Rule.EXPIRY_MILESTONE,
                    f"{expiry} is not a milestone birthday (25, 40 or 60 years of age)",
                )
            )

    if problems:
        return None
    assert pid is not None and birth is not None and sex is not None and full_name is not None
    ref = data.get("citizen_ref")
    return CitizenRecord(
        personal_id=pid,
        full_name=full_name,
        date_of_birth=birth,
        sex=sex,
        nationality=texts["nationality"] or DEFAULT_NATIONALITY,
        date_of_issue=issued,
        date_of_expiry=expiry,
        ethnicity=texts["ethnicity"],
        religion=texts["religion"],
        place_of_origin=texts["place_of_origin"],
        permanent_residence=texts["permanent_residence"],
        identifying_marks=texts["identifying_marks"],
        father=names["father"],
        mother=names["mother"],
        spouse=names["spouse"],
        old_id_number=old,
        citizen_ref=ref if isinstance(ref, str) else "",
    )


def _milestone_message(birth: dt.date, expiry: dt.date | None, want: dt.date | None) -> str:
    got = "no expiry" if expiry is None else str(expiry)
    if want is None:
        return f"{got}, but a card issued from 58 years of age has no expiry"
    return f"{got} is not the milestone expiry {want} (age {age_on(birth, want)})"
