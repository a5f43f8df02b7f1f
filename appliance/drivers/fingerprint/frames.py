"""Pure packet codec of the ZhianTec serial fingerprint protocol (R305/R307/R503/AS608).

No I/O here: build packets, parse them, split and join data streams, pack and unpack the
4-bit image. Every fact cites the vendors' user manuals (ZhianTec R305/R307/R503/AS608 "User
Manual"; section names in brackets), checked against the public host libraries pyfingerprint
and Adafruit CircuitPython Fingerprint.

Packet layout [Packet]::

    EF 01 | ADDR (4, BE) | PID (1) | LEN (2, BE) | payload | SUM (2, BE)

``LEN`` counts the payload plus the two checksum bytes; ``SUM`` is the 16-bit sum of PID, both
LEN bytes and every payload byte (header and address excluded).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy loads with the first image (pack/unpack), not with the codec
    import numpy as np
    import numpy.typing as npt


HEADER = b"\xef\x01"
DEFAULT_ADDRESS = 0xFFFFFFFF
DEFAULT_PASSWORD = 0x00000000
# Header (2) + address (4) + PID (1) + LEN (2): everything before the payload.
PREFIX_LEN = 9
# An ack carrying only a confirmation code: 9 + 1 + 2 = 12 bytes [Packet].
MIN_PACKET_LEN = 12
# The largest data packet is 256 bytes of payload; commands are far shorter.
MAX_PAYLOAD = 256

# Image buffer geometry [Image upload (UpImage)]: 256 x 288 px, 4 bits per pixel on the wire.
IMAGE_WIDTH = 256
IMAGE_HEIGHT = 288
IMAGE_WIRE_BYTES = IMAGE_WIDTH * IMAGE_HEIGHT // 2  # 36,864
# One UART byte costs 10 bit times (8N1) [Packet].
BITS_PER_UART_BYTE = 10


class PID(enum.IntEnum):
    """Packet identifier [Packet]."""

    COMMAND = 0x01
    DATA = 0x02  # data packet, more follow
    ACK = 0x07
    END = 0x08  # last data packet


class Instruction(enum.IntEnum):
    """Instruction codes, named as in the manual [Instructions]."""

    GenImg = 0x01
    Img2Tz = 0x02
    Match = 0x03
    Search = 0x04
    RegModel = 0x05
    Store = 0x06
    LoadChar = 0x07
    UpChar = 0x08
    DownChar = 0x09
    UpImage = 0x0A
    DownImage = 0x0B
    DeleteChar = 0x0C
    Empty = 0x0D
    SetSysPara = 0x0E
    ReadSysPara = 0x0F
    SetPwd = 0x12
    VfyPwd = 0x13
    GetRandomCode = 0x14
    SetAddr = 0x15
    WriteNotepad = 0x18
    ReadNotepad = 0x19
    HighSpeedSearch = 0x1B
    TemplateNum = 0x1D
    ReadIndexTable = 0x1F
    AuraLedConfig = 0x35
    SoftReset = 0x3D
    GetEcho = 0x53


# Payload bytes (confirmation code included) of each instruction's acknowledge. Replies have a
# fixed length per instruction, errors included [Sensor behaviour that host software depends
# on]: Search 16 bytes on the wire, TemplateNum and Match 14, ReadSysPara 28, ReadIndexTable
# 44, most others 12. The driver uses the length to tell an instruction's reply from a stale
# reply to an earlier one.
ACK_PAYLOAD_LEN: dict[int, int] = {
    Instruction.Match: 3,
    Instruction.Search: 5,
    Instruction.HighSpeedSearch: 5,
    Instruction.ReadSysPara: 17,
    Instruction.GetRandomCode: 5,
    Instruction.ReadNotepad: 33,
    Instruction.TemplateNum: 3,
    Instruction.ReadIndexTable: 33,
}


def ack_payload_len(instruction: int) -> int:
    """Payload length of the acknowledge to ``instruction`` (1 for the 12-byte acks)."""
    return ACK_PAYLOAD_LEN.get(instruction, 1)


class Confirm(enum.IntEnum):
    """Confirmation codes [Confirmation codes]; R503 additions marked."""

    OK = 0x00
    PACKET_RECEIVE_ERROR = 0x01
    NO_FINGER = 0x02
    IMAGE_FAIL = 0x03
    IMAGE_MESSY = 0x06
    FEATURE_FAIL = 0x07
    NO_MATCH = 0x08
    NOT_FOUND = 0x09
    MERGE_FAIL = 0x0A
    PAGE_OUT_OF_RANGE = 0x0B
    TEMPLATE_READ_ERROR = 0x0C
    UPCHAR_ERROR = 0x0D
    CANNOT_RECEIVE_DATA = 0x0E
    UPIMAGE_ERROR = 0x0F
    DELETE_FAIL = 0x10
    CLEAR_FAIL = 0x11
    WRONG_PASSWORD = 0x13
    NO_VALID_IMAGE = 0x15
    FLASH_ERROR = 0x18
    INVALID_REGISTER = 0x1A
    # R503 additions.
    R503_1B = 0x1B
    R503_1C = 0x1C
    R503_1D = 0x1D
    R503_1E = 0x1E
    R503_1F = 0x1F
    ADDRESS_ERROR = 0x20
    MUST_VERIFY_PASSWORD = 0x21
    TEMPLATE_EMPTY = 0x22
    LIBRARY_EMPTY = 0x24
    TIMEOUT = 0x26
    ALREADY_EXISTS = 0x27
    SENSOR_HARDWARE_ERROR = 0x29
    R503_FC = 0xFC
    R503_FD = 0xFD
    R503_FE = 0xFE


CONFIRM_TEXT: dict[int, str] = {
    0x00: "OK",
    0x01: "packet receive error",
    0x02: "no finger on sensor",
    0x03: "image capture failed",
    0x06: "image too disorderly",
    0x07: "too few feature points",
    0x08: "no match",
    0x09: "not found",
    0x0A: "merge failed",
    0x0B: "page id out of range",
    0x0C: "template read error",
    0x0D: "UpChar error",
    0x0E: "cannot receive following data packets",
    0x0F: "UpImage error",
    0x10: "delete failed",
    0x11: "clear library failed",
    0x13: "wrong password",
    0x15: "no valid primary image",
    0x18: "flash write error",
    0x1A: "invalid register",
    0x1B: "R503 error 0x1B",
    0x1C: "R503 error 0x1C",
    0x1D: "R503 error 0x1D",
    0x1E: "R503 error 0x1E",
    0x1F: "R503 error 0x1F",
    0x20: "address error",
    0x21: "password must be verified",
    0x22: "template empty",
    0x24: "library empty",
    0x26: "timeout",
    0x27: "already exists",
    0x29: "sensor hardware error",
    0xFC: "R503 error 0xFC",
    0xFD: "R503 error 0xFD",
    0xFE: "R503 error 0xFE",
}


def confirm_text(code: int) -> str:
    """Human text of a confirmation code (unknown codes are named by value)."""
    return CONFIRM_TEXT.get(code, f"unknown confirmation code 0x{code:02X}")


class SysParam(enum.IntEnum):
    """SetSysPara parameter numbers [Instructions]."""

    BAUD = 4  # value N: baud = 9600 x N
    SECURITY_LEVEL = 5  # 1..5
    PACKET_SIZE = 6  # code 0..3 = 32/64/128/256 bytes


PACKET_SIZES: tuple[int, ...] = (32, 64, 128, 256)
BAUD_UNIT = 9600


def packet_size_from_code(code: int) -> int:
    """Data packet size in bytes for ReadSysPara's code 0..3."""
    if not 0 <= code < len(PACKET_SIZES):
        raise FrameError(f"packet size code {code} outside 0..3")
    return PACKET_SIZES[code]


