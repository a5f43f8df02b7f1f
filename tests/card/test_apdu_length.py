"""Extended-length APDUs only once the reader and the card are known to take them, and an LDS
the card cannot hold refused before any write (issue 14, chip)."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.drivers.card.atr import atr_says_extended, parse_atr
from appliance.drivers.card.device import EmrtdCard, personalise
from appliance.drivers.card.emulator import EmrtdApplet
from appliance.drivers.card.profile import CardProfile, load_profile
from appliance.errors import DeviceError
from appliance.lds import issuance
from appliance.lds.files import FILE_FIDS

from .conftest import dg13, face_record, td1
from .test_apdu_applet import BAC, AppletTransport, _files

EXTENDED_ATR = "3B85800180738001C0B6"  # card capabilities 73 80 01 C0: b7 set


@pytest.fixture(scope="module")
def short_profile() -> CardProfile:
    return load_profile("cccd-applet-short")


@pytest.mark.parametrize(
    ("atr", "says"),
    [
        ("3B8580018073800180F6", False),  # cccd-applet-short: 73 80 01 80
        (EXTENDED_ATR, True),
        ("3B8980014170706C69616E636545", None),  # proprietary historical bytes ("Appliance")
        ("3B8A800100738001C0009000AA", None),  # category 00: objects then 3 status bytes...
        ("3B8780018073800180FF", None),  # announces 7 historical bytes, has 5: unparsable
        ("3B", None),
    ],
)
def test_what_the_atr_says_about_extended_length(atr: str, says: bool | None) -> None:
    assert atr_says_extended(bytes.fromhex(atr)) is says


def test_atr_category_00_reads_objects_before_the_status_indicator() -> None:
    hist = bytes.fromhex("00738001C0009000")  # 73 80 01 C0, then status 00 90 00
    body = bytes([0x80 | len(hist), 0x80, 0x01]) + hist
    info = parse_atr(b"\x3b" + body + b"\x00")
    assert info.protocols == (0, 1) and info.extended_length is True


def test_probe_on_a_card_without_extended_length(
    profile: CardProfile, short_profile: CardProfile
) -> None:
    applet = EmrtdApplet(short_profile)
    # The kiosk's profile allows extended length; this card does not: the probe finds out.
    card = EmrtdCard(AppletTransport(applet), profile, extended=True)
    assert card.negotiate_length(b"") is False
    assert card.length_reason == "probe answered 6700" and applet.refused_extended == 1
    personalise(card, _files(), BAC)
    assert applet.locked and applet.refused_extended == 1  # nothing else was extended


def test_probe_on_a_card_with_extended_length(profile: CardProfile) -> None:
    card = EmrtdCard(AppletTransport(EmrtdApplet(profile)), profile, extended=True)
    assert card.negotiate_length(bytes.fromhex(EXTENDED_ATR)) is True
    assert card.length_reason == "probe passed"


def test_an_atr_that_denies_extended_length_needs_no_probe(
    profile: CardProfile, short_profile: CardProfile
) -> None:
    applet = EmrtdApplet(short_profile)
    card = EmrtdCard(AppletTransport(applet), profile, extended=True)
    assert card.negotiate_length(short_profile.atr_bytes) is False
    assert applet.refused_extended == 0 and card.apdus == 0


def _issue(make_encoder: Any, package: issuance.IssuancePackage) -> dict[str, Any]:
    result: dict[str, Any] = make_encoder().encode(package)
    assert result["outcome"] == "issued"
    assert result["passive_authentication"]["passed"] is True
    return result


def test_short_only_card_is_issued_by_a_kiosk_expecting_extended(
    make_encoder, insert_card, package, short_profile
) -> None:
    """Kiosk profile cccd-applet (extended allowed), card stock without extended length whose
    ATR says so: written in short APDUs, issued, readable."""
    emu = insert_card(applet=EmrtdApplet(short_profile))
    result = _issue(make_encoder, package)
    assert result["extended_apdu"] is False
    assert emu.applet.refused_extended == 0
    for name, data in package.files.items():
        assert bytes(emu.applet.files[FILE_FIDS[name]]) == bytes(data)


def test_short_only_card_with_a_silent_atr_is_found_by_the_probe(
    make_encoder, insert_card, package, short_profile
) -> None:
    silent = short_profile.model_copy(update={"atr": "3B8980014170706C69616E636545"})
    emu = insert_card(applet=EmrtdApplet(silent))
    result = _issue(make_encoder, package)
    assert result["extended_apdu"] is False
    assert emu.applet.refused_extended == 1  # the probe, and nothing after it


def test_extended_card_still_gets_extended_apdus(make_encoder, insert_card, package) -> None:
    emu = insert_card()
    result = _issue(make_encoder, package)
    assert result["extended_apdu"] is True and result["apdus"] < 60
    assert emu.applet.refused_extended == 0


def test_an_lds_larger_than_the_card_is_refused_before_any_write(
    make_encoder, insert_card, pki, short_profile, events
) -> None:
    p, _ = pki
    big = issuance.build_issuance_package(
        package_id="pkg-too-big",
        mrz=td1(),
        dg13=dg13(),
        face_records=[face_record((480, 600), 60)],  # DG2 ~32 KB
        ds_key=p.ds_key,
        ds_cert=p.ds_cert,
    )
    emu = insert_card(applet=EmrtdApplet(short_profile))
    enc = make_encoder(card_profile="cccd-applet-short")
    with pytest.raises(DeviceError) as ei:
        enc.encode(big)
    assert ei.value.code == "card_capacity"
    assert "DG2" in ei.value.message or "needs" in ei.value.message
    assert emu.applet.files == {} and not emu.applet.locked
    assert "card.spoiled" not in events.types()


def test_memory_counts_the_per_file_overhead(
    make_encoder, insert_card, package, short_profile
) -> None:
    lds = sum(len(bytes(v)) for v in package.files.values())
    # Room for the bytes but not for the bytes plus 32 bytes of header per file.
    tight = short_profile.model_copy(update={"memory": lds + 64})
    emu = insert_card(applet=EmrtdApplet(tight))
    enc = make_encoder(card_profile="cccd-applet-short")
    enc.profile = tight
    with pytest.raises(DeviceError) as ei:
        enc.encode(package)
    assert ei.value.code == "card_capacity"
    assert ei.value.details["needed"] == lds + 32 * len(package.files)
    assert emu.applet.files == {}
