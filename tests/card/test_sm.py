"""BAC and secure messaging against every value of ICAO 9303 Part 11 Appendix D
(BAC key derivation and secure messaging)."""

from __future__ import annotations

import pytest

from appliance.drivers.card import sm
from appliance.drivers.card.apdu import CommandApdu, ResponseApdu
from appliance.errors import ProtocolError

H = bytes.fromhex
MRZ_INFO = "L898902C<369080619406236"
KSEED = H("239AB9CB282DAF66231DC5A4DF6BFBAE")
KENC = H("AB94FDECF2674FDFB9B391F85D7F76F2")
KMAC = H("7962D9ECE03D1ACD4C76089DCE131543")
RND_IC = H("4608F91988702212")
RND_IFD = H("781723860C06C226")
K_IFD = H("0B795240CB7049B01C19B33E32804F0B")
E_IFD = H("72C29C2371CC9BDB65B779B8E8D37B29ECC154AA56A8799FAE2F498F76ED92F2")
M_IFD = H("5F1448EEA8AD90A7")
E_IC = H("46B9342A41396CD7386BF5803104D7CEDC122B9132139BAF2EEDC94EE178534F")
M_IC = H("2F2D235D074D7449")
K_IC = H("0B4F80323EB3191CB04970CB4052790B")
KSENC = H("979EC13B1CBFE9DCD01AB0FED307EAE5")
KSMAC = H("F1CB1F1FB5ADF208806B89DC579DC1F8")
SSC = 0x887022120C06C226


def test_key_derivation() -> None:
    assert sm.kseed_from_mrz(MRZ_INFO) == KSEED
    assert sm.derive_key(KSEED, 1) == KENC
    assert sm.derive_key(KSEED, 2) == KMAC
    # The same MRZ information built from its fields (document number shorter than 9 chars).
    assert sm.bac_keys("L898902C", "690806", "940623") == (KENC, KMAC)


def test_ifd_authentication_data() -> None:
    assert sm.ifd_authenticate_data(KENC, KMAC, RND_IC, RND_IFD, K_IFD) == E_IFD + M_IFD


def test_chip_response_gives_k_ic_and_session_keys() -> None:
    assert sm.ifd_check_response(KENC, KMAC, E_IC + M_IC, RND_IC, RND_IFD) == K_IC
    keys = sm.session_keys(K_IFD, K_IC, RND_IC, RND_IFD)
    assert (keys.ks_enc, keys.ks_mac, keys.ssc) == (KSENC, KSMAC, SSC)


def test_chip_side_reproduces_the_chip_response() -> None:
    resp, rnd_ifd, k_ifd = sm.chip_authenticate(KENC, KMAC, E_IFD + M_IFD, RND_IC, K_IC)
    assert resp == E_IC + M_IC
    assert (rnd_ifd, k_ifd) == (RND_IFD, K_IFD)


def test_tampered_chip_response_is_refused() -> None:
    bad = bytearray(E_IC + M_IC)
    bad[3] ^= 1
    with pytest.raises(ProtocolError) as ei:
        sm.ifd_check_response(KENC, KMAC, bytes(bad), RND_IC, RND_IFD)
    assert ei.value.code == "bac_failed"
    with pytest.raises(ProtocolError):
        sm.ifd_check_response(KENC, KMAC, E_IC + M_IC, RND_IFD, RND_IC)  # nonces swapped


def _session() -> sm.SecureMessaging:
    return sm.SecureMessaging(sm.SessionKeys(KSENC, KSMAC, SSC))


def test_protected_select_and_read_binary() -> None:
    reader = _session()
    sel = reader.wrap(CommandApdu(0x00, 0xA4, 0x02, 0x0C, H("011E")))
    assert sel.encode() == H("0CA4020C158709016375432908C044F68E08BF8B92D635FF24F800")
    plain = reader.unwrap(ResponseApdu.decode(H("990290008E08FA855A5D4C50A8ED9000")))
    assert plain == ResponseApdu(b"", 0x9000)
    rb = reader.wrap(CommandApdu(0x00, 0xB0, 0x00, 0x00, ne=4))
    assert rb.encode() == H("0CB000000D9701048E08ED6705417E96BA5500")
    resp = H("8709019FF0EC34F9922651990290008E08AD55CC17140B2DED9000")
    assert reader.unwrap(ResponseApdu.decode(resp)) == ResponseApdu(H("60145F01"), 0x9000)


def test_chip_side_matches_the_vectors() -> None:
    chip = sm.ChipSecureMessaging(sm.SessionKeys(KSENC, KSMAC, SSC))
    from appliance.drivers.card.apdu import decode_command

    cmd = chip.unwrap(decode_command(H("0CA4020C158709016375432908C044F68E08BF8B92D635FF24F800")))
    assert (cmd.ins, cmd.p1, cmd.p2, cmd.data) == (0xA4, 0x02, 0x0C, H("011E"))
    assert chip.wrap(ResponseApdu(b"", 0x9000)).encode() == H("990290008E08FA855A5D4C50A8ED9000")
    cmd = chip.unwrap(decode_command(H("0CB000000D9701048E08ED6705417E96BA5500")))
    assert (cmd.ins, cmd.ne) == (0xB0, 4)
    assert chip.wrap(ResponseApdu(H("60145F01"), 0x9000)).encode() == H(
        "8709019FF0EC34F9922651990290008E08AD55CC17140B2DED9000"
    )


def test_response_with_wrong_mac_is_refused() -> None:
    reader = _session()
    reader.wrap(CommandApdu(0x00, 0xA4, 0x02, 0x0C, H("011E")))
    with pytest.raises(ProtocolError) as ei:
        reader.unwrap(ResponseApdu.decode(H("990290008E08FA855A5D4C50A8ED0000") + b"\x90\x00"))
    assert ei.value.code == "sm_error"


def test_extended_length_round_trip() -> None:
    keys = sm.SessionKeys(KSENC, KSMAC, SSC)
    reader, chip = sm.SecureMessaging(keys), sm.ChipSecureMessaging(keys)
    data = bytes(range(256)) * 8
    wrapped = reader.wrap(CommandApdu(0x00, 0xD6, 0x01, 0x00, data))
    assert wrapped.needs_extended()
    from appliance.drivers.card.apdu import decode_command

    plain = chip.unwrap(decode_command(wrapped.encode()))
    assert plain.data == data and plain.ne is None
    big = reader.wrap(CommandApdu(0x00, 0xB0, 0x00, 0x00, ne=1000))
    assert chip.unwrap(decode_command(big.encode())).ne == 1000
    assert reader.unwrap(chip.wrap(ResponseApdu(data[:1000], 0x9000))).data == data[:1000]


@pytest.mark.parametrize("bad", [b"", b"\x80\x00\x01", bytes(8), b"abc\x80\x00\x00\x00\x00\x00"])
def test_unpad_rejects_bad_padding(bad: bytes) -> None:
    if bad == b"abc\x80\x00\x00\x00\x00\x00":
        assert sm.unpad(bad) == b"abc"
        return
    with pytest.raises(ProtocolError):
        sm.unpad(bad)
