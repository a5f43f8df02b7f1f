"""LDS elementary files: EF.COM, DG1, DG2 (ICAO 9303 Part 10, section 4) and the Vietnamese
DG13 (Circular 16/2024/TT-BCA, in the layout the public CCCD readers parse)."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from .mrz import Td1, parse_td1
from .tlv import find, malformed, parse_all, parse_single, read_tlv, tlv

# spec table "Application and files": data group number -> (FID, outer tag)
DG_FILES: dict[int, tuple[int, int]] = {
    1: (0x0101, 0x61),
    2: (0x0102, 0x75),
    3: (0x0103, 0x63),
    13: (0x010D, 0x6D),
    14: (0x010E, 0x6E),
    15: (0x010F, 0x6F),
}
FID_COM = 0x011E
FID_SOD = 0x011D
TAG_COM = 0x60
TAG_SOD = 0x77
EMRTD_AID = bytes.fromhex("A0000002471001")

# File names used in issuance packages and reports.
FILE_FIDS: dict[str, int] = {
    "EF.COM": FID_COM,
    **{f"DG{n}": fid for n, (fid, _tag) in DG_FILES.items()},
    "EF.SOD": FID_SOD,
}
FILE_TAGS: dict[str, int] = {
    "EF.COM": TAG_COM,
    **{f"DG{n}": tag for n, (_fid, tag) in DG_FILES.items()},
    "EF.SOD": TAG_SOD,
}
_TAG_TO_DG = {tag: n for n, (_fid, tag) in DG_FILES.items()}


# --- EF.COM ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EfCom:
    lds_version: str  # 4 digits, e.g. "0107"
    unicode_version: str  # 6 digits, e.g. "040000"
    data_groups: tuple[int, ...]


def encode_ef_com(
    data_groups: list[int], lds_version: str = "0107", unicode_version: str = "040000"
) -> bytes:
    """``60 { 5F01 LDS version, 5F36 Unicode version, 5C tag list }`` (Part 10 §4.6.1)."""
    if not re.fullmatch(r"\d{4}", lds_version) or not re.fullmatch(r"\d{6}", unicode_version):
        raise ValueError("LDS version is 4 digits and Unicode version 6 digits")
    tags = bytearray()
    for n in data_groups:
        if n not in DG_FILES:
            raise ValueError(f"data group {n} is not supported")
        tags.append(DG_FILES[n][1])
    body = (
        tlv(0x5F01, lds_version.encode("ascii"))
        + tlv(0x5F36, unicode_version.encode("ascii"))
        + tlv(0x5C, bytes(tags))
    )
    return tlv(TAG_COM, body)


def decode_ef_com(data: bytes) -> EfCom:
    children = parse_all(parse_single(data, TAG_COM))
    try:
        lds = find(children, 0x5F01).decode("ascii")
        uni = find(children, 0x5F36).decode("ascii")
    except UnicodeDecodeError:
        raise malformed("EF.COM version is not ASCII") from None
    groups: list[int] = []
    for t in find(children, 0x5C):
        if t not in _TAG_TO_DG:
            raise malformed(f"EF.COM lists unknown tag {t:02X}")
        groups.append(_TAG_TO_DG[t])
    return EfCom(lds, uni, tuple(groups))


# --- DG1 ------------------------------------------------------------------------------------


def encode_dg1(mrz: Td1 | str) -> bytes:
    """``61 { 5F1F <90 MRZ characters> }``."""
    text = mrz.text() if isinstance(mrz, Td1) else mrz
    parse_td1(text)  # refuse to write an MRZ whose check digits are wrong
    return tlv(0x61, tlv(0x5F1F, text.encode("ascii")))


def decode_dg1(data: bytes) -> Td1:
    value = find(parse_all(parse_single(data, 0x61)), 0x5F1F)
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise malformed("DG1 MRZ is not ASCII") from None
    return parse_td1(text)


# --- DG2 ------------------------------------------------------------------------------------

FACE_RECORD_MAGIC = b"FAC\x00"


def encode_dg2(face_records: list[bytes]) -> bytes:
    """DG2 with one biometric information template per ISO/IEC 19794-5 record (Part 10 §4.7.2):
    ``75 { 7F61 { 02 count, 7F60 { A1 { 81 type, 87 owner, 88 format }, 5F2E record } } }``.
    """
    if not face_records:
        raise ValueError("DG2 needs at least one face record")
    if len(face_records) > 255:
        raise ValueError("too many face records")
    templates = b""
    for rec in face_records:
        if not rec.startswith(FACE_RECORD_MAGIC):
            raise ValueError("face record is not an ISO/IEC 19794-5 record (no 'FAC\\0' header)")
        header = tlv(0x81, b"\x00\x02") + tlv(0x87, b"\x01\x01") + tlv(0x88, b"\x00\x08")
        templates += tlv(0x7F60, tlv(0xA1, header) + tlv(0x5F2E, rec))
    group = tlv(0x02, bytes([len(face_records)])) + templates
    return tlv(0x75, tlv(0x7F61, group))


def decode_dg2(data: bytes) -> list[bytes]:
    """The ISO/IEC 19794-5 records of a DG2 (the bytes only; callers hash, never log them)."""
    group = parse_all(find(parse_all(parse_single(data, 0x75)), 0x7F61))
    count_b = find(group, 0x02)
    if len(count_b) != 1:
        raise malformed("DG2 instance count must be one byte")
    records: list[bytes] = []
    for tag, value in group:
        if tag != 0x7F60:
            continue
        children = parse_all(value)
        rec = b""
        for t, v in children:
            if t in (0x5F2E, 0x7F2E):  # plain or enciphered biometric data block
                rec = v
        if not rec:
            raise malformed("DG2 template without a biometric data block")
        records.append(rec)
    if len(records) != count_b[0]:
        raise malformed(f"DG2 announces {count_b[0]} records but holds {len(records)}")
    return records


# --- DG13 (Vietnam) -------------------------------------------------------------------------
#
# Written as the public Vietnamese readers parse it (their published parsing code, read 2026-12):
# every field 1-16 present and in order (a reader that walks the numbers in
# order swallows the fields after a missing one), an absent value as an empty string of the
# field's type, dates as dd/MM/yyyy, ASCII-only fields (numbers, dates of birth and issue) as
# PrintableString, the other text as UTF8String, the parents as one SEQUENCE each, no spouse as
# the bare ``30 03 02 01 0E``, and the old 9-digit ID number in BOTH 15 and 16 (readers disagree
# on which one holds it: the Swift reader reads 15, the JavaScript and TypeScript ones read 16).
# Every field stays below 128 bytes so its lengths are short-form (the Python reader reads
# nothing else).

DG13_OID_DER = bytes.fromhex("0606 28D316010008".replace(" ", ""))  # 1.0.10646.1.0.8

TAG_UTF8 = 0x0C
TAG_PRINTABLE = 0x13
# A card issued from age 60 has no expiry (Law on Citizen Identification 2014, art. 21).
NO_EXPIRY_TEXT = "Không thời hạn"

_DG13_TEXT_FIELDS: dict[int, str] = {
    1: "personal_id",
    2: "full_name",
    3: "date_of_birth",
    4: "sex",
    5: "nationality",
    6: "ethnicity",
    7: "religion",
    8: "place_of_origin",
    9: "permanent_residence",
    10: "identifying_marks",
    11: "date_of_issue",
    12: "date_of_expiry",
}
# String type per field (spec: the Swift reader's prefixes 13 0C, 13 0A, 0C 0A, 13 09, 13 10).
_DG13_STRING_TAG: dict[int, int] = {n: TAG_UTF8 for n in _DG13_TEXT_FIELDS}
_DG13_STRING_TAG.update({1: TAG_PRINTABLE, 3: TAG_PRINTABLE, 11: TAG_PRINTABLE})
_DG13_STRING_TAG.update({15: TAG_PRINTABLE, 16: TAG_PRINTABLE})
_DG13_DATES = (3, 11, 12)
_DG13_MAX_FIELD = 127  # short-form length of the field's SEQUENCE
_HEX16 = re.compile(r"^[0-9A-Fa-f]{16}$")
_DATE_SLASH = re.compile(r"^(\d{2})/(\d{2})/(\d{4})$")
_DATE_PLAIN = re.compile(r"^(\d{2})(\d{2})(\d{4})$")
_PRINTABLE = re.compile(r"^[A-Za-z0-9 '()+,\-./:=?]*$")  # X.680 §41.4 PrintableString


@dataclass(frozen=True)
class Dg13:
    """Personal details of the Vietnamese DG13 (fields 1-16). ``None`` = absent."""

    personal_id: str
    full_name: str
    date_of_birth: str | None = None  # dd/MM/yyyy (ddMMyyyy accepted when writing)
    sex: str | None = None  # "Nam" / "Nữ"
    nationality: str | None = None
    ethnicity: str | None = None
    religion: str | None = None
    place_of_origin: str | None = None
    permanent_residence: str | None = None
    identifying_marks: str | None = None
    date_of_issue: str | None = None
    date_of_expiry: str | None = None  # dd/MM/yyyy or NO_EXPIRY_TEXT
    father: str | None = None
    mother: str | None = None
    spouse: str | None = None
    old_id_number: str | None = None
    chip_id: str | None = None  # read only: field 15/16 of a card holding 16 hex characters
    unknown_fields: dict[int, bytes] = field(default_factory=dict)


def dg13_date(value: str, what: str) -> str:
    """``dd/MM/yyyy`` (what the readers parse) from ``dd/MM/yyyy`` or ``ddMMyyyy``; a clear
    ValueError naming the field otherwise."""
    m = _DATE_SLASH.match(value) or _DATE_PLAIN.match(value)
    if m is None:
        raise ValueError(f"DG13 {what} must be dd/MM/yyyy, got {value!r}")
    dd, mm, yyyy = m.groups()
    try:
        dt.date(int(yyyy), int(mm), int(dd))
    except ValueError:
        raise ValueError(f"DG13 {what} {value!r} is not a calendar date") from None
    return f"{dd}/{mm}/{yyyy}"


def _string(tag: int, value: str, n: int, what: str) -> bytes:
    if tag == TAG_PRINTABLE and not _PRINTABLE.match(value):
        raise ValueError(f"DG13 {what} (field {n}) must be PrintableString characters")
    return tlv(tag, value.encode("utf-8"))


def _dg13_field(n: int, value: bytes, what: str) -> bytes:
    out = tlv(0x30, tlv(0x02, bytes([n])) + value)
    if len(out) - 2 > _DG13_MAX_FIELD:
        # A long-form length drops the field in the Python reader (spec): refuse, naming it.
        raise ValueError(
            f"DG13 {what} (field {n}) takes {len(value) - 2} bytes of UTF-8; at most "
            f"{_DG13_MAX_FIELD - 5} fit a field every public reader parses"
        )
    return out


def encode_dg13(d: Dg13) -> bytes:
    """Write DG13 in the public readers' layout (see the comment above ``DG13_OID_DER``)."""
    if not re.fullmatch(r"\d{12}", d.personal_id):
        raise ValueError("DG13 personal ID number must be 12 digits")
    if not d.full_name.strip():
        raise ValueError("DG13 full name is empty")
    if d.chip_id is not None:
        raise ValueError("DG13 field 16 carries the old ID number on cards the kiosk writes")
    if d.old_id_number is not None and not re.fullmatch(r"\d{9}", d.old_id_number):
        raise ValueError("DG13 old ID number (fields 15 and 16) must be 9 digits")
    fields: list[bytes] = []
    for n, attr in _DG13_TEXT_FIELDS.items():
        v = getattr(d, attr)
        v = "" if v is None else v
        if n in _DG13_DATES and v and not (n == 12 and v == NO_EXPIRY_TEXT):
            v = dg13_date(v, attr)
        fields.append(_dg13_field(n, _string(_DG13_STRING_TAG[n], v, n, attr), attr))
    parents = tlv(0x30, _string(TAG_UTF8, d.father or "", 13, "father")) + tlv(
        0x30, _string(TAG_UTF8, d.mother or "", 13, "mother")
    )
    fields.append(_dg13_field(13, parents, "father and mother"))
    spouse = b"" if not d.spouse else tlv(0x30, _string(TAG_UTF8, d.spouse, 14, "spouse"))
    fields.append(_dg13_field(14, spouse, "spouse"))
    old = d.old_id_number or ""
    for n in (15, 16):
        fields.append(_dg13_field(n, _string(TAG_PRINTABLE, old, n, "old ID number"), "old ID"))
    body = tlv(0x02, b"\x01") + DG13_OID_DER + tlv(0x31, b"".join(fields))
    return tlv(0x6D, tlv(0x30, body))


