"""What an ICAO reader does with a chip, written from ICAO 9303 alone (not from our driver):
it reads the MRZ optically, takes the BAC "MRZ information" straight from the printed
characters (TD1: line 1 positions 6-15, line 2 positions 1-7 and 9-15; 9303-11 §9.7.1 and
Appendix D) and runs BAC with keys derived from that. Used to prove that the kiosk locks a
chip with keys a reader derives, independently of ``appliance.lds.mrz.bac_mrz_information``."""

from __future__ import annotations

import secrets

from appliance.drivers.card import sm
from appliance.drivers.card.apdu import CommandApdu, ResponseApdu
from appliance.drivers.card.device import Transport


def mrz_information_as_read(mrz_text: str) -> str:
    """BAC MRZ information of a TD1 whose document number fits in 9 characters, as a reader
    cuts it from the printed lines (fillers included)."""
    l1, l2 = mrz_text[0:30], mrz_text[30:60]
    return l1[5:15] + l2[0:7] + l2[8:15]


def reader_bac(transport: Transport, aid: bytes, mrz_information: str) -> sm.SecureMessaging:
    """SELECT the eMRTD application and run BAC (9303-11 §4.3) with keys from the MRZ text."""
    seed = sm.kseed_from_mrz(mrz_information)
    kenc, kmac = sm.derive_key(seed, 1), sm.derive_key(seed, 2)
    transport.transmit(CommandApdu(0x00, 0xA4, 0x04, 0x0C, aid)).check("SELECT")
    rnd_ic = transport.transmit(CommandApdu(0x00, 0x84, 0x00, 0x00, ne=8)).check("CHALLENGE").data
    rnd_ifd, k_ifd = secrets.token_bytes(8), secrets.token_bytes(16)
    data = sm.ifd_authenticate_data(kenc, kmac, rnd_ic, rnd_ifd, k_ifd)
    resp = transport.transmit(CommandApdu(0x00, 0x82, 0x00, 0x00, data, ne=0x28))
    resp.check("EXTERNAL AUTHENTICATE")
    k_ic = sm.ifd_check_response(kenc, kmac, resp.data, rnd_ic, rnd_ifd)
    return sm.SecureMessaging(sm.session_keys(k_ifd, k_ic, rnd_ic, rnd_ifd))


def read_ef_com_head(transport: Transport, session: sm.SecureMessaging) -> bytes:
    """SELECT EF.COM and READ BINARY its first 4 bytes under secure messaging."""
    for cmd in (
        CommandApdu(0x00, 0xA4, 0x02, 0x0C, b"\x01\x1e"),
        CommandApdu(0x00, 0xB0, 0x00, 0x00, ne=4),
    ):
        resp: ResponseApdu = session.unwrap(transport.transmit(session.wrap(cmd)))
        resp.check("protected APDU")
    return resp.data
