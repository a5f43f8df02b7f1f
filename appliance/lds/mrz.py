"""TD1 machine-readable zone (ICAO 9303 Part 5, section 4.2).

Three lines of 30 characters. Vietnam's 12-digit personal numbers do not fit the 9-character
document number field: per ICAO 9303 Part 5 §4.2.2 note j, the first 9 characters go in
positions 6-14, a filler ``<`` in position 15, and the remaining characters followed by the
check digit *of the full document number* start the optional data, then a ``<``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from .tlv import malformed

LINE = 30
_WEIGHTS = (7, 3, 1)
_MRZ_CHARS = re.compile(r"^[A-Z0-9<]*$")
_DATE = re.compile(r"^\d{6}$")


def char_value(c: str) -> int:
    """ICAO 9303 Part 3 §4.9: 0-9 as is, A-Z = 10..35, ``<`` = 0."""
    if "0" <= c <= "9":
        return ord(c) - 48
    if "A" <= c <= "Z":
        return ord(c) - 55
    if c == "<":
        return 0
    raise ValueError(f"character {c!r} is not allowed in an MRZ")


def check_digit(field: str) -> str:
    """Check digit of ``field``: weights 7,3,1 repeating, sum mod 10 (Part 3 §4.9)."""
    return str(sum(char_value(c) * _WEIGHTS[i % 3] for i, c in enumerate(field)) % 10)


_SPECIAL = {"Đ": "D", "đ": "D", "Ð": "D", "Ø": "O", "ø": "O", "Æ": "AE", "æ": "AE", "ß": "SS"}


def transliterate(name: str) -> str:
    """A Unicode name as MRZ characters: diacritics removed, ``Đ`` -> ``D`` (spec: Vietnamese
    names), upper case, spaces/hyphens/apostrophes -> ``<`` (Part 3 §6 recommended practice)."""
    out: list[str] = []
    for original in name:
        ch = _SPECIAL.get(original, original)
        for base in unicodedata.normalize("NFD", ch):
            if unicodedata.combining(base):
                continue
            up = base.upper()
            if "A" <= up <= "Z" or "0" <= up <= "9":
                out.append(up)
            elif up in " -'.,<":
                out.append("<")
            else:
                raise ValueError(f"character {base!r} cannot be transliterated into the MRZ")
    return re.sub("<+", "<", "".join(out)).strip("<")


def name_field(primary: str, secondary: str, width: int = LINE) -> str:
    """``PRIMARY<<SECONDARY<NAMES`` padded with ``<`` to ``width``, truncated by
    :func:`truncate_name` when it does not fit (ICAO 9303-3, names in the MRZ)."""
    p = transliterate(primary)
    s = transliterate(secondary)
    if not p:
        raise ValueError("primary identifier (family name) is empty after transliteration")
    text = f"{p}<<{s}" if s else p
    if len(text) <= width:
        return text.ljust(width, "<")
    return truncate_name(text, width)


def truncate_name(text: str, width: int) -> str:
    """Cut a name field that is longer than ``width`` so that it still shows the truncation.

    ICAO 9303-3's truncation rule: a truncated name field ends in an alphabetic character, never
    in a filler; a reader takes a field ending in ``<`` for a complete name. A plain cut that
    lands on a separator (``...<THAO<`` with ``NGOC`` cut away) therefore keeps the initial of
    the first name that does not fit in the last position and makes room for it by shortening
    the names before it from the right, each down to one letter at least (the standard leaves
    which letters to drop to the issuer): ``NGUYEN<<HOANG<THI<PHUONG<THAO<NGOC...`` becomes
    ``NGUYEN<<HOANG<THI<PHUONG<THA<N``. Separators (``<`` and ``<<``) are kept, so the primary
    and secondary identifiers stay apart.
    """
    if len(text) <= width:
        return text.ljust(width, "<")
    cut = text[:width]
    if cut[-1] != "<":
        return cut  # ends inside a name: already alphabetic
    start = width
    while text[start] == "<":  # text ends in a name (transliterate strips fillers)
        start += 1
    sep_start = start
    while text[sep_start - 1] == "<":
        sep_start -= 1
    sep = text[sep_start:start]
    parts = re.split("(<+)", text[:sep_start])  # names at even indexes, separators at odd
    need = len(text[:sep_start]) + len(sep) + 1 - width
    for _ in range(need):
        longest = next((i for i in range(len(parts) - 1, -1, -2) if len(parts[i]) > 1), None)
        if longest is None:
            raise ValueError("name field too short to show a truncated name")
        parts[longest] = parts[longest][:-1]
    return "".join(parts) + sep + text[start]


# ICAO 9303 (8th edition, Parts 3-6, date of expiry): a document without an expiry date fills
# the field with fillers; its check digit is computed as usual ('<' = 0), i.e. "0". A CCCD
# issued from age 60 has no expiry ("Không thời hạn"; Law on Citizen Identification 2014,
# art. 21).
NO_EXPIRY = "<<<<<<"


def _check_date(value: str, what: str, *, may_be_absent: bool = False) -> None:
    if may_be_absent and value == NO_EXPIRY:
        return
    if not _DATE.match(value):
        raise ValueError(f"{what} must be YYMMDD digits, got {value!r}")
    mm, dd = int(value[2:4]), int(value[4:6])
    if not (1 <= mm <= 12 and 1 <= dd <= 31):
        raise ValueError(f"{what} {value!r} is not a calendar date")


def _field(value: str, width: int, what: str) -> str:
    if not _MRZ_CHARS.match(value):
        raise ValueError(f"{what} {value!r} has characters outside A-Z 0-9 <")
    if len(value) > width:
        raise ValueError(f"{what} {value!r} is longer than {width} characters")
    return value.ljust(width, "<")


@dataclass(frozen=True)
class Td1:
    """The content of a TD1 MRZ; :meth:`lines` renders it, :func:`parse_td1` reads it back."""

    document_number: str
    birth: str  # YYMMDD
    sex: str  # M, F or <
    expiry: str  # YYMMDD, or NO_EXPIRY ("<<<<<<") for a card without expiry
    primary: str  # transliterated name field parts
    secondary: str
    document_code: str = "ID"
    issuing_state: str = "VNM"
    nationality: str = "VNM"
    optional1: str = ""  # optional data after a long document number's overflow
    optional2: str = ""

    def lines(self) -> tuple[str, str, str]:
        doc = self.document_number
        if not doc or not _MRZ_CHARS.match(doc) or len(doc) > 22:
            raise ValueError(f"document number {doc!r} must be 1-22 characters A-Z 0-9 <")
        _check_date(self.birth, "birth date")
        _check_date(self.expiry, "expiry date", may_be_absent=True)
        if self.sex not in ("M", "F", "<"):
            raise ValueError(f"sex must be M, F or <, got {self.sex!r}")
        if len(doc) <= 9:
            l1_doc = _field(doc, 9, "document number") + check_digit(_field(doc, 9, "doc"))
            opt1 = self.optional1
        else:
            # Part 5 §4.2.2 note j: overflow + check digit of the full number, then a filler.
            l1_doc = doc[:9] + "<"
            opt1 = doc[9:] + check_digit(doc) + "<" + self.optional1
        line1 = (
            _field(self.document_code, 2, "document code")
            + _field(self.issuing_state, 3, "issuing state")
            + l1_doc
            + _field(opt1, 15, "optional data (line 1)")
        )
        line2_wo = (
            self.birth
            + check_digit(self.birth)
            + self.sex
            + self.expiry
            + check_digit(self.expiry)
            + _field(self.nationality, 3, "nationality")
            + _field(self.optional2, 11, "optional data (line 2)")
        )
        composite = check_digit(line1[5:30] + line2_wo[0:7] + line2_wo[8:15] + line2_wo[18:29])
        line2 = line2_wo + composite
        line3 = name_field(self.primary, self.secondary)
        return line1, line2, line3

    def text(self) -> str:
        """The 90 characters as DG1 stores them (no line breaks)."""
        return "".join(self.lines())


def parse_td1(mrz: str) -> Td1:
    """Parse 90 MRZ characters (line breaks allowed) and verify every check digit."""
    text = mrz.replace("\n", "").replace("\r", "")
    if len(text) != 3 * LINE or not _MRZ_CHARS.match(text):
        raise malformed("a TD1 MRZ is 90 characters A-Z 0-9 <", length=len(text))
    l1, l2, l3 = text[:30], text[30:60], text[60:]
    if l1[14] == "<" and l1[15] != "<":
        # Long document number: overflow runs to the first '<' in the optional data, its last
        # character being the check digit of the full number.
        end = l1.index("<", 15) if "<" in l1[15:] else 30
        overflow = l1[15 : end - 1]
        doc = l1[5:14] + overflow
        cd = l1[end - 1]
        opt1 = l1[end + 1 :].rstrip("<")
    else:
        doc = l1[5:14].rstrip("<")
        cd = l1[14]
        opt1 = l1[15:30].rstrip("<")
        if check_digit(l1[5:14]) != cd:
            raise malformed("document number check digit is wrong")
    if len(doc) > 9 and check_digit(doc) != cd:
        raise malformed("document number check digit is wrong")
    if check_digit(l2[0:6]) != l2[6]:
        raise malformed("birth date check digit is wrong")
    if check_digit(l2[8:14]) != l2[14]:
        raise malformed("expiry date check digit is wrong")
    if check_digit(l1[5:30] + l2[0:7] + l2[8:15] + l2[18:29]) != l2[29]:
        raise malformed("composite check digit is wrong")
    names = l3.rstrip("<")
    primary, _, secondary = names.partition("<<")
    return Td1(
        document_number=doc,
        birth=l2[0:6],
        sex=l2[7],
        expiry=l2[8:14],
        primary=primary.replace("<", " "),
        secondary=secondary.replace("<", " ").strip(),
        document_code=l1[0:2].rstrip("<"),
        issuing_state=l1[2:5],
        nationality=l2[15:18],
        optional1=opt1,
        optional2=l2[18:29].rstrip("<"),
    )


def bac_document_number(document_number: str) -> str:
    """The document number as it enters the BAC key seed: padded with ``<`` to 9 characters
    when shorter, as the MRZ prints it (ICAO 9303-11 §9.7.1 and Appendix D's ``L898902C<``).

    A reader derives the seed from the MRZ it reads (line 1 positions 6-15 of a TD1), so a
    short number arrives with its fillers; the chip must be given the same characters. A number
    longer than 9 characters is used whole (see :func:`bac_mrz_information`).
    """
    doc = document_number.upper()
    if not doc or not _MRZ_CHARS.match(doc):
        raise ValueError("document number must be A-Z 0-9 characters")
    return doc.ljust(9, "<")


def bac_mrz_information(document_number: str, birth: str, expiry: str) -> str:
    """MRZ information for the BAC key seed (Part 11 §9.7.1; spec "BAC key derivation").

    Document number (padded to 9 with ``<``, :func:`bac_document_number`) + its check digit +
    birth date + check + expiry date + check. For a number longer than 9 characters we use the
    FULL number and the check digit over the full number (as the MRZ's optional data carries
    them), which is what JMRTD's BACKey does. A card without expiry contributes ``<<<<<<0``.
    """
    doc = bac_document_number(document_number)
    _check_date(birth, "birth date")
    _check_date(expiry, "expiry date", may_be_absent=True)
    return doc + check_digit(doc) + birth + check_digit(birth) + expiry + check_digit(expiry)
