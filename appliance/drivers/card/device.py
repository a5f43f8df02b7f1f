"""eMRTD applet commands, typed and named as in the spec/ISO 7816-4, plus the two procedures
built on them: personalisation (write, lock) and read-back (BAC, read, compare).

Nothing here sees PC/SC: a :class:`Transport` carries :class:`CommandApdu` objects (the PC/SC
link in production, the emulator's applet in unit tests).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ...errors import (
    ApplianceError,
    CommandTimeout,
    DeviceDisconnected,
    DeviceError,
    DeviceStatusError,
    ProtocolError,
)
from ...lds.files import FILE_FIDS
from ...lds.tlv import header_size, tlv
from ...protocol.codes import ErrorCode
from .apdu import CommandApdu, ResponseApdu
from .profile import CardProfile

if TYPE_CHECKING:  # 3DES (cryptography) loads with the first BAC, not at start
    from .sm import SecureMessaging

log = logging.getLogger(__name__)


class Transport(Protocol):
    def transmit(self, cmd: CommandApdu) -> ResponseApdu: ...


class EmrtdCard:
    """The applet's commands (ISO/IEC 7816-4; ICAO 9303 Part 10/11). ``extended`` allows
    extended-length APDUs (the card profile AND the reader must allow them)."""

    def __init__(self, transport: Transport, profile: CardProfile, *, extended: bool) -> None:
        self.transport = transport
        self.profile = profile
        self.extended = extended and profile.extended_length
        # Why this session uses the APDU length it uses (set by negotiate_length).
        self.length_reason = "allowed" if self.extended else "not allowed by reader or profile"
        self.sm: SecureMessaging | None = None
        self.apdus = 0

    def _send(self, cmd: CommandApdu, what: str) -> ResponseApdu:
        self.apdus += 1
        if self.sm is None:
            return self.transport.transmit(cmd).check(what)
        resp = self.transport.transmit(self.sm.wrap(cmd))
        return self.sm.unwrap(resp).check(what)

    # -- ISO/IEC 7816-4 and applet commands ----------------------------------------------------

    def select_application(self) -> None:
        """SELECT by DF name ``00 A4 04 0C <AID>``: ends any secure messaging session."""
        self.sm = None
        self._send(
            CommandApdu(0x00, 0xA4, 0x04, 0x0C, self.profile.aid_bytes), "SELECT application"
        )

    def select_file(self, fid: int) -> None:
        """SELECT EF ``00 A4 02 0C 02 <FID>``."""
        self._send(CommandApdu(0x00, 0xA4, 0x02, 0x0C, fid.to_bytes(2, "big")), f"SELECT {fid:04X}")

    def read_binary(self, offset: int, length: int) -> bytes:
        """READ BINARY ``00 B0 <offset> Le``."""
        if not 0 <= offset <= 0x7FFF:
            raise ValueError(f"offset {offset} out of range for READ BINARY")
        resp = self._send(
            CommandApdu(0x00, 0xB0, offset >> 8, offset & 0xFF, ne=length), "READ BINARY"
        )
        return resp.data

    def update_binary(self, offset: int, data: bytes) -> None:
        """UPDATE BINARY ``00 D6 <offset> Lc <data>``."""
        if not 0 <= offset <= 0x7FFF:
            raise ValueError(f"offset {offset} out of range for UPDATE BINARY")
        self._send(CommandApdu(0x00, 0xD6, offset >> 8, offset & 0xFF, data), "UPDATE BINARY")

    def create_file(self, fid: int, size: int) -> None:
        """CREATE FILE ``00 E0 00 00 06 63 04 <size> <FID>``."""
        body = b"\x63\x04" + size.to_bytes(2, "big") + fid.to_bytes(2, "big")
        self._send(CommandApdu(0x00, 0xE0, 0x00, 0x00, body), f"CREATE FILE {fid:04X}")

    def put_data_bac_seed(self, document_number: str, birth: str, expiry: str) -> None:
        """PUT DATA ``00 DA 00 62 <62 {04 docNo}{04 birth}{04 expiry}>``.

        The applet derives its BAC keys from these bytes as they come (check digits computed
        over them), so the document number goes as the MRZ prints it: padded with ``<`` to 9
        characters when shorter (ICAO 9303-11 §9.7.1, Appendix D), which is what every ICAO
        reader feeds its own key derivation with."""
        from ...lds.mrz import bac_document_number
        from .sm import bac_keys

        bac_keys(document_number, birth, expiry)  # validates before sending
        p1, p2 = self.profile.p1p2("put_data_bac_seed")
        seed = tlv(
            0x62,
            tlv(0x04, bac_document_number(document_number).encode("ascii"))
            + tlv(0x04, birth.encode("ascii"))
            + tlv(0x04, expiry.encode("ascii")),
        )
        self._send(CommandApdu(0x00, 0xDA, p1, p2, seed), "PUT DATA (BAC seed)")

    def lock(self) -> None:
        """PUT DATA ``00 DA DE AD`` without data: the applet refuses writes from now on."""
        p1, p2 = self.profile.p1p2("lock_p1p2")
        self._send(CommandApdu(0x00, 0xDA, p1, p2), "PUT DATA (lock)")

    def get_challenge(self) -> bytes:
        """GET CHALLENGE ``00 84 00 00 08``."""
        data = self._send(
            CommandApdu(0x00, 0x84, 0x00, 0x00, ne=self.profile.challenge_length), "GET CHALLENGE"
        ).data
        if len(data) != 8:
            raise ProtocolError(f"GET CHALLENGE returned {len(data)} bytes", device="card")
        return data

    def external_authenticate(self, data: bytes) -> bytes:
        """EXTERNAL AUTHENTICATE ``00 82 00 00 28 <E.IFD||M.IFD> 28``."""
        return self._send(
            CommandApdu(0x00, 0x82, 0x00, 0x00, data, ne=0x28), "EXTERNAL AUTHENTICATE"
        ).data

    # -- procedures -----------------------------------------------------------------------------

    def negotiate_length(self, atr: bytes = b"") -> bool:
        """Settle, before the first write, whether this session may use extended-length APDUs.

        They are used only when the reader and the profile allow them (``extended`` at
        construction), the card's ATR does not deny them (card capabilities, ISO/IEC 7816-4
        §8.1.1.2.7; :mod:`.atr`), and a probe gets through end to end: SELECT of the
        application sent as an extended-length APDU (case 3E, ISO/IEC 7816-3 §12.1.3), which a
        reader without them refuses to carry and a card without them answers 6700. SELECT
        changes nothing on the card, so a refusal costs one APDU and no write. Otherwise every
        write goes in short APDUs at successive offsets (UPDATE BINARY <= 255 bytes)."""
        from .atr import atr_says_extended

        if not self.extended:
            return False
        if atr_says_extended(atr) is False:
            self.extended = False
            self.length_reason = "card ATR: no extended Lc/Le"
            log.info("extended-length APDUs off: the card's ATR says it does not take them")
            return False
        probe = CommandApdu(0x00, 0xA4, 0x04, 0x0C, self.profile.aid_bytes, extended=True)
        self.sm = None
        try:
            self._send(probe, "SELECT application (extended-length probe)")
        except DeviceStatusError as exc:
            self.extended = False
            self.length_reason = f"probe answered {exc.status:04X}"
        except DeviceDisconnected:
            raise  # the card left: not a capability question
        except DeviceError as exc:
            # pcscd/the reader refused to carry the APDU (e.g. SCARD_E_NOT_TRANSACTED).
            self.extended = False
            self.length_reason = f"probe not carried: {exc.code}"
        else:
            self.length_reason = "probe passed"
        log.info(
            "extended-length APDUs %s (%s)", "on" if self.extended else "off", self.length_reason
        )
        return self.extended

    def basic_access_control(self, document_number: str, birth: str, expiry: str) -> None:
        """BAC mutual authentication (Part 11 §4.3); secure messaging from here on."""
        from .sm import (
            SecureMessaging,
            bac_keys,
            ifd_authenticate_data,
            ifd_check_response,
            session_keys,
        )

        kenc, kmac = bac_keys(document_number, birth, expiry)
        self.sm = None
        rnd_ic = self.get_challenge()
        rnd_ifd, k_ifd = secrets.token_bytes(8), secrets.token_bytes(16)
        try:
            resp = self.external_authenticate(
                ifd_authenticate_data(kenc, kmac, rnd_ic, rnd_ifd, k_ifd)
            )
        except DeviceStatusError as exc:
            # Only the card's refusal (a status word) means wrong keys; a card that left the
            # reader mid-BAC stays card_removed / card_mute (found by the card pull bench).
            raise DeviceError(
                "BAC refused: the MRZ keys do not match this card",
                device="card",
                code=ErrorCode.BAC_FAILED,
                retryable=False,
                details={"cause": exc.code},
            ) from exc
        k_ic = ifd_check_response(kenc, kmac, resp, rnd_ic, rnd_ifd)
        self.sm = SecureMessaging(session_keys(k_ifd, k_ic, rnd_ic, rnd_ifd))

    def read_chunk_limit(self) -> int:
        if self.extended and self.profile.max_read_extended > 256:
            return self.profile.max_read_extended
        return self.profile.max_read_short

    def read_file(self, fid: int, check: Callable[[], None] | None = None) -> bytes:
        """SELECT then READ BINARY until the file's TLV length is covered."""
        self.select_file(fid)
        first = self.read_binary(0, min(8, self.profile.max_read_short))
        try:
            hdr, length = header_size(first)
        except ProtocolError as exc:
            raise ProtocolError(
                f"file {fid:04X} does not start with a TLV header",
                device="card",
                code=ErrorCode.LDS_MALFORMED,
            ) from exc
        total = hdr + length
        data = bytearray(first[:total])
        chunk = self.read_chunk_limit()
        while len(data) < total:
            if check is not None:
                check()
            part = self.read_binary(len(data), min(chunk, total - len(data)))
            if not part:
                raise ProtocolError(f"READ BINARY of {fid:04X} returned no data", device="card")
            data += part
        return bytes(data[:total])

    def write_chunk_limit(self) -> int:
        if self.extended and self.profile.max_update_extended > 255:
            return self.profile.max_update_extended
        return self.profile.max_update_short

    def write_file(self, fid: int, data: bytes, check: Callable[[], None] | None = None) -> None:
        """CREATE FILE of the exact size, SELECT it, UPDATE BINARY chunk by chunk."""
        self.create_file(fid, len(data))
        self.select_file(fid)
        chunk = self.write_chunk_limit()
        for off in range(0, len(data), chunk):
            if check is not None:
                check()
            self.update_binary(off, data[off : off + chunk])


