"""BER-TLV as used by ICAO 9303 (Part 10 §4.3 / ISO/IEC 8825-1): tags of 1-3 bytes, definite
lengths of up to 3 length bytes. Tags are handled as the integer of their bytes (``0x5F1F``)."""

from __future__ import annotations

from ..errors import ProtocolError
from ..protocol.codes import ErrorCode

MAX_LENGTH = 0xFFFFFF


def malformed(message: str, **details: object) -> ProtocolError:
    """The error every LDS decoder raises for bytes that do not parse."""
    return ProtocolError(
        message, device="card", code=ErrorCode.LDS_MALFORMED, retryable=False, details=dict(details)
    )


def encode_tag(tag: int) -> bytes:
    if tag < 0:
        raise ValueError(f"negative tag {tag}")
    return tag.to_bytes(max(1, (tag.bit_length() + 7) // 8), "big")


def encode_length(n: int) -> bytes:
    """Definite length, short form below 128 (X.690 §8.1.3)."""
    if n < 0 or n > MAX_LENGTH:
        raise ValueError(f"length {n} out of range")
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, value: bytes) -> bytes:
    """One TLV object."""
    return encode_tag(tag) + encode_length(len(value)) + value


def is_constructed(tag: int) -> bool:
    return bool(encode_tag(tag)[0] & 0x20)


def read_tag(data: bytes, pos: int) -> tuple[int, int]:
    """Decode the tag at ``pos``; return (tag, position after it)."""
    if pos >= len(data):
        raise malformed("truncated TLV: tag expected", offset=pos)
    first = data[pos]
    tag = first
    pos += 1
    if first & 0x1F == 0x1F:  # multi-byte tag: subsequent bytes while b8 set (X.690 §8.1.2.4)
        for _ in range(2):
            if pos >= len(data):
                raise malformed("truncated multi-byte tag", offset=pos)
            b = data[pos]
            tag = (tag << 8) | b
            pos += 1
            if not b & 0x80:
                break
        else:
            raise malformed("tag longer than 3 bytes", offset=pos)
    return tag, pos


def read_length(data: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(data):
        raise malformed("truncated TLV: length expected", offset=pos)
    first = data[pos]
    pos += 1
    if first < 0x80:
        return first, pos
    n = first & 0x7F
    if n == 0:
        raise malformed("indefinite length is not allowed in the LDS", offset=pos - 1)
    if n > 3:
        raise malformed(f"length field of {n} bytes is too long", offset=pos - 1)
    if pos + n > len(data):
        raise malformed("truncated length field", offset=pos)
    return int.from_bytes(data[pos : pos + n], "big"), pos + n


def read_tlv(data: bytes, pos: int = 0) -> tuple[int, bytes, int]:
    """Decode one TLV at ``pos``; return (tag, value, position after it)."""
    tag, pos = read_tag(data, pos)
    length, pos = read_length(data, pos)
    end = pos + length
    if end > len(data):
        raise malformed(f"TLV {tag:X} claims {length} bytes, only {len(data) - pos} left", tag=tag)
    return tag, bytes(data[pos:end]), end


def header_size(data: bytes) -> tuple[int, int]:
    """For a file's first bytes, return (header length, value length): the file's full size
    is their sum. Used to learn a file's length from its first few bytes."""
    _tag, pos = read_tag(data, 0)
    length, pos = read_length(data, pos)
    return pos, length


def parse_all(data: bytes) -> list[tuple[int, bytes]]:
    """All consecutive TLVs of ``data``; the data must be exactly covered."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        tag, value, pos = read_tlv(data, pos)
        out.append((tag, value))
    return out


def parse_single(data: bytes, expected_tag: int) -> bytes:
    """The value of the one TLV ``data`` consists of, which must carry ``expected_tag``."""
    tag, value, end = read_tlv(data, 0)
    if tag != expected_tag:
        raise malformed(f"expected tag {expected_tag:X}, found {tag:X}", tag=tag)
    if end != len(data):
        raise malformed(f"{len(data) - end} trailing bytes after tag {tag:X}", tag=tag)
    return value


def find(children: list[tuple[int, bytes]], tag: int) -> bytes:
    """The value of the first child with ``tag``; a clear error when it is missing."""
    for t, v in children:
        if t == tag:
            return v
    raise malformed(f"missing tag {tag:X}", tag=tag)