def _text(value: bytes, n: int) -> str:
    tag, raw, end = read_tlv(value, 0)
    if tag not in (0x0C, 0x13, 0x16) or end != len(value):  # UTF8/Printable/IA5 String
        raise malformed(f"DG13 field {n} is not a string", field=n)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise malformed(f"DG13 field {n} is not valid UTF-8", field=n) from None


def _strings(value: bytes, n: int) -> list[str]:
    """The strings of field 13/14 in any of the layouts seen: strings directly, one SEQUENCE
    holding them all, or one SEQUENCE per string."""
    out: list[str] = []
    for t, v in parse_all(value):
        if t == 0x30:
            out.extend(_strings(v, n))
        else:
            out.append(_text(tlv(t, v), n))
    return out


def decode_dg13(data: bytes) -> Dg13:  # noqa: C901, PLR0912  one branch per DG13 field number and string type (Vietnamese DG13 layout)
    """Read DG13 by field number, never by position; accepts UTF8String, PrintableString and
    IA5String, both layouts of field 13, and both readings of 15/16. An empty value reads as
    absent (``None``)."""
    seq = parse_all(parse_single(data, 0x6D))
    if len(seq) != 1 or seq[0][0] != 0x30:
        raise malformed("DG13 must hold one SEQUENCE")
    body = parse_all(seq[0][1])
    if len(body) < 3 or body[0][0] != 0x02 or body[1][0] != 0x06 or body[2][0] != 0x31:
        raise malformed("DG13 SEQUENCE must be INTEGER, OID, SET")
    values: dict[str, str | None] = {}
    unknown: dict[int, bytes] = {}
    ids_15_16: list[str] = []
    for tag, value in parse_all(body[2][1]):
        if tag != 0x30:
            raise malformed("DG13 field is not a SEQUENCE")
        parts = parse_all(value)
        if not parts or parts[0][0] != 0x02 or not 1 <= len(parts[0][1]) <= 2:
            raise malformed("DG13 field must be SEQUENCE { INTEGER, value }")
        n = int.from_bytes(parts[0][1], "big")
        raw_value = value[len(parts[0][1]) + 2 :]
        if n in _DG13_TEXT_FIELDS or n in (15, 16):
            if len(parts) != 2:
                raise malformed(f"DG13 field {n} must hold one string", field=n)
            text = _text(raw_value, n) or None
            if n in (15, 16):
                if text is not None:
                    ids_15_16.append(text)
            elif text is not None:
                values[_DG13_TEXT_FIELDS[n]] = text
        elif n in (13, 14):
            names = [s or None for s in _strings(raw_value, n)]
            if n == 13:
                values["father"] = names[0] if names else None
                values["mother"] = names[1] if len(names) > 1 else None
            else:
                values["spouse"] = names[0] if names else None
        else:
            unknown[n] = raw_value
    # Fields 15/16: readers disagree (spec). A 16-hex-character value is a chip id; anything
    # else (a 9- or 12-digit number) is the old ID number, whichever field holds it.
    for v in ids_15_16:
        if _HEX16.match(v):
            values.setdefault("chip_id", v)
        else:
            values.setdefault("old_id_number", v)
    if not values.get("personal_id") or not values.get("full_name"):
        raise malformed("DG13 lacks field 1 (personal ID) or 2 (full name)")
    return Dg13(unknown_fields=unknown, **values)  # type: ignore[arg-type]