@dataclass
class StepError(Exception):
    """A failure during personalisation, with the step it happened in."""

    step: str
    cause: ApplianceError
    wrote: bool = False  # whether any write reached the card before the failure

    def __str__(self) -> str:
        return f"{self.step}: {self.cause.message}"


@dataclass
class WriteReport:
    apdus: int = 0
    steps: list[str] = field(default_factory=list)


def personalise(
    card: EmrtdCard,
    files: dict[str, bytes],
    bac: tuple[str, str, str],
    *,
    progress: Callable[[str], None] | None = None,
    cancelled: threading.Event | None = None,
) -> WriteReport:
    """Write every file (EF.SOD last), the BAC seed, then lock. Raises :class:`StepError`."""
    report = WriteReport()
    wrote = False

    def check() -> None:
        if cancelled is not None and cancelled.is_set():
            raise CommandTimeout("command deadline passed during the write")

    def step(name: str, fn: Callable[[], None], writes: bool) -> None:
        nonlocal wrote
        report.steps.append(name)
        if progress is not None:
            progress(name)
        try:
            check()
            fn()
        except ApplianceError as exc:
            raise StepError(name, exc, wrote or writes) from exc
        wrote = wrote or writes

    step("select_application", card.select_application, False)
    order = [n for n in card.profile.files if n in files]
    unknown = set(files) - set(order)
    if unknown:
        raise StepError(
            "plan",
            DeviceError(
                f"card profile cannot hold {sorted(unknown)}",
                device="card",
                code=ErrorCode.PROFILE_MISMATCH,
            ),
            False,
        )
    for name in order:

        def write(fid: int = FILE_FIDS[name], data: bytes = files[name]) -> None:
            card.write_file(fid, data, check)

        step(f"write:{name}", write, True)
    step("put_data:bac_seed", lambda: card.put_data_bac_seed(*bac), True)
    step("lock", card.lock, True)
    report.apdus = card.apdus
    return report


def read_back(
    card: EmrtdCard,
    names: list[str],
    bac: tuple[str, str, str],
    check: Callable[[], None] | None = None,
) -> dict[str, bytes]:
    """Select the applet, run BAC with ``bac`` and read ``names`` under secure messaging."""
    card.select_application()
    card.basic_access_control(*bac)
    out: dict[str, bytes] = {}
    for name in names:
        out[name] = card.read_file(FILE_FIDS[name], check)
    return out
