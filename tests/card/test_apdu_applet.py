"""APDU codec and the emulated applet as a pure state machine (no I/O)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.drivers.card import apdu as A
from appliance.drivers.card.apdu import CommandApdu, ResponseApdu, decode_command
from appliance.drivers.card.device import EmrtdCard, personalise, read_back
from appliance.drivers.card.emulator import EmrtdApplet
from appliance.drivers.card.profile import CardProfile
from appliance.errors import DeviceDisconnected, DeviceError, DeviceStatusError, ProtocolError


@pytest.mark.parametrize(
    ("cmd", "hexed"),
    [
        (CommandApdu(0, 0xA4, 4, 0x0C), "00A4040C"),
        (CommandApdu(0, 0x84, 0, 0, ne=8), "0084000008"),
        (CommandApdu(0, 0xB0, 0, 0, ne=256), "00B0000000"),
        (CommandApdu(0, 0xA4, 2, 0x0C, b"\x01\x1e"), "00A4020C02011E"),
        (CommandApdu(0, 0x82, 0, 0, b"\xaa" * 2, ne=0x28), "0082000002AAAA28"),
        (CommandApdu(0, 0xB0, 0, 0, ne=1000), "00B000000003E8"),
        (CommandApdu(0, 0xB0, 0, 0, ne=65536), "00B00000000000"),
        (CommandApdu(0, 0xD6, 0, 0, b"\x01" * 300), "00D6000000012C" + "01" * 300),
        (CommandApdu(0, 0x82, 0, 0, b"\x01" * 300, ne=500), "0082000000012C" + "01" * 300 + "01F4"),
    ],
)
def test_command_encoding_and_decoding(cmd: CommandApdu, hexed: str) -> None:
    assert cmd.encode().hex().upper() == hexed.upper()
    back = decode_command(bytes.fromhex(hexed))
    assert (back.cla, back.ins, back.p1, back.p2, back.data, back.ne) == (
        cmd.cla,
        cmd.ins,
        cmd.p1,
        cmd.p2,
        cmd.data,
        cmd.ne,
    )


@pytest.mark.parametrize("bad", ["00A4", "00A4040C0501", "00A4040C0000", "00A4040C00000501"])
def test_malformed_command_apdus(bad: str) -> None:
    with pytest.raises(ProtocolError):
        decode_command(bytes.fromhex(bad))


def test_response_and_status_words() -> None:
    r = ResponseApdu.decode(bytes.fromhex("01029000"))
    assert r.ok and r.data == b"\x01\x02"
    with pytest.raises(DeviceStatusError) as ei:
        ResponseApdu(b"", 0x6581).check("UPDATE BINARY")
    assert ei.value.status == 0x6581 and "memory failure" in ei.value.message
    with pytest.raises(ProtocolError):
        ResponseApdu.decode(b"\x90")
    with pytest.raises(ValueError):
        CommandApdu(0x100, 0, 0, 0).encode()


class AppletTransport:
    """The applet in-process, through its byte interface (what vpcd would relay)."""

    def __init__(self, applet: EmrtdApplet) -> None:
        self.applet = applet

    def transmit(self, cmd: CommandApdu) -> ResponseApdu:
        return ResponseApdu.decode(self.applet.process(cmd.encode()))


def _files() -> dict[str, bytes]:
    from appliance.lds import files, mrz

    dg1 = files.encode_dg1(mrz.Td1("079090001234", "900101", "F", "350101", "A", "B"))
    return {"EF.COM": files.encode_ef_com([1]), "DG1": dg1, "EF.SOD": b"\x77\x03abc"}


BAC = ("079090001234", "900101", "350101")


@pytest.mark.parametrize("extended", [False, True])
def test_personalise_and_read_back_in_process(profile: CardProfile, extended: bool) -> None:
    applet = EmrtdApplet(profile)
    card = EmrtdCard(AppletTransport(applet), profile, extended=extended)
    personalise(card, _files(), BAC)
    assert applet.locked
    back = read_back(
        EmrtdCard(AppletTransport(applet), profile, extended=extended), list(_files()), BAC
    )
    assert back == _files()


def test_lock_needs_a_bac_seed(profile: CardProfile) -> None:
    applet = EmrtdApplet(profile)
    card = EmrtdCard(AppletTransport(applet), profile, extended=False)
    card.select_application()
    with pytest.raises(DeviceStatusError) as ei:
        card.lock()
    assert ei.value.status == A.SW_CONDITIONS and not applet.locked


def test_applet_limits(profile: CardProfile) -> None:
    applet = EmrtdApplet(profile)
    card = EmrtdCard(AppletTransport(applet), profile, extended=True)
    card.select_application()
    for fid, size, sw in [
        (0x0101, profile.max_file_size + 1, A.SW_WRONG_DATA),
        (0x0199, 10, A.SW_WRONG_DATA),
    ]:
        with pytest.raises(DeviceStatusError) as ei:
            card.create_file(fid, size)
        assert ei.value.status == sw
    card.create_file(0x0101, 10)
    with pytest.raises(DeviceStatusError) as ei:
        card.create_file(0x0101, 10)
    assert ei.value.status == A.SW_FILE_EXISTS
    card.select_file(0x0101)
    with pytest.raises(DeviceStatusError) as ei:
        card.update_binary(5, b"123456")
    assert ei.value.status == A.SW_NOT_ENOUGH_MEMORY
    with pytest.raises(DeviceStatusError) as ei:
        card.read_binary(10, 1)
    assert ei.value.status == A.SW_WRONG_P1P2
    with pytest.raises(DeviceStatusError) as ei:
        EmrtdCard(AppletTransport(applet), profile, extended=False)._send(
            CommandApdu(0, 0xDA, 0, 0x62, b"\x62\x03\x04\x01A"), "PUT DATA"
        )
    assert ei.value.status == A.SW_WRONG_DATA


class _PulledOnExternalAuthenticate(AppletTransport):
    """The card leaves the reader during BAC's EXTERNAL AUTHENTICATE (what vpcd reports)."""

    def transmit(self, cmd: CommandApdu) -> ResponseApdu:
        if cmd.ins == 0x82:
            raise DeviceDisconnected("no status word", device="card", code="card_mute")
        return super().transmit(cmd)