def face_record_from_jpeg(jpeg: bytes, width: int, height: int) -> bytes:
    """Wrap one JPEG portrait in an ISO/IEC 19794-5:2005 record (§5.4-5.7): general header,
    facial information block (no feature points, unspecified attributes), image information
    (full frontal, JPEG) and the image. For the issuer side and tests; the kiosk never logs it."""
    if not jpeg.startswith(b"\xff\xd8"):
        raise ValueError("face image is not a JPEG")
    if not (0 < width <= 0xFFFF and 0 < height <= 0xFFFF):
        raise ValueError("image size out of range")
    facial_info = (
        (20 + 12 + len(jpeg)).to_bytes(4, "big")  # facial record data length
        + b"\x00\x00"  # number of feature points
        + b"\x00\x00\x00"  # gender, eye colour, hair colour: unspecified
        + b"\x00\x00\x00"  # feature mask
        + b"\x00\x00"  # expression
        + b"\x00\x00\x00\x00\x00\x00"  # pose angle and its uncertainty
    )
    image_info = (
        b"\x01"  # face image type: full frontal
        + b"\x00"  # image data type: JPEG
        + width.to_bytes(2, "big")
        + height.to_bytes(2, "big")
        + b"\x01"  # colour space: 24-bit RGB
        + b"\x02"  # source type: digital still camera
        + b"\x00\x00"  # device type
        + b"\x00\x00"  # quality: unspecified
    )
    body = facial_info + image_info + jpeg
    total = 14 + len(body)
    return FACE_RECORD_MAGIC + b"010\x00" + total.to_bytes(4, "big") + b"\x00\x01" + body
