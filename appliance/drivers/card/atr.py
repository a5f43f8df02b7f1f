"""Answer-to-reset: the historical bytes and what they say about the card (pure, no I/O).

ISO/IEC 7816-3 §8.2 gives the ATR's layout (TS, T0, interface bytes TAi/TBi/TCi/TDi, K
historical bytes, TCK when a protocol other than T=0 is offered); ISO/IEC 7816-4 §8.1.1 the
historical bytes: a category indicator, then COMPACT-TLV data objects (tag in the high nibble,
length in the low one). The "card capabilities" object (tag 7) carries in its third byte the
"third software function table", whose bit b7 says the card takes extended Lc and Le fields
(7816-4 §8.1.1.2.7, table 87 of the 2005 edition). A card whose ATR says nothing leaves the
question to a probe (:meth:`appliance.drivers.card.device.EmrtdCard.negotiate_length`).
"""

from __future__ import annotations

from dataclasses import dataclass

EXTENDED_LC_LE = 0x40  # third software function table, b7


@dataclass(frozen=True)
class AtrInfo:
    historical: bytes
    protocols: tuple[int, ...]  # T=... offered in TD1, TD2, ... (T=0 when none)
    extended_length: bool | None  # None: the ATR does not say


def _historical(atr: bytes) -> tuple[bytes, tuple[int, ...]]:
    if len(atr) < 2:
        raise ValueError("an ATR has at least TS and T0")
    t0 = atr[1]
    k = t0 & 0x0F
    y = t0 >> 4
    i = 2
    protocols: list[int] = []
    while True:
        i += bin(y & 0x7).count("1")  # TA, TB, TC present
        if not y & 0x8:  # no TD: the interface bytes end here
            break
        if i >= len(atr):
            raise ValueError("ATR ends inside its interface bytes")
        td = atr[i]
        i += 1
        protocols.append(td & 0x0F)
        y = td >> 4
    if i + k > len(atr):
        raise ValueError("ATR is shorter than its historical bytes")
    return atr[i : i + k], tuple(protocols) or (0,)


def _compact_tlv(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    i = 0
    while i < len(data):
        tag, length = data[i] >> 4, data[i] & 0x0F
        value = data[i + 1 : i + 1 + length]
        if len(value) != length:
            break  # truncated object: ignore the rest rather than guess
        out.setdefault(tag, value)
        i += 1 + length
    return out


def parse_atr(atr: bytes) -> AtrInfo:
    """Historical bytes, offered protocols and the extended-length capability of an ATR.
    Raises ValueError for an ATR too short for what its T0/TDi announce."""
    hist, protocols = _historical(atr)
    extended: bool | None = None
    if hist and hist[0] in (0x00, 0x80):
        # 0x00: COMPACT-TLV objects then a 3-byte status indicator; 0x80: objects only.
        objects = _compact_tlv(hist[1:-3] if hist[0] == 0x00 else hist[1:])
        caps = objects.get(0x7)
        if caps is not None and len(caps) >= 3:
            extended = bool(caps[2] & EXTENDED_LC_LE)
    return AtrInfo(hist, protocols, extended)


def atr_says_extended(atr: bytes) -> bool | None:
    """True/False when the ATR's card capabilities say whether the card takes extended-length
    APDUs; None when it does not say (or cannot be parsed)."""
    try:
        return parse_atr(atr).extended_length
    except ValueError:
        return None
