"""LDS elementary files: EF.COM, DG1, DG2 and the Vietnamese DG13 (spec: icao9303-td1.md
"Encodings", cccd-dg13.md "DG13 layout")."""

from __future__ import annotations

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

DG13_OID_DER = bytes.fromhex("0606 28D316010008".replace(" ", ""))  # 1.0.10646.1.0.8

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
_HEX16 = re.compile(r"^[0-9A-Fa-f]{16}$")


@dataclass(frozen=True)
class Dg13:
    """Personal details of the Vietnamese DG13 (cccd-dg13.md table). ``None`` = absent."""

    personal_id: str
    full_name: str
    date_of_birth: str | None = None  # ddMMyyyy text
    sex: str | None = None  # "Nam" / "Nữ"
    nationality: str | None = None
    ethnicity: str | None = None
    religion: str | None = None
    place_of_origin: str | None = None
    permanent_residence: str | None = None
    identifying_marks: str | None = None
    date_of_issue: str | None = None
    date_of_expiry: str | None = None
    father: str | None = None
    mother: str | None = None
    spouse: str | None = None
    old_id_number: str | None = None
    chip_id: str | None = None  # field 16 when it holds 16 hex characters
    unknown_fields: dict[int, bytes] = field(default_factory=dict)


def _utf8(s: str) -> bytes:
    return tlv(0x0C, s.encode("utf-8"))


def _dg13_field(n: int, value: bytes) -> bytes:
    return tlv(0x30, tlv(0x02, bytes([n])) + value)


def encode_dg13(d: Dg13) -> bytes:
    """Write DG13 in the public readers' layout; field 15 = old ID number (spec advice)."""
    if not re.fullmatch(r"\d{12}", d.personal_id):
        raise ValueError("DG13 personal ID number must be 12 digits")
    if not d.full_name.strip():
        raise ValueError("DG13 full name is empty")
    fields: list[bytes] = []
    for n, attr in _DG13_TEXT_FIELDS.items():
        v = getattr(d, attr)
        if v is not None:
            fields.append(_dg13_field(n, _utf8(v)))
    if d.father is not None or d.mother is not None:
        fields.append(_dg13_field(13, tlv(0x30, _utf8(d.father or "") + _utf8(d.mother or ""))))
    if d.spouse is not None:
        fields.append(_dg13_field(14, tlv(0x30, _utf8(d.spouse))))
    if d.old_id_number is not None:
        fields.append(_dg13_field(15, _utf8(d.old_id_number)))
    if d.chip_id is not None:
        if not _HEX16.match(d.chip_id):
            raise ValueError("DG13 chip id (field 16) must be 16 hex characters")
        fields.append(_dg13_field(16, _utf8(d.chip_id)))
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


def decode_dg13(data: bytes) -> Dg13:
    """Read DG13 by field number, never by position; tolerant of both readings of 15/16."""
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
        if len(parts) != 2 or parts[0][0] != 0x02 or not 1 <= len(parts[0][1]) <= 2:
            raise malformed("DG13 field must be SEQUENCE { INTEGER, value }")
        n = int.from_bytes(parts[0][1], "big")
        inner = read_tlv(value, len(parts[0][1]) + 2)[0:2]
        raw_value = value[len(parts[0][1]) + 2 :]
        if n in _DG13_TEXT_FIELDS:
            values[_DG13_TEXT_FIELDS[n]] = _text(raw_value, n)
        elif n in (13, 14):
            if inner[0] != 0x30:
                raise malformed(f"DG13 field {n} must be a SEQUENCE of strings", field=n)
            names = [_text(tlv(t, v), n) for t, v in parse_all(inner[1])]
            if n == 13:
                values["father"] = names[0] if names else None
                values["mother"] = names[1] if len(names) > 1 else None
            else:
                values["spouse"] = names[0] if names else None
        elif n in (15, 16):
            ids_15_16.append(_text(raw_value, n))
        else:
            unknown[n] = raw_value
    # Fields 15/16: readers disagree (spec). A 16-hex-character value is a chip id; anything
    # else (a 9- or 12-digit number) is the old ID number, whichever field holds it.
    for v in ids_15_16:
        if _HEX16.match(v) and len(v) == 16:
            values.setdefault("chip_id", v)
        else:
            values.setdefault("old_id_number", v)
    if "personal_id" not in values or "full_name" not in values:
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
