"""Fuzzing what the card sends back: APDU responses through the production device layer
(plain and under secure messaging), and every LDS/biometric decoder fed hostile files. Each
input yields a value or an error from appliance/errors.py (ProtocolError, DeviceStatusError,
...), never a foreign exception."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.biometrics import finger_record
from appliance.biometrics.face_record import FaceRecord
from appliance.drivers.card.apdu import CommandApdu, ResponseApdu, decode_command
from appliance.drivers.card.device import EmrtdCard
from appliance.drivers.card.profile import load_profile
from appliance.drivers.card.sm import (
    ChipSecureMessaging,
    SecureMessaging,
    SessionKeys,
)
from appliance.errors import ApplianceError, DeviceDisconnected, ProtocolError
from appliance.lds import files, tlv
from appliance.lds.sod import parse_sod

from ._strategies import FUZZ

PROFILE = load_profile("cccd-applet")
SW = st.sampled_from([0x9000, 0x6282, 0x6A82, 0x6982, 0x6700, 0x6988]) | st.integers(0, 0xFFFF)


class ScriptedCard:
    """A transport that answers each APDU with the next scripted response, then is pulled."""

    def __init__(self, responses: list[bytes]) -> None:
        self.responses = list(responses)

    def transmit(self, cmd: CommandApdu) -> ResponseApdu:
        cmd.encode()  # whatever the device layer builds must be encodable
        if not self.responses:
            raise DeviceDisconnected("card removed", device="card")
        return ResponseApdu.decode(self.responses.pop(0))


@st.composite
def tlv_like(draw: st.DrawFn, depth: int = 2) -> bytes:
    """Mostly well-formed BER-TLV with random tags, sometimes with lying lengths."""
    tag = draw(
        st.sampled_from(
            [0x60, 0x61, 0x75, 0x77, 0x5F1F, 0x7F61, 0x7F60, 0x5F2E, 0x02, 0x04, 0x30, 0xA0]
        )
    )
    if depth and tlv.is_constructed(tag) and draw(st.booleans()):
        value = b"".join(draw(st.lists(tlv_like(depth - 1), max_size=3)))
    else:
        value = draw(st.binary(max_size=40))
    out = tlv.tlv(tag, value)
    if draw(st.integers(0, 4)) == 0:  # truncate or extend: a lying length
        out = out[: draw(st.integers(0, len(out)))] + draw(st.binary(max_size=4))
    return out


hostile_files = st.binary(max_size=300) | tlv_like()


@FUZZ
@given(raw=st.binary(max_size=300))
def test_apdu_codecs(raw: bytes) -> None:
    try:
        cmd = decode_command(raw)
    except ProtocolError:
        pass
    else:
        assert decode_command(cmd.encode()) == cmd
    try:
        resp = ResponseApdu.decode(raw)
    except ProtocolError:
        assert len(raw) < 2
    else:
        assert resp.encode() == raw


@FUZZ
@given(
    first=st.builds(
        lambda d, sw: d + sw.to_bytes(2, "big"), st.binary(max_size=12) | tlv_like(), SW
    ),
    rest=st.lists(
        st.builds(lambda d, sw: d + sw.to_bytes(2, "big"), st.binary(max_size=300), SW),
        max_size=6,
    ),
)
def test_read_file_with_hostile_responses(first: bytes, rest: list[bytes]) -> None:
    ok = (0x9000).to_bytes(2, "big")
    card = EmrtdCard(ScriptedCard([ok, first, *rest]), PROFILE, extended=False)
    try:
        data = card.read_file(0x0101)
    except ApplianceError as exc:
        assert exc.code
    else:
        hdr, length = tlv.header_size(data)
        assert len(data) == hdr + length


def _keys() -> SessionKeys:
    return SessionKeys(secrets.token_bytes(16), secrets.token_bytes(16), 0x1122334455667788)


@FUZZ
@given(data=st.binary(max_size=200), sw=SW)
def test_secure_messaging_rejects_forged_responses(data: bytes, sw: int) -> None:
    sm = SecureMessaging(_keys())
    try:
        sm.unwrap(ResponseApdu(data, sw))
    except ProtocolError as exc:
        # sm_error (MAC, missing objects) or lds_malformed (the TLV around them)
        assert exc.code in ("sm_error", "lds_malformed")
    else:
        pytest.fail("a response without the session's MAC was accepted")


@FUZZ
@given(
    plain=st.binary(max_size=120),
    sw=SW,
    flip=st.integers(0, 10_000),
    bit=st.integers(0, 7),
)
def test_secure_messaging_detects_any_bit_flip(plain: bytes, sw: int, flip: int, bit: int) -> None:
    keys = _keys()
    reader, chip = SecureMessaging(keys), ChipSecureMessaging(keys)
    cmd = reader.wrap(CommandApdu(0x00, 0xB0, 0, 0, ne=len(plain) or 1))
    chip.unwrap(cmd)
    protected = chip.wrap(ResponseApdu(plain, sw))
    raw = bytearray(protected.data)
    raw[flip % len(raw)] ^= 1 << bit
    with pytest.raises(ProtocolError):
        reader.unwrap(ResponseApdu(bytes(raw), protected.sw))


@FUZZ
@given(challenge=st.binary(max_size=12), answer=st.binary(max_size=48), sw=SW)
def test_bac_with_a_hostile_chip(challenge: bytes, answer: bytes, sw: int) -> None:
    card = EmrtdCard(
        ScriptedCard([challenge + b"\x90\x00", answer + sw.to_bytes(2, "big")]),
        PROFILE,
        extended=False,
    )
    with pytest.raises(ApplianceError):
        card.basic_access_control("C03000001", "900101", "350101")
    assert card.sm is None


DECODERS: dict[str, Callable[[bytes], object]] = {
    "tlv.parse_all": tlv.parse_all,
    "EF.COM": files.decode_ef_com,
    "DG1": files.decode_dg1,
    "DG2": files.decode_dg2,
    "DG13": files.decode_dg13,
    "EF.SOD": parse_sod,
    "face record": FaceRecord.decode,
    "finger record": finger_record.decode,
}


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_lds_and_biometric_decoders(name: str) -> None:
    decode = DECODERS[name]

    @FUZZ
    @given(raw=hostile_files)
    def run(raw: bytes) -> None:
        try:
            decode(raw)
        except ApplianceError as exc:
            assert exc.code

    run()