def test_a_card_pulled_during_bac_is_not_a_wrong_key(profile: CardProfile) -> None:
    applet = EmrtdApplet(profile)
    personalise(EmrtdCard(AppletTransport(applet), profile, extended=False), _files(), BAC)
    card = EmrtdCard(_PulledOnExternalAuthenticate(applet), profile, extended=False)
    card.select_application()
    with pytest.raises(DeviceError) as ei:
        card.basic_access_control(*BAC)
    assert ei.value.code == "card_mute"


def test_bac_with_wrong_keys_fails_and_sm_errors_end_the_session(profile: CardProfile) -> None:
    applet = EmrtdApplet(profile)
    personalise(EmrtdCard(AppletTransport(applet), profile, extended=False), _files(), BAC)
    card = EmrtdCard(AppletTransport(applet), profile, extended=False)
    card.select_application()
    with pytest.raises(DeviceError) as ei:
        card.basic_access_control("079090001234", "900101", "350102")
    assert ei.value.code == "bac_failed"
    card.basic_access_control(*BAC)
    assert card.read_file(0x011E) == _files()["EF.COM"]
    # A protected APDU with a broken MAC: 6988 and the session is gone.
    assert card.sm is not None
    wrapped = card.sm.wrap(CommandApdu(0, 0xA4, 2, 0x0C, b"\x01\x01"))
    broken = bytearray(wrapped.encode())
    broken[-3] ^= 1
    assert applet.process(bytes(broken)) == A.SW_SM_OBJECTS_INCORRECT.to_bytes(2, "big")
    with pytest.raises(ProtocolError):
        card.read_file(0x0101)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=300))
def test_the_applet_answers_any_bytes_with_a_status_word(data: bytes) -> None:
    from appliance.drivers.card.profile import load_profile

    applet = EmrtdApplet(load_profile("cccd-applet"))
    applet.process(bytes.fromhex("00A4040C07A0000002471001"))
    out = applet.process(data)
    assert len(out) >= 2


@settings(max_examples=200, deadline=None)
@given(
    ins=st.sampled_from([0xA4, 0xB0, 0xD6, 0xE0, 0xDA, 0x84, 0x82, 0x0E, 0xCA]),
    p1=st.integers(0, 255),
    p2=st.integers(0, 255),
    data=st.binary(max_size=40),
    ne=st.none() | st.integers(1, 300),
    cla=st.sampled_from([0x00, 0x0C, 0x80]),
)
def test_the_applet_survives_well_formed_nonsense(
    ins: int, p1: int, p2: int, data: bytes, ne: int | None, cla: int
) -> None:
    from appliance.drivers.card.profile import load_profile

    applet = EmrtdApplet(load_profile("cccd-applet"))
    applet.process(bytes.fromhex("00A4040C07A0000002471001"))
    out = applet.process(CommandApdu(cla, ins, p1, p2, data, ne=ne).encode())
    assert len(out) >= 2
    assert out[-2:] != b"\x6f\x00"  # no internal error: every case has a proper status
