"""Chips an ICAO reader can open: the BAC seed of short document numbers, cards without expiry,
and cards whose applet derives its keys from the PUT DATA seed the way a real applet does."""

from __future__ import annotations

import pytest

from appliance.drivers.card.device import EmrtdCard, personalise
from appliance.drivers.card.emulator import EmrtdApplet
from appliance.drivers.card.profile import CardProfile
from appliance.lds import files, issuance, mrz

from .icao_reader import mrz_information_as_read, read_ef_com_head, reader_bac
from .test_apdu_applet import AppletTransport

SHORT_DOC = "C01X00T4"  # 8 characters: printed as C01X00T4< in the MRZ


def _lds(m: mrz.Td1) -> dict[str, bytes]:
    return {
        "EF.COM": files.encode_ef_com([1]),
        "DG1": files.encode_dg1(m),
        "EF.SOD": b"\x77\x03abc",
    }


@pytest.mark.parametrize(
    ("doc", "expiry"),
    [(SHORT_DOC, "350101"), ("A1", "350101"), ("L898902C3", "350101"), (SHORT_DOC, mrz.NO_EXPIRY)],
)
def test_an_icao_reader_opens_what_the_kiosk_locked(
    profile: CardProfile, doc: str, expiry: str
) -> None:
    m = mrz.Td1(doc, "900101", "F", expiry, "TRAN", "VAN AN")
    applet = EmrtdApplet(profile)
    personalise(
        EmrtdCard(AppletTransport(applet), profile, extended=False),
        _lds(m),
        (doc, "900101", expiry),
    )
    assert applet.locked
    info = mrz_information_as_read(m.text())
    if len(doc) < 9:
        assert info.startswith(doc + "<")
    transport = AppletTransport(applet)
    session = reader_bac(transport, profile.aid_bytes, info)
    assert read_ef_com_head(transport, session) == files.encode_ef_com([1])[:4]


def test_the_icao_worked_example_keys_come_from_the_padded_number() -> None:
    # 9303-11 Appendix D: document number L898902C (8 characters) -> "L898902C<3...".
    from appliance.drivers.card.emulator import applet_bac_keys
    from appliance.drivers.card.sm import bac_keys

    kenc, kmac = applet_bac_keys(mrz.bac_document_number("L898902C"), "690806", "940623")
    assert kenc.hex().upper() == "AB94FDECF2674FDFB9B391F85D7F76F2"
    assert kmac.hex().upper() == "7962D9ECE03D1ACD4C76089DCE131543"
    assert bac_keys("L898902C", "690806", "940623") == (kenc, kmac)
    # An applet given the bare 8 characters derives other keys: the bug this guards against.
    assert applet_bac_keys("L898902C", "690806", "940623") != (kenc, kmac)


def test_short_document_number_through_pcsc(make_encoder, insert_card, pki) -> None:
    """End to end on pcscd + vpcd: issue, then open the chip as an ICAO reader would."""
    p, _ = pki
    m = mrz.Td1(SHORT_DOC, "900101", "M", "350101", "LE", "VAN BA")
    pkg = issuance.build_issuance_package(
        package_id="pkg-short-doc",
        mrz=m,
        dg13=None,
        face_records=None,
        ds_key=p.ds_key,
        ds_cert=p.ds_cert,
    )
    emu = insert_card()
    result = make_encoder().encode(pkg)
    assert result["outcome"] == "issued"
    assert emu.applet.bac_seed is not None and emu.applet.bac_seed[0] == SHORT_DOC + "<"
    transport = AppletTransport(emu.applet)
    session = reader_bac(transport, emu.applet.profile.aid_bytes, mrz_information_as_read(m.text()))
    assert read_ef_com_head(transport, session) == bytes(pkg.files["EF.COM"])[:4]


def test_a_citizen_over_60_is_issued_and_read_without_expiry(
    make_encoder, insert_card, pki
) -> None:
    """Law on Citizen Identification 2014, art. 21: from 60 the card has no expiry; the MRZ
    carries fillers and BAC works."""
    import datetime as dt

    from appliance.central.citizens import synthetic_citizen

    p, _ = pki
    c = synthetic_citizen("CIT-ELDER-1", today=dt.date(2026, 11, 22), age=72)
    pkg = issuance.build_issuance_package(
        package_id="pkg-elder",
        mrz=c.td1(),
        dg13=c.dg13(),
        face_records=None,
        ds_key=p.ds_key,
        ds_cert=p.ds_cert,
    )
    emu = insert_card()
    enc = make_encoder()
    assert enc.encode(pkg)["outcome"] == "issued"
    birth = c.date_of_birth.strftime("%y%m%d")
    read = enc.read(c.personal_id, birth, mrz.NO_EXPIRY)
    assert read["passive_authentication"]["passed"] is True
    assert read["dg1"]["expiry"] == mrz.NO_EXPIRY
    assert read["dg13"]["date_of_expiry"] == files.NO_EXPIRY_TEXT
    assert emu.applet.bac_seed == (c.personal_id, birth, mrz.NO_EXPIRY)
