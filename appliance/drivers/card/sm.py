"""Basic Access Control and secure messaging (ICAO 9303 Part 11 §4.3 and §9.8): pure, no I/O.

ICAO 9303 Part 11, sections 4.3 (BAC) and 9.8 (secure messaging), whose worked example (Part 11
Appendix D) is the test vector set. 2-key 3DES in CBC mode with a zero IV; MAC is ISO/IEC 9797-1
MAC algorithm 3 (retail MAC) with padding method 2. Both the reader side (:class:`SecureMessaging`
wrap/unwrap) and the chip side (:class:`ChipSecureMessaging`, used by the card emulator) are here
so they are tested against the same vectors.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from ...errors import ProtocolError
from ...lds.mrz import bac_mrz_information
from ...lds.tlv import read_tlv, tlv
from ...protocol.codes import ErrorCode
from .apdu import CommandApdu, ResponseApdu

ZERO_IV = bytes(8)


def _adjust_parity(key: bytes) -> bytes:
    """DES odd parity on every byte (FIPS 46-3; Part 11 §9.7.1)."""
    out = bytearray()
    for byte in key:
        b = byte & 0xFE
        out.append(b | (bin(b).count("1") + 1) % 2)
    return bytes(out)


def kseed_from_mrz(mrz_information: str) -> bytes:
    """Kseed = SHA-1(MRZ information)[0:16] (Part 11 §9.7.2)."""
    return hashlib.sha1(mrz_information.encode("ascii")).digest()[:16]  # noqa: S324 (ICAO)


def derive_key(seed: bytes, counter: int) -> bytes:
    """K = SHA-1(seed || c)[0:16] with parity adjusted; c=1 Kenc, c=2 Kmac (Part 11 §9.7.1)."""
    d = hashlib.sha1(seed + counter.to_bytes(4, "big")).digest()  # noqa: S324 (ICAO)
    return _adjust_parity(d[:16])


def bac_keys(document_number: str, birth: str, expiry: str) -> tuple[bytes, bytes]:
    """(Kenc, Kmac) from the MRZ fields a reader types or reads (see mrz.bac_mrz_information)."""
    seed = kseed_from_mrz(bac_mrz_information(document_number, birth, expiry))
    return derive_key(seed, 1), derive_key(seed, 2)


def _des3(key16: bytes) -> TripleDES:
    return TripleDES(key16 + key16[:8])


def tdes_encrypt(key16: bytes, data: bytes) -> bytes:
    enc = Cipher(_des3(key16), modes.CBC(ZERO_IV)).encryptor()
    return enc.update(data) + enc.finalize()


def tdes_decrypt(key16: bytes, data: bytes) -> bytes:
    if len(data) % 8:
        raise ProtocolError("cryptogram is not a multiple of 8 bytes", device="card")
    dec = Cipher(_des3(key16), modes.CBC(ZERO_IV)).decryptor()
    return dec.update(data) + dec.finalize()


def pad(data: bytes) -> bytes:
    """ISO/IEC 9797-1 padding method 2: 80 then zeros to a multiple of 8."""
    data += b"\x80"
    return data + bytes(-len(data) % 8)


def unpad(data: bytes) -> bytes:
    i = data.rfind(b"\x80")
    if i < 0 or any(data[i + 1 :]) or len(data) - i > 8:
        raise ProtocolError("bad ISO 9797-1 padding", device="card")
    return data[:i]


def retail_mac(key16: bytes, data: bytes) -> bytes:
    """ISO/IEC 9797-1 MAC algorithm 3: single-DES CBC with Ka, then DES-EDE on the last block.
    ``data`` must already be padded."""
    ka, kb = key16[:8], key16[8:16]
    enc = Cipher(TripleDES(ka * 3), modes.CBC(ZERO_IV)).encryptor()  # K1=K2=K3: single DES
    h = (enc.update(data) + enc.finalize())[-8:]
    # One block each: ECB is the definition of MAC algorithm 3's output transformation.
    dec = Cipher(TripleDES(kb * 3), modes.ECB()).decryptor()  # noqa: S305
    h = dec.update(h) + dec.finalize()
    enc2 = Cipher(TripleDES(ka * 3), modes.ECB()).encryptor()  # noqa: S305
    return enc2.update(h) + enc2.finalize()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


@dataclass(frozen=True)
class SessionKeys:
    ks_enc: bytes
    ks_mac: bytes
    ssc: int


def session_keys(k_ifd: bytes, k_ic: bytes, rnd_ic: bytes, rnd_ifd: bytes) -> SessionKeys:
    """KSenc/KSmac from K.IFD xor K.IC; SSC = RND.IC[4:8] || RND.IFD[4:8] (Part 11 §9.7.4)."""
    seed = _xor(k_ifd, k_ic)
    ssc = int.from_bytes(rnd_ic[4:8] + rnd_ifd[4:8], "big")
    return SessionKeys(derive_key(seed, 1), derive_key(seed, 2), ssc)


def ifd_authenticate_data(
    kenc: bytes, kmac: bytes, rnd_ic: bytes, rnd_ifd: bytes, k_ifd: bytes
) -> bytes:
    """EXTERNAL AUTHENTICATE data E.IFD || M.IFD (Part 11 §4.3.3.1 steps 1-3)."""
    e = tdes_encrypt(kenc, rnd_ifd + rnd_ic + k_ifd)
    return e + retail_mac(kmac, pad(e))


def ifd_check_response(
    kenc: bytes, kmac: bytes, resp: bytes, rnd_ic: bytes, rnd_ifd: bytes
) -> bytes:
    """Check the chip's E.IC || M.IC and return K.IC (Part 11 §4.3.3.1 step 4)."""
    if len(resp) != 40:
        raise ProtocolError(
            f"EXTERNAL AUTHENTICATE answer of {len(resp)} bytes, expected 40", device="card"
        )
    e, m = resp[:32], resp[32:]
    if not hmac.compare_digest(retail_mac(kmac, pad(e)), m):
        raise ProtocolError(
            "chip's authentication MAC is wrong",
            device="card",
            code=ErrorCode.BAC_FAILED,
            retryable=False,
        )
    plain = tdes_decrypt(kenc, e)
    if plain[:8] != rnd_ic or plain[8:16] != rnd_ifd:
        raise ProtocolError(
            "chip's authentication nonces do not match",
            device="card",
            code=ErrorCode.BAC_FAILED,
            retryable=False,
        )
    return plain[16:32]


