"""PC/SC link on pyscard's ``smartcard.scard`` layer: contexts, readers, connect, transmit.

Converts every PC/SC return code into the appliance error tree at this boundary and handles
the T=0 transport quirks of ISO/IEC 7816-4 §5.3.4 (``61xx``: GET RESPONSE for the rest;
``6Cxx``: resend with the exact Le). Nothing above this module sees a pyscard type.

A PC/SC context belongs to one thread (pcsc-lite's rule): the monitor and each operation open
their own :class:`PcscLink`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from smartcard import scard

from ...errors import DeviceDisconnected, DeviceError, DeviceTimeout, ProtocolError
from ...protocol.codes import ErrorCode
from .apdu import CommandApdu, ResponseApdu

log = logging.getLogger(__name__)

_U32 = 0xFFFFFFFF
_DISCONNECTED = {
    scard.SCARD_E_NO_SERVICE,
    scard.SCARD_E_SERVICE_STOPPED,
    scard.SCARD_E_NO_READERS_AVAILABLE,
    scard.SCARD_E_READER_UNAVAILABLE,
    scard.SCARD_E_UNKNOWN_READER,
    scard.SCARD_E_NO_SMARTCARD,
    scard.SCARD_W_REMOVED_CARD,
    scard.SCARD_W_RESET_CARD,
}
_CARD_GONE = {scard.SCARD_E_NO_SMARTCARD, scard.SCARD_W_REMOVED_CARD, scard.SCARD_W_RESET_CARD}
_DISCONNECTED_U = {c & _U32 for c in _DISCONNECTED}
_CARD_GONE_U = {c & _U32 for c in _CARD_GONE}


def _message(hresult: int) -> str:
    try:
        return str(scard.SCardGetErrorMessage(hresult))
    except Exception:  # pragma: no cover - pyscard returns text for every code
        return f"0x{hresult & _U32:08X}"


def check(hresult: int, what: str) -> None:
    """Raise the appliance error matching a PC/SC return code (no-op on success)."""
    if hresult == scard.SCARD_S_SUCCESS:
        return
    code = hresult & _U32
    text = f"{what}: {_message(hresult)} (0x{code:08X})"
    details = {"pcsc_code": f"0x{code:08X}", "operation": what}
    if code in _CARD_GONE_U:
        raise DeviceDisconnected(text, device="card", code=ErrorCode.CARD_REMOVED, details=details)
    if code in _DISCONNECTED_U:
        raise DeviceDisconnected(text, device="card", details=details)
    if code == scard.SCARD_E_TIMEOUT & _U32:
        raise DeviceTimeout(text, device="card", details=details)
    if code in {
        scard.SCARD_E_COMM_DATA_LOST & _U32,
        scard.SCARD_F_COMM_ERROR & _U32,
        scard.SCARD_E_NOT_TRANSACTED & _U32,
        scard.SCARD_W_UNRESPONSIVE_CARD & _U32,
    }:
        # vpcd/pcscd report a card that went away mid-APDU as a transaction failure.
        raise DeviceDisconnected(text, device="card", code=ErrorCode.CARD_REMOVED, details=details)
    raise DeviceError(text, device="card", details=details)


class PcscLink:
    """One PC/SC context and at most one card connection."""

    def __init__(self) -> None:
        self._ctx: Any = None
        self._card: Any = None
        self._proto: int = 0
        self.atr: bytes = b""
        self.reader: str = ""
        self.apdu_count = 0

    # -- context and readers -----------------------------------------------------------------

    def establish(self) -> None:
        if self._ctx is not None:
            return
        hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        check(hr, "SCardEstablishContext")
        self._ctx = ctx

    def readers(self) -> list[str]:
        self.establish()
        hr, names = scard.SCardListReaders(self._ctx, [])
        if hr & _U32 == scard.SCARD_E_NO_READERS_AVAILABLE & _U32:
            return []
        check(hr, "SCardListReaders")
        return [str(n) for n in names]

    def find_reader(self, substring: str) -> str:
        """The first reader whose name contains ``substring`` (any reader when empty)."""
        names = self.readers()
        for n in names:
            if substring in n:
                return n
        raise DeviceDisconnected(
            f"no PC/SC reader matching {substring!r} (readers: {names})",
            device="card",
            code=ErrorCode.READER_ABSENT,
            details={"readers": names, "wanted": substring},
        )

    def card_state(
        self, reader: str, timeout_ms: int = 0, known: int = scard.SCARD_STATE_UNAWARE
    ) -> tuple[int, bytes]:
        """(event state, ATR) of ``reader``; waits up to ``timeout_ms`` for a change from
        ``known``. Raises DeviceTimeout when nothing changed."""
        self.establish()
        hr, states = scard.SCardGetStatusChange(self._ctx, timeout_ms, [(reader, known)])
        check(hr, "SCardGetStatusChange")
        _name, state, atr = states[0]
        return int(state), bytes(atr)

    def wait_for_card(self, reader: str, timeout_s: float) -> bytes:
        """Block until a card is present in ``reader`` (no sleeping); return its ATR."""
        deadline = time.monotonic() + timeout_s
        known = scard.SCARD_STATE_UNAWARE
        while True:
            remaining = int(max(0.0, deadline - time.monotonic()) * 1000)
            try:
                state, atr = self.card_state(reader, remaining, known)
            except DeviceTimeout:
                raise DeviceTimeout(
                    f"no card in {reader!r} within {timeout_s} s",
                    device="card",
                    code=ErrorCode.NO_CARD,
                ) from None
            if state & scard.SCARD_STATE_PRESENT and not state & scard.SCARD_STATE_MUTE:
                return atr
            if remaining <= 0:
                raise DeviceTimeout(f"no card in {reader!r}", device="card", code=ErrorCode.NO_CARD)
            known = state & ~scard.SCARD_STATE_CHANGED

    def cancel(self) -> None:
        """Wake a blocked SCardGetStatusChange (from another thread)."""
        if self._ctx is not None:
            scard.SCardCancel(self._ctx)

    # -- card ------------------------------------------------------------------------------

    def connect(self, reader: str) -> bytes:
        """Connect with T=0 or T=1 (whichever the card offers); return the ATR."""
        self.establish()
        hr, card, proto = scard.SCardConnect(
            self._ctx,
            reader,
            scard.SCARD_SHARE_EXCLUSIVE,
            scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1,
        )
        if hr & _U32 == scard.SCARD_E_NO_SMARTCARD & _U32:
            raise DeviceDisconnected(
                f"no card in {reader!r}", device="card", code=ErrorCode.NO_CARD
            )
        check(hr, "SCardConnect")
        self._card, self._proto, self.reader = card, int(proto), reader
        hr, _r, _s, _p, atr = scard.SCardStatus(card)
        check(hr, "SCardStatus")
        self.atr = bytes(atr)
        log.info(
            "card connected in %s, protocol %s, ATR %s", reader, self.protocol_name, self.atr.hex()
        )
        return self.atr

    @property
    def protocol_name(self) -> str:
        return {scard.SCARD_PROTOCOL_T0: "T=0", scard.SCARD_PROTOCOL_T1: "T=1"}.get(
            self._proto, str(self._proto)
        )

    def transmit_raw(self, raw: bytes) -> bytes:
        if self._card is None:
            raise DeviceDisconnected(
                "not connected to a card", device="card", code=ErrorCode.NO_CARD
            )
        pci = scard.SCARD_PCI_T0 if self._proto == scard.SCARD_PROTOCOL_T0 else scard.SCARD_PCI_T1
        hr, resp = scard.SCardTransmit(self._card, pci, list(raw))
        self.apdu_count += 1
        check(hr, "SCardTransmit")
        if len(resp) < 2:
            # vpcd answers "success, 0 bytes" for the APDU during which the card went away; a
            # real reader never returns a response without a status word either.
            raise DeviceDisconnected(
                "card returned no status word (removed or mute)",
                device="card",
                code=ErrorCode.CARD_MUTE,
            )
        return bytes(resp)

    def transmit(self, cmd: CommandApdu) -> ResponseApdu:
        """Send one command; follow ``61xx`` with GET RESPONSE and ``6Cxx`` with the right Le."""
        raw = cmd.encode()
        resp = ResponseApdu.decode(self.transmit_raw(raw))
        if resp.sw >> 8 == 0x6C and cmd.ne is not None:
            # 7816-4 §5.3.4: wrong Le; SW2 gives the exact length. Resend once.
            fixed = CommandApdu(
                cmd.cla, cmd.ins, cmd.p1, cmd.p2, cmd.data, ne=(resp.sw & 0xFF) or 256
            )
            resp = ResponseApdu.decode(self.transmit_raw(fixed.encode()))
        data = resp.data
        guard = 0
        while resp.sw >> 8 == 0x61:
            guard += 1
            if guard > 256:
                raise ProtocolError("endless 61xx chain", device="card")
            get = CommandApdu(cmd.cla & 0x03, 0xC0, 0, 0, ne=(resp.sw & 0xFF) or 256)
            resp = ResponseApdu.decode(self.transmit_raw(get.encode()))
            data += resp.data
        return ResponseApdu(data, resp.sw)

    def disconnect(self, disposition: int = scard.SCARD_LEAVE_CARD) -> None:
        card, self._card = self._card, None
        if card is not None:
            scard.SCardDisconnect(card, disposition)

    def close(self) -> None:
        """Disconnect and release the context. Idempotent; never raises."""
        with contextlib.suppress(Exception):  # best effort on the way out
            self.disconnect()
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            scard.SCardReleaseContext(ctx)
