"""DG13 as the public CCCD readers parse it: what the kiosk writes is read field for field by
each reader's parsing logic (re-implemented in tests/lds/cccd_readers.py from their published
behaviour)."""

from __future__ import annotations

import datetime as dt

import pytest

from appliance.central.citizens import Citizen, card_expiry, synthetic_citizen
from appliance.lds import files, mrz
from appliance.lds.tlv import tlv

from .cccd_readers import js_tlv_reader, python_short_form_reader, swift_prefix_reader

FULL = files.Dg13(
    personal_id="001099012345",
    full_name="Đặng Thị Ngọc Ánh",
    date_of_birth="15/03/1999",
    sex="Nữ",
    nationality="Việt Nam",
    ethnicity="Kinh",
    religion="Không",
    place_of_origin="Xã Đông Hội, Đông Anh, Hà Nội",
    permanent_residence="Số 5 ngõ 12 Phố Huế, Hai Bà Trưng, Hà Nội",
    identifying_marks="Sẹo chấm C 1cm dưới sau đuôi mắt phải",
    date_of_issue="10/05/2021",
    date_of_expiry="15/03/2039",
    father="Đặng Văn Hùng",
    mother="Nguyễn Thị Lan",
    spouse="Phạm Minh Quân",
    old_id_number="013456789",
)
# No spouse, no identifying marks, no religion, no old ID number: absent values.
SPARSE = files.Dg13(
    personal_id="079203001234",
    full_name="Lý Văn Hải",
    date_of_birth="29/02/2004",
    sex="Nam",
    nationality="Việt Nam",
    place_of_origin="Phường 1, Quận 5, TP. Hồ Chí Minh",
    permanent_residence="Phường 1, Quận 5, TP. Hồ Chí Minh",
    date_of_issue="01/03/2021",
    date_of_expiry="28/02/2029",
    father="Lý Văn Tư",
    mother="Đỗ Thị Năm",
)
# A long Vietnamese address near the short-form limit (122 bytes of UTF-8).
LONG_ADDRESS = "Thôn Đồng Xuân, Xã Phước Hưng, Huyện Tuy Phước, Tỉnh Bình Định, Việt Nam số 1234"


def _expected(d: files.Dg13) -> dict[int, object]:
    return {
        1: d.personal_id,
        2: d.full_name,
        3: d.date_of_birth,
        4: d.sex,
        5: d.nationality,
        6: d.ethnicity or "",
        7: d.religion or "",
        8: d.place_of_origin or "",
        9: d.permanent_residence or "",
        10: d.identifying_marks or "",
        11: d.date_of_issue,
        12: d.date_of_expiry,
        13: (d.father or "", d.mother or ""),
        14: (d.spouse,) if d.spouse else (),
        15: d.old_id_number or "",
        16: d.old_id_number or "",
    }