def packet_size_code(size: int) -> int:
    """Code 0..3 of a data packet size in bytes (32/64/128/256)."""
    try:
        return PACKET_SIZES.index(size)
    except ValueError:
        raise FrameError(f"packet size {size} is not one of {PACKET_SIZES}") from None


def baud_from_n(n: int) -> int:
    """UART rate for the multiplier N, 1..12 [Packet]: baud = 9600 x N."""
    if not 1 <= n <= 12:
        raise FrameError(f"baud multiplier N={n} outside 1..12")
    return BAUD_UNIT * n


def n_from_baud(baud: int) -> int:
    """Multiplier N of a rate that is 9600 x N with N in 1..12."""
    n, rest = divmod(baud, BAUD_UNIT)
    if rest or not 1 <= n <= 12:
        raise FrameError(f"baud {baud} is not 9600 x N with N in 1..12")
    return n


class FrameError(ValueError):
    """Bytes that are not a valid packet. Pure-codec error: the link converts it into
    :class:`~appliance.errors.ProtocolError` at its boundary."""


@dataclass(frozen=True)
class Packet:
    """One decoded packet."""

    pid: int
    payload: bytes
    address: int = DEFAULT_ADDRESS

    @property
    def confirm(self) -> int:
        """Confirmation code of an ack (its first payload byte)."""
        if self.pid != PID.ACK or not self.payload:
            raise FrameError("not an acknowledge packet with a confirmation code")
        return self.payload[0]

    def encode(self) -> bytes:
        return build_packet(self.pid, self.payload, self.address)