def chip_authenticate(
    kenc: bytes, kmac: bytes, data: bytes, rnd_ic: bytes, k_ic: bytes
) -> tuple[bytes, bytes, bytes]:
    """Chip side of EXTERNAL AUTHENTICATE: check the IFD's cryptogram; return
    (response E.IC || M.IC, RND.IFD, K.IFD). Raises ProtocolError when it does not verify."""
    if len(data) != 40:
        raise ProtocolError("EXTERNAL AUTHENTICATE needs 40 bytes", device="card")
    e, m = data[:32], data[32:]
    if not hmac.compare_digest(retail_mac(kmac, pad(e)), m):
        raise ProtocolError("IFD MAC is wrong", device="card", code=ErrorCode.BAC_FAILED)
    plain = tdes_decrypt(kenc, e)
    rnd_ifd, rnd_ic_echo, k_ifd = plain[:8], plain[8:16], plain[16:32]
    if rnd_ic_echo != rnd_ic:
        raise ProtocolError(
            "IFD echoed a wrong challenge", device="card", code=ErrorCode.BAC_FAILED
        )
    e_ic = tdes_encrypt(kenc, rnd_ic + rnd_ifd + k_ic)
    return e_ic + retail_mac(kmac, pad(e_ic)), rnd_ifd, k_ifd


def _do97(ne: int) -> bytes:
    # Le as 1 byte when short, 2 bytes when extended (Part 11 §9.8.4); 256 -> 00, 65536 -> 0000.
    if ne <= 256:
        return tlv(0x97, bytes([ne & 0xFF]))
    return tlv(0x97, (ne & 0xFFFF).to_bytes(2, "big"))


def _split_protected(
    raw: bytes, second_tag: int
) -> tuple[bytes | None, bytes | None, bytes | None, bytes]:
    """Split a protected body into DO87 (data), the second object (DO97 Le in a command, DO99
    status in a response), DO8E (MAC), and the bytes the MAC covers (Part 11 §9.8.6-9.8.7)."""
    pos = 0
    do87 = second = mac = None
    mac_input = b""
    while pos < len(raw):
        start = pos
        tag, value, pos = read_tlv(raw, pos)
        if tag == 0x87:
            do87 = value
            mac_input += raw[start:pos]
        elif tag == second_tag:
            second = value
            mac_input += raw[start:pos]
        elif tag == 0x8E:
            mac = value
        else:
            raise ProtocolError(
                f"unexpected SM object {tag:X}", device="card", code=ErrorCode.SM_ERROR
            )
    return do87, second, mac, mac_input


