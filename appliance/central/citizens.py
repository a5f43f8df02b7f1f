"""Citizens' details for issuance: a JSON file keyed by ``citizen_ref``, and a synthetic
generator for demos and tests (clearly fictitious people; never real personal data).

JSON file (``--citizens FILE``)::

    {"CIT-0001": {"personal_id": "001190012345", "full_name": "Nguyễn Thị Mai",
                  "date_of_birth": "1990-02-15", "sex": "F",
                  "date_of_issue": "2026-11-22", "date_of_expiry": "2030-02-15",
                  "place_of_origin": "...", "permanent_residence": "...", ...}, ...}

The 12-digit personal number follows the CCCD layout (Decree 137/2015 art. 7): 3 digits of
the province of birth registration, 1 digit of century and sex (0/1 men/women born 1900-1999,
2/3 born 2000-2099), 2 digits of the birth year, 6 digits of sequence. DG1 uses the whole
number as the TD1 document number (more than 9 characters: ICAO 9303 Part 5 §4.2.2 note j,
overflow into the optional data; spec icao9303-td1.md "Line layout"); DG13 follows
cccd-dg13.md. Every entry passes :func:`appliance.citizen.validate_citizen` when loaded
(docs/citizen-data.md), and again, with the card's dates, before issuance.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..citizen.validation import CitizenDataInvalid, Stage, card_expiry, validate_citizen
from ..errors import ApplianceError, ConfigError
from ..lds.files import NO_EXPIRY_TEXT, Dg13
from ..lds.mrz import NO_EXPIRY, Td1
from ..protocol.codes import ErrorCode

PERSONAL_ID_RE = re.compile(r"^\d{12}$")


class CitizenUnknown(ApplianceError):
    code = ErrorCode.CITIZEN_UNKNOWN


class Citizen(BaseModel):
    """What the issuer knows about a citizen (from the population database lookup)."""

    model_config = ConfigDict(extra="forbid")

    citizen_ref: str = Field("", description="The lookup reference used at enrollment")
    personal_id: str = Field(..., pattern=PERSONAL_ID_RE.pattern, description="12 digits")
    full_name: str = Field(..., min_length=1, max_length=120, description="With diacritics")
    date_of_birth: dt.date
    sex: Literal["M", "F"]
    nationality: str = "Việt Nam"
    ethnicity: str | None = "Kinh"
    religion: str | None = "Không"
    place_of_origin: str | None = None
    permanent_residence: str | None = None
    identifying_marks: str | None = None
    date_of_issue: dt.date | None = None
    date_of_expiry: dt.date | None = None
    father: str | None = None
    mother: str | None = None
    spouse: str | None = None
    old_id_number: str | None = None

    @field_validator("full_name")
    @classmethod
    def _two_words(cls, v: str) -> str:
        if len(v.split()) < 2:
            raise ValueError("full name needs a family name and a given name")
        return v

    @property
    def family_name(self) -> str:
        return self.full_name.split()[0]

    @property
    def given_names(self) -> str:
        return " ".join(self.full_name.split()[1:])

    @property
    def without_expiry(self) -> bool:
        """A card issued from 58 on (2 years before the last milestone, 60) has no expiry."""
        return (
            self.date_of_expiry is None
            and self.date_of_issue is not None
            and card_expiry(self.date_of_birth, self.date_of_issue) is None
        )

    def td1(self) -> Td1:
        """The TD1 MRZ of DG1 (document number = the 12-digit personal number); a card
        without expiry fills the expiry with fillers (mrz.NO_EXPIRY, ICAO 9303)."""
        if self.date_of_expiry is not None:
            expiry = self.date_of_expiry.strftime("%y%m%d")
        elif self.without_expiry:
            expiry = NO_EXPIRY
        else:
            raise ApplianceError(
                f"citizen {self.citizen_ref!r} has no date_of_expiry and is not of an age for "
                "a card without expiry (date_of_issue from age 58): the MRZ needs one",
                code=ErrorCode.CITIZEN_INCOMPLETE,
            )
        return Td1(
            document_number=self.personal_id,
            birth=self.date_of_birth.strftime("%y%m%d"),
            sex=self.sex,
            expiry=expiry,
            primary=self.family_name,
            secondary=self.given_names,
        )

    def dg13(self) -> Dg13:
        """DG13 (cccd-dg13.md): dates as dd/MM/yyyy text, sex as Nam / Nữ, "Không thời hạn"
        as the expiry of a card without one."""

        def d(v: dt.date | None) -> str | None:
            return None if v is None else v.strftime("%d/%m/%Y")

        return Dg13(
            personal_id=self.personal_id,
            full_name=self.full_name,
            date_of_birth=d(self.date_of_birth),
            sex="Nam" if self.sex == "M" else "Nữ",
            nationality=self.nationality,
            ethnicity=self.ethnicity,
            religion=self.religion,
            place_of_origin=self.place_of_origin,
            permanent_residence=self.permanent_residence,
            identifying_marks=self.identifying_marks,
            date_of_issue=d(self.date_of_issue),
            date_of_expiry=NO_EXPIRY_TEXT if self.without_expiry else d(self.date_of_expiry),
            father=self.father,
            mother=self.mother,
            spouse=self.spouse,
            old_id_number=self.old_id_number,
        )

    def masked_id(self) -> str:
        return "*" * 8 + self.personal_id[-4:]


# --- synthetic citizens ---------------------------------------------------------------------------

_PROVINCES = {
    "001": "Hà Nội",
    "031": "Hải Phòng",
    "048": "Đà Nẵng",
    "079": "Thành phố Hồ Chí Minh",
    "092": "Cần Thơ",
    "038": "Thanh Hóa",
    "040": "Nghệ An",
}
_FAMILY = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi"]
_MIDDLE = {"M": ["Văn", "Đức", "Minh", "Quang", "Hữu"], "F": ["Thị", "Ngọc", "Thu", "Minh"]}
_GIVEN = {
    "M": ["Anh", "Bình", "Dũng", "Hải", "Hùng", "Khoa", "Nam", "Quân", "Tuấn", "Việt"],
    "F": ["Anh", "Châu", "Hà", "Hạnh", "Lan", "Linh", "Mai", "Phương", "Thảo", "Trang", "Yến"],
}
_STREETS = ["Trần Hưng Đạo", "Lê Lợi", "Nguyễn Huệ", "Hai Bà Trưng", "Lý Thường Kiệt"]


# card_expiry (imported above from appliance.citizen.validation, and re-exported here) is the
# one rule of the card's validity: the synthetic citizens below, Citizen.without_expiry and the
# validation all use it (renewal at 25, 40, 60; within two years before a milestone, the next
# one; from 58 none; a 29 February milestone on 28 February in a common year).


def synthetic_citizen(
    citizen_ref: str, *, today: dt.date | None = None, age: int | None = None
) -> Citizen:
    """A fictitious, self-consistent citizen derived from ``citizen_ref`` (same ref, same
    person): aged 14 to 55 so the card has an expiry date, unless ``age`` says otherwise
    (from 58 the card has none)."""
    seed = int.from_bytes(hashlib.sha256(citizen_ref.encode("utf-8")).digest()[:8], "big")
    rng = random.Random(seed)  # noqa: S311 - fictitious demo data, not security
    issued = today or dt.date.today()
    sex: Literal["M", "F"] = rng.choice(["M", "F"])
    # The age reached this year: 15..55 years means 14..55 on the issue date, whatever the
    # birthday (14 this year could still be 13 today, which the validation refuses).
    drawn = rng.randint(15, 55)
    age = drawn if age is None else age
    birth = dt.date(issued.year - age, rng.randint(1, 12), rng.randint(1, 28))
    province = rng.choice(sorted(_PROVINCES))
    century = 0 if birth.year < 2000 else 2
    digit = century + (0 if sex == "M" else 1)
    personal_id = f"{province}{digit}{birth.year % 100:02d}{rng.randint(0, 999999):06d}"
    name = f"{rng.choice(_FAMILY)} {rng.choice(_MIDDLE[sex])} {rng.choice(_GIVEN[sex])}"
    place = _PROVINCES[province]
    return Citizen(
        citizen_ref=citizen_ref,
        personal_id=personal_id,
        full_name=name,
        date_of_birth=birth,
        sex=sex,
        place_of_origin=place,
        permanent_residence=f"{rng.randint(1, 300)} {rng.choice(_STREETS)}, {place}",
        date_of_issue=issued,
        date_of_expiry=card_expiry(birth, issued),
        father=f"{name.split(maxsplit=1)[0]} Văn {rng.choice(_GIVEN['M'])}",
        mother=f"{rng.choice(_FAMILY)} Thị {rng.choice(_GIVEN['F'])}",
    )


class CitizenDirectory:
    """Citizens from a JSON file, falling back to synthetic ones when allowed."""

    def __init__(self, path: Path | None = None, *, synthetic: bool = False) -> None:
        self.path = path
        self.synthetic = synthetic
        self._entries: dict[str, Citizen] = {}
        if path is not None:
            self._entries = load_citizens(path)

    def get(self, citizen_ref: str) -> Citizen:
        found = self._entries.get(citizen_ref)
        if found is not None:
            return found
        if self.synthetic:
            return synthetic_citizen(citizen_ref)
        where = f"in {self.path}" if self.path else "(no --citizens file given)"
        raise CitizenUnknown(
            f"citizen {citizen_ref!r} not found {where}; use --synthetic for a demo citizen",
            details={"citizen_ref": citizen_ref},
        )


def load_citizens(path: Path) -> dict[str, Citizen]:
    """Read the JSON file; every bad entry is reported by its key and field."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"cannot read citizens file {path}", [(str(path), str(exc))]) from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path} must be a JSON object keyed by citizen_ref", [(str(path), "not an object")]
        )
    out: dict[str, Citizen] = {}
    problems: list[tuple[str, str]] = []
    for ref, entry in raw.items():
        if not isinstance(entry, dict):
            problems.append((ref, "entry is not an object"))
            continue
        try:
            record = validate_citizen({**entry, "citizen_ref": ref}, stage=Stage.DIRECTORY)
        except CitizenDataInvalid as exc:
            problems.extend((f"{ref}.{p.field}", f"{p.message} [{p.rule}]") for p in exc.problems)
            continue
        # The normalised values (NFC names, collapsed spaces) of the fields the entry gave.
        clean = {k: v for k, v in record.as_dict().items() if k in entry}
        try:
            out[ref] = Citizen.model_validate({**clean, "citizen_ref": ref})
        except ValidationError as exc:
            for err in exc.errors():
                problems.append((f"{ref}.{'.'.join(str(p) for p in err['loc'])}", err["msg"]))
    if problems:
        # Every problem in the message too: the CLIs print the message, not the details.
        listed = "".join(f"\n  {where}: {reason}" for where, reason in problems)
        raise ConfigError(f"{path}: {len(problems)} problem(s):{listed}", problems)
    return out
