"""How three public Vietnamese CCCD readers parse DG13, RE-IMPLEMENTED here from their behaviour
as their published parsing code shows it (read 2026-12); none of their code is
copied. Each returns what that reader would show: ``{field number: value}``, a value being a
string, a tuple of strings (fields 13 and 14), or ``None`` for a field it could not read.

- :func:`swift_prefix_reader`: finds each field by the byte prefix a real card shows and walks
  the numbers 1, 2, 3, ... in order, each value running up to the next number's header; a
  missing field therefore swallows what follows (this model lets it run to the end).
- :func:`js_tlv_reader`: a TLV walk; one TLV after each field's INTEGER (for 13, every string in
  what follows, so either layout works); the old ID number from field 16, 15 ignored. The
  TypeScript "VN-CCCD-2024" profile reads 16 as the old ID number too.
- :func:`python_short_form_reader`: a byte scanner that knows only short-form lengths
  (``30 LL ... 0C LL``): a field longer than 127 bytes is dropped.
"""

from __future__ import annotations

Value = str | tuple[str | None, ...] | None
_OID = bytes.fromhex("060628D316010008")  # 1.0.10646.1.0.8, before the fields

# Field number -> the prefix (string tag + exact length) the Swift reader matches.
_SWIFT_PREFIX = {
    1: b"\x13\x0c",
    3: b"\x13\x0a",
    11: b"\x13\x0a",
    12: b"\x0c\x0a",
    15: b"\x13\x09",
    16: b"\x13\x10",
}


def _short_string(data: bytes, tags: tuple[int, ...] = (0x0C, 0x13)) -> tuple[str, int] | None:
    """A string TLV with a short-form length at the start of ``data``: (text, bytes used)."""
    if len(data) < 2 or data[0] not in tags or data[1] & 0x80 or len(data) < 2 + data[1]:
        return None
    return data[2 : 2 + data[1]].decode("utf-8"), 2 + data[1]


def _header_at(data: bytes, n: int, start: int) -> int:
    """Index of the ``30 LL 02 01 n`` that opens field n at or after ``start`` (-1: none)."""
    i = data.find(bytes((0x02, 0x01, n)), start)
    while i >= 0:
        if i >= 2 and data[i - 2] == 0x30:
            return i - 2
        i = data.find(bytes((0x02, 0x01, n)), i + 1)
    return -1


def swift_prefix_reader(dg13: bytes) -> dict[int, Value]:
    out: dict[int, Value] = {}
    pos = dg13.find(_OID) + len(_OID)
    for n in range(1, 17):
        h = _header_at(dg13, n, pos)
        if h < 0:
            out[n] = None
            continue
        start = h + 5
        nxt = _header_at(dg13, n + 1, start) if n < 16 else -1
        value = dg13[start : nxt if nxt >= 0 else len(dg13)]
        pos = start
        if n == 13:
            parents: list[str | None] = []
            rest = value
            while len(rest) >= 2 and rest[0] == 0x30:
                s = _short_string(rest[2 : 2 + rest[1]], (0x0C,))
                parents.append(s[0] if s else None)
                rest = rest[2 + rest[1] :]
            out[n] = tuple(parents) if len(parents) == 2 and not rest else None
        elif n == 14:
            if not value:
                out[n] = ()
            else:
                s = _short_string(value[2:], (0x0C,)) if value[0] == 0x30 else None
                out[n] = (s[0],) if s and s[1] + 2 == len(value) else None
        else:
            prefix = _SWIFT_PREFIX.get(n)
            if prefix is not None:
                ok = value.startswith(prefix) and len(value) == 2 + prefix[1]
                out[n] = value[2:].decode("utf-8") if ok else None
            else:
                s = _short_string(value, (0x0C,))
                out[n] = s[0] if s and s[1] == len(value) else None  # swallowed: garbage
    return out


def _tlv(data: bytes, i: int) -> tuple[int, bytes, int]:
    """One BER TLV (single-byte tags; short or long lengths): (tag, value, next index)."""
    tag = data[i]
    length = data[i + 1]
    i += 2
    if length & 0x80:
        k = length & 0x7F
        length = int.from_bytes(data[i : i + k], "big")
        i += k
    return tag, data[i : i + length], i + length


def _all(data: bytes) -> list[tuple[int, bytes]]:
    out, i = [], 0
    while i < len(data):
        tag, value, i = _tlv(data, i)
        out.append((tag, value))
    return out


def _strings_in(items: list[tuple[int, bytes]]) -> list[str]:
    found: list[str] = []
    for tag, value in items:
        if tag == 0x30:
            found.extend(_strings_in(_all(value)))
        elif tag in (0x0C, 0x13):
            found.append(value.decode("utf-8"))
    return found


def js_tlv_reader(dg13: bytes) -> dict[int, Value]:
    _tag, outer, _ = _tlv(dg13, 0)
    _tag, seq, _ = _tlv(outer, 0)
    items = _all(seq)
    fields = _all(items[2][1])  # INTEGER, OID, SET
    out: dict[int, Value] = {}
    for _t, f in fields:
        parts = _all(f)
        n = parts[0][1][0]
        after = parts[1:]
        if n in (13, 14):
            out[n] = tuple(_strings_in(after))
        elif n == 15:
            continue  # this reader takes the old ID number from 16 only
        else:
            out[n] = after[0][1].decode("utf-8") if after else None
    return out


def python_short_form_reader(dg13: bytes) -> dict[int, Value]:
    out: dict[int, Value] = {}
    i = _header_at(dg13, 1, dg13.find(_OID) + len(_OID))  # the first field, after the OID
    while 0 <= i < len(dg13) - 4:
        if dg13[i] != 0x30:
            break
        if dg13[i + 1] & 0x80:  # long-form length: this reader cannot read it
            _tag, _value, i = _tlv(dg13, i)
            continue
        end = i + 2 + dg13[i + 1]
        n = dg13[i + 4]
        body = dg13[i + 5 : end]
        if n in (13, 14):
            names: list[str | None] = []
            j = 0
            while j < len(body) and body[j] == 0x30 and not body[j + 1] & 0x80:
                s = _short_string(body[j + 2 : j + 2 + body[j + 1]])
                names.append(s[0] if s else None)
                j += 2 + body[j + 1]
            out[n] = tuple(names)
        else:
            s = _short_string(body)
            out[n] = s[0] if s else None
        i = end
    return out