CASES = {
    "full": FULL,
    "sparse": SPARSE,
    "long_address": files.Dg13(
        **{**SPARSE.__dict__, "permanent_residence": LONG_ADDRESS, "unknown_fields": {}}
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_swift_prefix_reader_reads_every_field(name: str) -> None:
    d = CASES[name]
    got = swift_prefix_reader(files.encode_dg13(d))
    want = _expected(d)
    # Its prefixes want exactly 9 characters in 15 and 16 characters in 16: it shows the old ID
    # number from 15 (nothing when there is none) and never reads the 9 digits the kiosk puts
    # in 16 for the other readers (docs/card.md, "DG13 fields 15/16"). 16 is the last field,
    # so nothing else is lost.
    want[15] = d.old_id_number
    want[16] = None
    assert got == want


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_javascript_reader_reads_every_field_and_the_old_id_from_16(name: str) -> None:
    d = CASES[name]
    got = js_tlv_reader(files.encode_dg13(d))
    want = _expected(d)
    del want[15]  # ignored by this reader
    assert got == want
    assert got[16] == (d.old_id_number or "")


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_python_short_form_reader_drops_nothing(name: str) -> None:
    d = CASES[name]
    got = python_short_form_reader(files.encode_dg13(d))
    assert got == _expected(d)


def test_dates_are_dd_mm_yyyy_printable_and_expiry_utf8() -> None:
    raw = files.encode_dg13(FULL)
    assert bytes.fromhex("3011020101130C") + b"001099012345" in raw  # the Swift prefix
    assert tlv(0x30, b"\x02\x01\x03" + tlv(0x13, b"15/03/1999")) in raw
    assert tlv(0x30, b"\x02\x01\x0b" + tlv(0x13, b"10/05/2021")) in raw
    assert tlv(0x30, b"\x02\x01\x0c" + tlv(0x0C, b"15/03/2039")) in raw
    assert tlv(0x30, b"\x02\x01\x0f" + tlv(0x13, b"013456789")) in raw
    # The old ddMMyyyy form is accepted when writing and written as dd/MM/yyyy.
    legacy = files.Dg13(**{**FULL.__dict__, "date_of_birth": "15031999", "unknown_fields": {}})
    assert files.encode_dg13(legacy) == raw


def test_absent_values_are_empty_fields_in_order() -> None:
    raw = files.encode_dg13(SPARSE)
    assert bytes.fromhex("30050201070C00") in raw  # religion: present, empty
    assert bytes.fromhex("300502010A0C00") in raw  # identifying marks: present, empty
    assert bytes.fromhex("300302010E") in raw  # no spouse: 30 03 02 01 0E
    assert bytes.fromhex("30050201101300") in raw  # field 16 present, empty
    numbers = sorted(swift_prefix_reader(raw))
    assert numbers == list(range(1, 17))
    assert files.decode_dg13(raw) == SPARSE  # empty values read back as absent


def test_the_decoder_reads_both_layouts_of_13_and_both_string_types() -> None:
    def raw(fields: list[tuple[int, bytes]]) -> bytes:
        body = b"".join(tlv(0x30, tlv(0x02, bytes([n])) + v) for n, v in fields)
        oid = files.DG13_OID_DER
        return tlv(0x6D, tlv(0x30, tlv(0x02, b"\x01") + oid + tlv(0x31, body)))

    one_seq = tlv(0x30, tlv(0x0C, "Bố".encode()) + tlv(0x0C, "Mẹ".encode()))
    two_seqs = tlv(0x30, tlv(0x0C, "Bố".encode())) + tlv(0x30, tlv(0x0C, "Mẹ".encode()))
    for parents in (one_seq, two_seqs):
        d = files.decode_dg13(
            raw(
                [
                    (1, tlv(0x13, b"001099012345")),
                    (2, tlv(0x0C, "Tên".encode())),
                    (3, tlv(0x0C, b"01/02/1990")),
                    (13, parents),
                ]
            )
        )
        assert (d.father, d.mother, d.date_of_birth) == ("Bố", "Mẹ", "01/02/1990")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"permanent_residence": LONG_ADDRESS + " thêm vài chữ nữa"}, "permanent_residence"),
        ({"date_of_birth": "31/02/1999"}, "date_of_birth"),
        ({"date_of_issue": "2021-05-10"}, "date_of_issue"),
        ({"old_id_number": "01345678X"}, "old ID number"),
        ({"chip_id": "3F2A00B1C4D5E6F7"}, "field 16"),
    ],
)
def test_bad_dg13_values_are_refused_naming_the_field(change: dict[str, str], field: str) -> None:
    d = files.Dg13(**{**FULL.__dict__, **change, "unknown_fields": {}})
    with pytest.raises(ValueError, match=field):
        files.encode_dg13(d)


# --- citizens over 60 and leap days (the issuer's data path) ----------------------------------


def test_a_29_february_birth_has_its_milestone_on_28_february() -> None:
    birth = dt.date(2004, 2, 29)
    assert card_expiry(birth, dt.date(2021, 3, 1)) == dt.date(2029, 2, 28)  # 25th, common year
    assert card_expiry(dt.date(1992, 2, 29), dt.date(2021, 3, 1)) == dt.date(2032, 2, 29)


def test_a_citizen_over_60_gets_a_card_without_expiry() -> None:
    c = synthetic_citizen("CIT-ELDER", today=dt.date(2026, 11, 22), age=67)
    assert c.date_of_expiry is None and c.without_expiry
    m = c.td1()
    assert m.expiry == mrz.NO_EXPIRY
    assert mrz.parse_td1(m.text()).expiry == mrz.NO_EXPIRY
    d = c.dg13()
    assert d.date_of_expiry == files.NO_EXPIRY_TEXT
    assert files.decode_dg13(files.encode_dg13(d)).date_of_expiry == files.NO_EXPIRY_TEXT
    assert js_tlv_reader(files.encode_dg13(d))[12] == files.NO_EXPIRY_TEXT


def test_a_citizen_of_58_issued_before_60_has_no_expiry_but_57_has_one() -> None:
    issued = dt.date(2026, 11, 22)
    at_58 = Citizen(
        personal_id="001068012345",
        full_name="Trần Văn Bảy",
        date_of_birth=dt.date(1968, 2, 29),
        sex="M",
        date_of_issue=issued,
    )
    assert at_58.td1().expiry == mrz.NO_EXPIRY
    at_57 = at_58.model_copy(update={"date_of_birth": dt.date(1969, 12, 1)})
    assert card_expiry(at_57.date_of_birth, issued) == dt.date(2029, 12, 1)
