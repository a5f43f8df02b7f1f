"""BER-TLV and the TD1 MRZ against ICAO 9303 examples, round trips and bad input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.errors import ProtocolError
from appliance.lds import mrz, tlv


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, "00"),
        (0x7F, "7F"),
        (0x80, "8180"),
        (0xFF, "81FF"),
        (0x100, "820100"),
        (0xFFFF, "82FFFF"),
        (0x10000, "83010000"),
    ],
)
def test_length_encoding(n: int, encoded: str) -> None:
    assert tlv.encode_length(n) == bytes.fromhex(encoded)
    assert tlv.read_length(bytes.fromhex(encoded), 0) == (n, len(encoded) // 2)


@settings(deadline=None)
@given(
    tag=st.sampled_from([0x01, 0x04, 0x30, 0x5C, 0x5F01, 0x5F1F, 0x7F61, 0x7F2E]),
    value=st.binary(max_size=70000),
)
def test_tlv_round_trip(tag: int, value: bytes) -> None:
    enc = tlv.tlv(tag, value)
    assert tlv.read_tlv(enc) == (tag, value, len(enc))
    assert tlv.parse_all(enc + enc) == [(tag, value), (tag, value)]


@settings(deadline=None)
@given(st.binary(max_size=64))
def test_garbage_never_crashes_the_parser(data: bytes) -> None:
    try:
        tlv.parse_all(data)
    except ProtocolError as exc:
        assert exc.code == "lds_malformed"


@pytest.mark.parametrize(
    "bad",
    ["", "5F", "5F1F", "5F1F05ABCD", "0180", "01850000000001", "3F8F8F8F0100", "0182FF"],
)
def test_malformed_tlv_is_a_clear_error(bad: str) -> None:
    with pytest.raises(ProtocolError) as ei:
        tlv.read_tlv(bytes.fromhex(bad))
    assert ei.value.code == "lds_malformed"


def test_check_digits_of_the_icao_examples() -> None:
    # Part 11 Appendix D: MRZ information L898902C<3 690806 1 940623 6
    assert mrz.check_digit("L898902C<") == "3"
    assert mrz.check_digit("690806") == "1"
    assert mrz.check_digit("940623") == "6"
    assert mrz.bac_mrz_information("L898902C", "690806", "940623") == "L898902C<369080619406236"


def test_parse_icao_part5_td1_specimen() -> None:
    # ICAO 9303 Part 5 TD1 specimen (Utopia, Anna Maria Eriksson).
    text = (
        "I<UTOD231458907<<<<<<<<<<<<<<<7408122F1204159UTO<<<<<<<<<<<6ERIKSSON<<ANNA<MARIA<<<<<<<<<<"
    )
    m = mrz.parse_td1(text)
    assert (m.document_number, m.birth, m.sex, m.expiry) == ("D23145890", "740812", "F", "120415")
    assert (m.primary, m.secondary, m.issuing_state) == ("ERIKSSON", "ANNA MARIA", "UTO")
    again = mrz.Td1(
        m.document_number,
        m.birth,
        m.sex,
        m.expiry,
        m.primary,
        m.secondary,
        document_code="I",
        issuing_state="UTO",
        nationality="UTO",
    )
    assert again.text() == text


def test_twelve_digit_number_overflows_into_optional_data() -> None:
    m = mrz.Td1("079090001234", "900101", "F", "350101", "Nguyễn", "Thị Minh Khai")
    l1, l2, l3 = m.lines()
    assert len(l1) == len(l2) == len(l3) == 30
    assert l1[:15] == "IDVNM079090001<"
    full_cd = mrz.check_digit("079090001234")
    assert l1[15:20] == "234" + full_cd + "<"
    assert l3.startswith("NGUYEN<<THI<MINH<KHAI<")
    back = mrz.parse_td1("\n".join(m.lines()))
    assert back.document_number == "079090001234"
    assert mrz.bac_mrz_information("079090001234", "900101", "350101") == (
        "079090001234"
        + full_cd
        + "900101"
        + mrz.check_digit("900101")
        + "350101"
        + mrz.check_digit("350101")
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Nguyễn Thị Minh Khai", "NGUYEN<THI<MINH<KHAI"),
        ("Đặng Đình Đức", "DANG<DINH<DUC"),
        ("Trương Ngọc Ánh", "TRUONG<NGOC<ANH"),
        ("Lê Thị Hằng-Nga", "LE<THI<HANG<NGA"),
        ("Phạm Quốc Việt", "PHAM<QUOC<VIET"),
    ],
)
def test_vietnamese_transliteration(name: str, expected: str) -> None:
    assert mrz.transliterate(name) == expected


def test_long_names_are_truncated_to_the_field() -> None:
    f = mrz.name_field("Nguyễn", "Hoàng Thị Phương Thảo Ngọc Diễm Quỳnh")
    assert len(f) == 30 and f.startswith("NGUYEN<<HOANG<THI<PHUONG<")


@pytest.mark.parametrize(
    ("primary", "secondary", "expected"),
    [
        # A plain cut would end "...THAO<": the initial N takes the last place, THAO gives a letter.
        ("Nguyễn", "Hoàng Thị Phương Thảo Ngọc Diễm Quỳnh", "NGUYEN<<HOANG<THI<PHUONG<THA<N"),
        # A cut inside a name already ends in a letter: nothing else changes.
        ("Nguyễn", "Hoàng Thị Phương Thảoo Ngọc", "NGUYEN<<HOANG<THI<PHUONG<THAOO"),
        # The cut on the '<<' between the identifiers: the primary gives way, '<<' stays.
        ("Tôn Thất Nguyễn Phước Hoànga", "An", "TON<THAT<NGUYEN<PHUOC<HOANG<<A"),
        # A one-letter name before the cut cannot shrink: the name before it does.
        ("Lê", "Hoàng Thị Phương Nguyệt Ý Mai", "LE<<HOANG<THI<PHUONG<NGUYE<Y<M"),
        # Fits exactly: no truncation, no change.
        ("Nguyễn", "Văn Anh Tuấn Minh Quang", "NGUYEN<<VAN<ANH<TUAN<MINH<QUANG"[:30]),
    ],
)
def test_a_truncated_name_never_ends_in_a_filler(
    primary: str, secondary: str, expected: str
) -> None:
    f = mrz.name_field(primary, secondary)
    assert f == expected.ljust(30, "<")


@settings(deadline=None)
@given(
    words=st.lists(st.from_regex(r"[A-Z]{1,9}", fullmatch=True), min_size=2, max_size=12),
    split=st.integers(min_value=1, max_value=11),
)
def test_truncation_rule_holds_for_any_name(words: list[str], split: int) -> None:
    primary, secondary = " ".join(words[:split]), " ".join(words[split:])
    text = "<".join(words[:split]) + ("<<" + "<".join(words[split:]) if secondary else "")
    f = mrz.name_field(primary, secondary)
    assert len(f) == 30
    if len(text) <= 30:
        assert f == text.ljust(30, "<")
    else:
        assert f[-1] != "<", f  # ICAO 9303-3: the truncation shows
        if secondary and "<<" in text[:29]:
            assert "<<" in f  # the identifiers stay apart
        # Every name kept is a prefix of the original name at the same place.
        kept = [w for w in f.replace("<<", "<").split("<")]
        assert all(kept) and all(a.startswith(b) for a, b in zip(words, kept, strict=False))


def test_card_without_expiry_fills_the_field_with_fillers() -> None:
    m = mrz.Td1("079060001234", "600101", "M", mrz.NO_EXPIRY, "TRAN", "VAN AN")
    _l1, l2, _l3 = m.lines()
    assert l2[8:15] == "<<<<<<0"  # fillers, check digit computed as usual ('<' = 0)
    back = mrz.parse_td1(m.text())
    assert back.expiry == mrz.NO_EXPIRY
    info = mrz.bac_mrz_information("079060001234", "600101", mrz.NO_EXPIRY)
    assert info.endswith("<<<<<<0")
    with pytest.raises(ValueError):
        mrz.Td1("079060001234", mrz.NO_EXPIRY, "M", "350101", "A", "B").lines()


def test_short_document_numbers_are_padded_for_bac() -> None:
    assert mrz.bac_document_number("l898902c") == "L898902C<"
    assert mrz.bac_document_number("079090001234") == "079090001234"
    assert mrz.bac_mrz_information("A1", "690806", "940623").startswith("A1<<<<<<<")


@pytest.mark.parametrize("pos", [14, 36, 44, 59])
def test_every_check_digit_is_verified(pos: int) -> None:
    text = mrz.Td1("079090001234", "900101", "F", "350101", "A", "B").text()
    if pos == 14:  # long number: the overflow's check digit sits at position 19 (index 18)
        pos = 18
    wrong = str((int(text[pos]) + 1) % 10)
    with pytest.raises(ProtocolError):
        mrz.parse_td1(text[:pos] + wrong + text[pos + 1 :])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"birth": "901301"},
        {"expiry": "35010"},
        {"sex": "X"},
        {"document_number": "07909000123/"},
        {"document_number": ""},
    ],
)
def test_bad_mrz_fields_are_refused(kwargs: dict[str, str]) -> None:
    base = {
        "document_number": "079090001234",
        "birth": "900101",
        "sex": "F",
        "expiry": "350101",
        "primary": "A",
        "secondary": "B",
    }
    with pytest.raises(ValueError):
        mrz.Td1(**{**base, **kwargs}).lines()


def test_untransliterable_name_is_refused() -> None:
    with pytest.raises(ValueError):
        mrz.transliterate("李小龍")


@settings(deadline=None)
@given(
    doc=st.from_regex(r"[A-Z0-9]{1,9}|[0-9]{12}", fullmatch=True),
    birth=st.dates().map(lambda d: d.strftime("%y%m%d")),
    expiry=st.dates().map(lambda d: d.strftime("%y%m%d")),
    sex=st.sampled_from("MF<"),
)
def test_td1_round_trip(doc: str, birth: str, expiry: str, sex: str) -> None:
    m = mrz.Td1(doc, birth, sex, expiry, "TRAN", "VAN AN")
    back = mrz.parse_td1(m.text())
    assert (back.document_number, back.birth, back.expiry, back.sex) == (doc, birth, expiry, sex)