class SecureMessaging:
    """Reader side: protect command APDUs and verify/decrypt responses (Part 11 §9.8)."""

    def __init__(self, keys: SessionKeys) -> None:
        self.ks_enc = keys.ks_enc
        self.ks_mac = keys.ks_mac
        self.ssc = keys.ssc

    def _next_ssc(self) -> bytes:
        self.ssc = (self.ssc + 1) & 0xFFFFFFFFFFFFFFFF
        return self.ssc.to_bytes(8, "big")

    def wrap(self, cmd: CommandApdu) -> CommandApdu:
        cla = cmd.cla | 0x0C
        header = bytes((cla, cmd.ins, cmd.p1, cmd.p2))
        do87 = b""
        if cmd.data:
            # INS with an odd number would use DO85; the eMRTD set (A4/B0/D6/DA/E0) is even.
            do87 = tlv(0x87, b"\x01" + tdes_encrypt(self.ks_enc, pad(cmd.data)))
        do97 = _do97(cmd.ne) if cmd.ne is not None else b""
        n = pad(self._next_ssc() + pad(header) + do87 + do97)
        do8e = tlv(0x8E, retail_mac(self.ks_mac, n))
        body = do87 + do97 + do8e
        ext = len(body) > 255 or cmd.needs_extended()
        # Protected Le: 00 (short) / 0000 (extended) = "up to the maximum" (Part 11 §9.8.4).
        return CommandApdu(
            cla, cmd.ins, cmd.p1, cmd.p2, body, ne=65536 if ext else 256, extended=ext
        )

    def unwrap(self, resp: ResponseApdu) -> ResponseApdu:
        """Verify DO8E over DO87/DO99, decrypt DO87; return the plain response."""
        if resp.sw != 0x9000 and not resp.data:
            # A chip that rejects SM itself answers a plain status (e.g. 6988); no MAC to check.
            raise ProtocolError(
                f"chip refused a protected APDU with {resp.sw:04X}",
                device="card",
                code=ErrorCode.SM_ERROR,
                details={"sw": resp.sw},
            )
        ssc = self._next_ssc()
        do87, do99, mac, mac_input = _split_protected(resp.data, 0x99)
        if mac is None or do99 is None or len(do99) != 2:
            raise ProtocolError(
                "protected response lacks DO99 or DO8E", device="card", code=ErrorCode.SM_ERROR
            )
        if not hmac.compare_digest(retail_mac(self.ks_mac, pad(ssc + mac_input)), mac):
            raise ProtocolError(
                "secure messaging MAC of the response is wrong",
                device="card",
                code=ErrorCode.SM_ERROR,
            )
        data = b""
        if do87 is not None:
            if not do87 or do87[0] != 0x01:
                raise ProtocolError(
                    "DO87 padding indicator is not 01", device="card", code=ErrorCode.SM_ERROR
                )
            data = unpad(tdes_decrypt(self.ks_enc, do87[1:]))
        return ResponseApdu(data, int.from_bytes(do99, "big"))


class ChipSecureMessaging:
    """Chip side (for the emulator): verify/decrypt protected commands, protect responses."""

    def __init__(self, keys: SessionKeys) -> None:
        self.ks_enc = keys.ks_enc
        self.ks_mac = keys.ks_mac
        self.ssc = keys.ssc

    def _next_ssc(self) -> bytes:
        self.ssc = (self.ssc + 1) & 0xFFFFFFFFFFFFFFFF
        return self.ssc.to_bytes(8, "big")

    def unwrap(self, cmd: CommandApdu) -> CommandApdu:
        if cmd.cla & 0x0C != 0x0C:
            raise ProtocolError("command is not protected", device="card", code=ErrorCode.SM_ERROR)
        ssc = self._next_ssc()
        do87, do97, mac, mac_input = _split_protected(cmd.data, 0x97)
        if mac is None:
            raise ProtocolError(
                "protected command lacks DO8E", device="card", code=ErrorCode.SM_ERROR
            )
        n = pad(ssc + pad(cmd.header()) + mac_input)
        if not hmac.compare_digest(retail_mac(self.ks_mac, n), mac):
            raise ProtocolError("command MAC is wrong", device="card", code=ErrorCode.SM_ERROR)
        data = b""
        if do87 is not None:
            if not do87 or do87[0] != 0x01:
                raise ProtocolError(
                    "DO87 padding indicator is not 01", device="card", code=ErrorCode.SM_ERROR
                )
            data = unpad(tdes_decrypt(self.ks_enc, do87[1:]))
        ne: int | None = None
        if do97 is not None:
            v = int.from_bytes(do97, "big") if do97 else 0
            ne = v or (256 if len(do97) <= 1 else 65536)
        return CommandApdu(cmd.cla & ~0x0C & 0xFF, cmd.ins, cmd.p1, cmd.p2, data, ne=ne)

    def wrap(self, resp: ResponseApdu) -> ResponseApdu:
        do87 = b""
        if resp.data:
            do87 = tlv(0x87, b"\x01" + tdes_encrypt(self.ks_enc, pad(resp.data)))
        do99 = tlv(0x99, resp.sw.to_bytes(2, "big"))
        mac = retail_mac(self.ks_mac, pad(self._next_ssc() + do87 + do99))
        return ResponseApdu(do87 + do99 + tlv(0x8E, mac), resp.sw)
