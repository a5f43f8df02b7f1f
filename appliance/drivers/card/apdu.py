"""APDU codec (ISO/IEC 7816-3 §12.1 and 7816-4 §5.1): pure functions, no I/O.

Command cases 1-4, short and extended length. ``ne`` is the number of expected response bytes
(``None`` = no Le field); short Le ``00`` means 256, extended Le ``0000`` means 65536.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import DeviceStatusError, ProtocolError

MAX_SHORT_LC = 255
MAX_SHORT_NE = 256
MAX_EXT_LC = 65535
MAX_EXT_NE = 65536

# ISO/IEC 7816-4 §5.6 status words used by the eMRTD applet.
SW_OK = 0x9000
SW_MEMORY_FAILURE = 0x6581
SW_WRONG_LENGTH = 0x6700
SW_SM_OBJECTS_INCORRECT = 0x6988
SW_SECURITY_STATUS = 0x6982
SW_CONDITIONS = 0x6985
SW_WRONG_DATA = 0x6A80
SW_FILE_NOT_FOUND = 0x6A82
SW_NOT_ENOUGH_MEMORY = 0x6A84
SW_WRONG_P1P2 = 0x6B00
SW_INS_NOT_SUPPORTED = 0x6D00
SW_CLA_NOT_SUPPORTED = 0x6E00
SW_UNKNOWN = 0x6F00
SW_AUTH_FAILED = 0x6300
SW_FILE_EXISTS = 0x6A89
SW_OFFSET_OUTSIDE = 0x6B00

SW_TEXT: dict[int, str] = {
    SW_OK: "success",
    SW_MEMORY_FAILURE: "memory failure (write failed)",
    SW_WRONG_LENGTH: "wrong length",
    SW_SM_OBJECTS_INCORRECT: "secure messaging data objects incorrect",
    SW_SECURITY_STATUS: "security status not satisfied",
    SW_CONDITIONS: "conditions of use not satisfied",
    SW_WRONG_DATA: "incorrect parameters in the data field",
    SW_FILE_NOT_FOUND: "file or application not found",
    SW_NOT_ENOUGH_MEMORY: "not enough memory space in the file",
    SW_WRONG_P1P2: "wrong parameters P1-P2 (offset outside the file)",
    SW_INS_NOT_SUPPORTED: "instruction not supported",
    SW_CLA_NOT_SUPPORTED: "class not supported",
    SW_UNKNOWN: "no precise diagnosis",
    SW_AUTH_FAILED: "authentication failed",
    SW_FILE_EXISTS: "file already exists",
}


def sw_text(sw: int) -> str:
    if sw in SW_TEXT:
        return SW_TEXT[sw]
    if sw >> 8 == 0x61:
        return f"{sw & 0xFF} more bytes available"
    if sw >> 8 == 0x6C:
        return f"wrong Le, exact length is {sw & 0xFF}"
    return "unknown status"


@dataclass(frozen=True)
class CommandApdu:
    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    ne: int | None = None
    extended: bool = False  # force extended length even when short would do

    def needs_extended(self) -> bool:
        return (
            self.extended
            or len(self.data) > MAX_SHORT_LC
            or (self.ne is not None and self.ne > MAX_SHORT_NE)
        )

    def encode(self) -> bytes:
        """Bytes of the APDU, extended length only when needed (or forced)."""
        for name, v in (("CLA", self.cla), ("INS", self.ins), ("P1", self.p1), ("P2", self.p2)):
            if not 0 <= v <= 0xFF:
                raise ValueError(f"{name} {v} is not a byte")
        if len(self.data) > MAX_EXT_LC:
            raise ValueError(f"command data of {len(self.data)} bytes exceeds 65535")
        if self.ne is not None and not 1 <= self.ne <= MAX_EXT_NE:
            raise ValueError(f"Ne {self.ne} out of range 1..65536")
        out = bytearray((self.cla, self.ins, self.p1, self.p2))
        ext = self.needs_extended()
        if self.data:
            if ext:
                out += b"\x00" + len(self.data).to_bytes(2, "big")
            else:
                out.append(len(self.data))
            out += self.data
        if self.ne is not None:
            if ext:
                le = 0 if self.ne == MAX_EXT_NE else self.ne
                out += (b"\x00" if not self.data else b"") + le.to_bytes(2, "big")
            else:
                out.append(0 if self.ne == MAX_SHORT_NE else self.ne)
        return bytes(out)

    def header(self) -> bytes:
        return bytes((self.cla, self.ins, self.p1, self.p2))


def decode_command(raw: bytes) -> CommandApdu:
    """Parse a command APDU (ISO/IEC 7816-3 §12.1.3); malformed ones raise ProtocolError."""
    if len(raw) < 4:
        raise ProtocolError(f"APDU of {len(raw)} bytes is shorter than a header", device="card")
    cla, ins, p1, p2 = raw[0], raw[1], raw[2], raw[3]
    body = raw[4:]
    n = len(body)
    if n == 0:  # case 1
        return CommandApdu(cla, ins, p1, p2)
    if n == 1:  # case 2S
        return CommandApdu(cla, ins, p1, p2, ne=body[0] or 256)
    if body[0] != 0:  # short cases 3S, 4S
        lc = body[0]
        if n == 1 + lc:
            return CommandApdu(cla, ins, p1, p2, body[1:])
        if n == 2 + lc:
            return CommandApdu(cla, ins, p1, p2, body[1 : 1 + lc], ne=body[-1] or 256)
        raise ProtocolError("short APDU: Lc does not match the body length", device="card")
    # extended: body[0] == 0
    if n == 3:  # case 2E
        le = int.from_bytes(body[1:3], "big")
        return CommandApdu(cla, ins, p1, p2, ne=le or 65536, extended=True)
    if n < 3:
        raise ProtocolError("truncated extended-length APDU", device="card")
    lc = int.from_bytes(body[1:3], "big")
    if lc == 0:
        raise ProtocolError("extended Lc of 0", device="card")
    if n == 3 + lc:
        return CommandApdu(cla, ins, p1, p2, body[3:], extended=True)
    if n == 5 + lc:
        le = int.from_bytes(body[-2:], "big")
        return CommandApdu(cla, ins, p1, p2, body[3 : 3 + lc], ne=le or 65536, extended=True)
    raise ProtocolError("extended APDU: Lc does not match the body length", device="card")


@dataclass(frozen=True)
class ResponseApdu:
    data: bytes
    sw: int

    @classmethod
    def decode(cls, raw: bytes) -> ResponseApdu:
        if len(raw) < 2:
            raise ProtocolError(f"response of {len(raw)} bytes has no status word", device="card")
        return cls(bytes(raw[:-2]), int.from_bytes(raw[-2:], "big"))

    def encode(self) -> bytes:
        return self.data + self.sw.to_bytes(2, "big")

    @property
    def ok(self) -> bool:
        return self.sw == SW_OK

    def check(self, what: str) -> ResponseApdu:
        """Return self on 9000; raise DeviceStatusError naming the command otherwise."""
        if self.sw != SW_OK:
            raise DeviceStatusError(
                f"{what}: card answered {self.sw:04X} ({sw_text(self.sw)})",
                device="card",
                status=self.sw,
                retryable=False,
                details={"command": what, "sw": f"{self.sw:04X}"},
            )
        return self