def checksum(pid: int, payload: bytes) -> int:
    """SUM over PID, LEN high, LEN low and the payload, modulo 2**16 [Packet]."""
    length = len(payload) + 2
    return (pid + (length >> 8) + (length & 0xFF) + sum(payload)) & 0xFFFF


def build_packet(pid: int, payload: bytes, address: int = DEFAULT_ADDRESS) -> bytes:
    """Serialize one packet."""
    if not 0 <= address <= 0xFFFFFFFF:
        raise FrameError(f"address {address!r} outside 32 bits")
    if pid not in (PID.COMMAND, PID.DATA, PID.ACK, PID.END):
        raise FrameError(f"unknown packet identifier 0x{pid:02X}")
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    length = len(payload) + 2
    return (
        HEADER
        + struct.pack(">IBH", address, pid, length)
        + payload
        + struct.pack(">H", checksum(pid, payload))
    )


def build_command(instruction: int, params: bytes = b"", address: int = DEFAULT_ADDRESS) -> bytes:
    """A command packet: instruction code followed by its parameters."""
    return build_packet(PID.COMMAND, bytes([instruction]) + params, address)


def build_ack(confirm: int, data: bytes = b"", address: int = DEFAULT_ADDRESS) -> bytes:
    """An acknowledge packet: confirmation code followed by the reply's fields."""
    return build_packet(PID.ACK, bytes([confirm]) + data, address)


def parse_packet(data: bytes) -> Packet:
    """Decode exactly one complete packet (strict: no trailing bytes)."""
    pkt, used = try_parse(data)
    if pkt is None:
        raise FrameError(f"incomplete packet ({len(data)} bytes)")
    if used != len(data):
        raise FrameError(f"{len(data) - used} trailing bytes after the packet")
    return pkt


def try_parse(buf: bytes | bytearray) -> tuple[Packet | None, int]:
    """Parse one packet at the start of ``buf``.

    Returns ``(packet, bytes used)``, or ``(None, 0)`` when more bytes are needed. Raises
    :class:`FrameError` when the start of ``buf`` cannot be a packet (bad header, unknown PID,
    impossible length) or when the checksum is wrong.
    """
    if len(buf) < 2:
        if buf and buf[0] != HEADER[0]:
            raise FrameError("bad header")
        return None, 0
    if bytes(buf[:2]) != HEADER:
        raise FrameError("bad header")
    if len(buf) < PREFIX_LEN:
        return None, 0
    address, pid, length = struct.unpack_from(">IBH", buf, 2)
    if pid not in (PID.COMMAND, PID.DATA, PID.ACK, PID.END):
        raise FrameError(f"unknown packet identifier 0x{pid:02X}")
    if not 3 <= length <= MAX_PAYLOAD + 2:
        # Every packet carries at least one payload byte (instruction, confirmation code
        # or data) and at most one 256-byte data block.
        raise FrameError(f"impossible length field {length}")
    total = PREFIX_LEN + length
    if len(buf) < total:
        return None, 0
    payload = bytes(buf[PREFIX_LEN : total - 2])
    (got,) = struct.unpack_from(">H", buf, total - 2)
    want = checksum(pid, payload)
    if got != want:
        raise FrameError(f"checksum 0x{got:04X} != computed 0x{want:04X}")
    return Packet(pid=pid, payload=payload, address=address), total


class PacketParser:
    """Incremental packet extractor that resynchronises on the next ``EF 01``.

    Feed it bytes as they come (one at a time or in blocks); :meth:`packets` yields every
    complete packet. Bytes that cannot start a packet (line noise, a stray ``0x55`` handshake
    [Packet]) are skipped and counted in :attr:`skipped`. A well-framed packet whose checksum
    is wrong is not skipped silently: it is reported as an error so the caller can retry.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.skipped = 0

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def pending(self) -> int:
        """Bytes held that are not yet a complete packet."""
        return len(self._buf)

    def clear(self) -> None:
        self._buf.clear()

    def next_packet(self) -> Packet | None:
        """The next complete packet, or None if more bytes are needed.

        Raises :class:`FrameError` (once, for that packet) on a checksum mismatch; the bad
        packet's bytes are consumed.
        """
        while self._buf:
            start = self._buf.find(HEADER)
            if start < 0:
                # Keep a trailing 0xEF: it may be the first half of a header.
                keep = 1 if self._buf[-1] == HEADER[0] else 0
                self.skipped += len(self._buf) - keep
                del self._buf[: len(self._buf) - keep]
                return None
            if start:
                self.skipped += start
                del self._buf[:start]
            try:
                pkt, used = try_parse(self._buf)
            except FrameError as exc:
                if "checksum" in str(exc):
                    length = struct.unpack_from(">H", self._buf, 7)[0]
                    del self._buf[: PREFIX_LEN + length]
                    raise
                # Not a packet after all (EF 01 inside noise): resync after this header.
                self.skipped += 1
                del self._buf[:1]
                continue
            if pkt is None:
                return None
            del self._buf[:used]
            return pkt
        return None

    def packets(self) -> Iterator[Packet]:
        while (pkt := self.next_packet()) is not None:
            yield pkt


def split_data(data: bytes, packet_size: int, address: int = DEFAULT_ADDRESS) -> list[bytes]:
    """Frame a data stream into packets of ``packet_size`` bytes, the last one PID 08.

    A trailing partial block is sent as a short last packet, never dropped [Known failure
    modes: both libraries once dropped it].
    """
    if packet_size not in PACKET_SIZES:
        raise FrameError(f"packet size {packet_size} is not one of {PACKET_SIZES}")
    if not data:
        raise FrameError("a data stream needs at least one byte")
    chunks = [data[i : i + packet_size] for i in range(0, len(data), packet_size)]
    out = [build_packet(PID.DATA, c, address) for c in chunks[:-1]]
    out.append(build_packet(PID.END, chunks[-1], address))
    return out


def wire_bytes_for(data_len: int, packet_size: int) -> int:
    """Bytes on the wire for ``data_len`` data bytes in packets of ``packet_size``."""
    n_packets = -(-data_len // packet_size)
    return data_len + n_packets * (PREFIX_LEN + 2)


# --- image nibbles [Image upload (UpImage)] -------------------------------------------------


def pack_image(image: npt.NDArray[np.uint8]) -> bytes:
    """8-bit grey image (288 rows x 256 columns) to the wire's 4-bit form.

    Only the upper 4 bits of each pixel travel, two pixels per byte, high nibble first.
    """
    import numpy as np

    if image.dtype != np.uint8 or image.ndim != 2 or image.shape[1] % 2:
        raise FrameError(f"image must be 2-D uint8 with an even width, got {image.shape}")
    hi = image[:, 0::2] & 0xF0
    lo = image[:, 1::2] >> 4
    return (hi | lo).astype(np.uint8).tobytes()


def unpack_image(
    data: bytes, width: int = IMAGE_WIDTH, height: int = IMAGE_HEIGHT
) -> npt.NDArray[np.uint8]:
    """The wire's 4-bit pixels back to an 8-bit image; each nibble v becomes v * 17 so that
    0 stays black and 15 becomes full white 255."""
    if len(data) != width * height // 2:
        raise FrameError(f"image data has {len(data)} bytes, expected {width * height // 2}")
    import numpy as np

    raw = np.frombuffer(data, dtype=np.uint8).reshape(height, width // 2)
    out = np.empty((height, width), dtype=np.uint8)
    out[:, 0::2] = (raw >> 4) * 17
    out[:, 1::2] = (raw & 0x0F) * 17
    return out


# --- reply field decoders (fixed lengths per instruction [Sensor behaviour]) --------------


@dataclass(frozen=True)
class SystemParameters:
    """ReadSysPara reply [Instructions]: 16 bytes of big-endian words."""

    status: int
    system_id: int
    library_size: int
    security_level: int
    address: int
    packet_size_code: int
    baud_n: int

    @property
    def busy(self) -> bool:
        return bool(self.status & 0x01)

    @property
    def password_verified(self) -> bool:
        return bool(self.status & 0x04)

    @property
    def image_valid(self) -> bool:
        return bool(self.status & 0x08)

    @property
    def packet_size(self) -> int:
        return packet_size_from_code(self.packet_size_code)

    @property
    def baud(self) -> int:
        return baud_from_n(self.baud_n)

    def encode(self) -> bytes:
        return struct.pack(
            ">HHHHIHH",
            self.status,
            self.system_id,
            self.library_size,
            self.security_level,
            self.address,
            self.packet_size_code,
            self.baud_n,
        )

    @classmethod
    def decode(cls, data: bytes) -> SystemParameters:
        if len(data) != 16:
            raise FrameError(f"ReadSysPara data is {len(data)} bytes, expected 16")
        status, sid, lib, sec, addr, psize, baud = struct.unpack(">HHHHIHH", data)
        return cls(status, sid, lib, sec, addr, psize, baud)
