"""ISO/IEC 19794-4:2005 finger image records: encoder and decoder.

Layout (ISO/IEC 19794-4:2005, clause 8):

General record header, 32 bytes (clause 8.2)::

    "FIR\\0" | "010\\0" | record length (6) | capture device id (2) | acquisition level (2)
    | number of fingers (1) | scale units (1) | scan resolution h, v (2+2)
    | image resolution h, v (2+2) | pixel depth (1) | compression (1) | reserved (2)

then per finger view a 14-byte finger image header (clause 8.3)::

    length of this block (4) | finger position (1) | view count (1) | view number (1)
    | quality (1) | impression type (1) | width (2) | height (2) | reserved (1)

followed by the image data in the record's compression: 0 raw (one byte per pixel at depth
8), 5 PNG, 2 WSQ (through the optional PyPI package ``wsq``, NIST NBIS's codec as a Pillow
plugin). Bit-packed (1), JPEG (3) and JPEG 2000 (4) records decode with Pillow but are not
produced here.

Records carry biometric data: never log their bytes; callers keep them in memory until they
are sealed (see appliance.trust).
"""

from __future__ import annotations

import enum
import importlib
import io
import struct
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from PIL import Image

from ..errors import MissingExtraError, ProtocolError
from ..protocol.codes import ErrorCode

MAGIC = b"FIR\x00"
VERSION = b"010\x00"
GENERAL_HEADER_LEN = 32
VIEW_HEADER_LEN = 14
MAX_RECORD_LEN = 2**48 - 1  # 6-byte length field
# Image acquisition level 31: 500 ppi, 8 bits of grey (ISO/IEC 19794-4 Table 1).
ACQUISITION_LEVEL_500PPI = 31
SCALE_PPI = 1
SCALE_PPCM = 2


class Compression(enum.IntEnum):
    """Image compression algorithm codes (clause 8.2.12)."""

    RAW = 0
    RAW_PACKED = 1
    WSQ = 2
    JPEG = 3
    JPEG2000 = 4
    PNG = 5


class Impression(enum.IntEnum):
    """Impression type codes (ISO/IEC 19794-2 Table 2, used by -4)."""

    LIVE_PLAIN = 0
    LIVE_ROLLED = 1
    NONLIVE_PLAIN = 2
    NONLIVE_ROLLED = 3
    SWIPE = 8


def _bad(message: str, **details: object) -> ProtocolError:
    return ProtocolError(
        message, device="fingerprint", code=ErrorCode.BAD_FINGER_RECORD, details=dict(details)
    )


@dataclass(frozen=True)
class FingerView:
    """One finger image of a record (8-bit grey, rows x columns)."""

    image: npt.NDArray[np.uint8]
    position: int = 0  # 0 unknown, 1..5 right thumb..little, 6..10 left thumb..little
    quality: int = 254  # 0..100; 254 not computed, 255 failed (clause 8.3.5)
    impression: int = Impression.LIVE_PLAIN
    view_number: int = 1
    view_count: int = 1

    def __post_init__(self) -> None:
        if self.image.dtype != np.uint8 or self.image.ndim != 2:
            raise _bad("finger image must be a 2-D uint8 array", shape=list(self.image.shape))
        h, w = self.image.shape
        if not (0 < w <= 0xFFFF and 0 < h <= 0xFFFF):
            raise _bad(f"image size {w} x {h} does not fit the record", width=w, height=h)
        if not 0 <= self.position <= 15:
            raise _bad(f"finger position {self.position} outside 0..15", position=self.position)
        if not (0 <= self.quality <= 100 or self.quality in (254, 255)):
            raise _bad(f"quality {self.quality} outside 0..100, 254, 255", quality=self.quality)
        for name in ("impression", "view_number", "view_count"):
            value = getattr(self, name)
            if not 0 <= value <= 255:
                raise _bad(f"{name} {value} outside 0..255", field=name)


@dataclass(frozen=True)
class FingerRecord:
    """A decoded or to-be-encoded ISO/IEC 19794-4 record."""

    views: list[FingerView]
    compression: Compression = Compression.PNG
    ppi: int = 500
    capture_device_id: int = 0
    acquisition_level: int = ACQUISITION_LEVEL_500PPI
    pixel_depth: int = 8
    scale_units: int = SCALE_PPI
    extras: dict[str, int] = field(default_factory=dict)


def _compress(image: npt.NDArray[np.uint8], compression: Compression, ppi: int) -> bytes:
    if compression is Compression.RAW:
        return image.tobytes()
    pil = Image.fromarray(image)
    buf = io.BytesIO()
    if compression is Compression.PNG:
        pil.save(buf, format="PNG", optimize=False, compress_level=3)
    elif compression is Compression.WSQ:
        _load_wsq()
        # The wsq plugin fixes its own compression setting; it takes no options.
        pil.save(buf, format="WSQ")
    else:
        raise _bad(f"encoding with compression {compression.name} is not supported")
    return buf.getvalue()


def _load_wsq() -> None:
    try:
        # Importing the module registers the WSQ format with Pillow.
        importlib.import_module("wsq")
    except ImportError as exc:
        raise MissingExtraError("wsq", "wsq", "wsq") from exc


def _decompress(data: bytes, compression: int, width: int, height: int) -> npt.NDArray[np.uint8]:
    if compression == Compression.RAW:
        if len(data) != width * height:
            raise _bad(
                f"raw image of {len(data)} bytes, expected {width * height}",
                width=width,
                height=height,
            )
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width).copy()
    if compression == Compression.RAW_PACKED:
        raise _bad("bit-packed raw images are not supported")
    if compression == Compression.WSQ:
        _load_wsq()
    elif compression not in (Compression.PNG, Compression.JPEG, Compression.JPEG2000):
        raise _bad(f"unknown compression code {compression}", compression=compression)
    try:
        with Image.open(io.BytesIO(data)) as pil:
            arr = np.asarray(pil.convert("L"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:
        raise _bad(f"image data does not decode: {exc}") from exc
    if arr.shape != (height, width):
        raise _bad(
            f"image is {arr.shape[1]} x {arr.shape[0]}, header says {width} x {height}",
            width=width,
            height=height,
        )
    return arr


def encode(record: FingerRecord) -> bytes:
    """Serialise a record. All views share the record's compression and resolution."""
    if not record.views:
        raise _bad("a record needs at least one finger view")
    if not 1 <= len(record.views) <= 255:
        raise _bad(f"{len(record.views)} views do not fit the one-byte count")
    if record.pixel_depth != 8:
        raise _bad("only 8-bit images are encoded", pixel_depth=record.pixel_depth)
    if not 0 < record.ppi <= 0xFFFF:
        raise _bad(f"resolution {record.ppi} outside 1..65535", ppi=record.ppi)
    blocks = []
    for view in record.views:
        data = _compress(view.image, record.compression, record.ppi)
        h, w = view.image.shape
        header = struct.pack(
            ">IBBBBBHHB",
            VIEW_HEADER_LEN + len(data),
            view.position,
            view.view_count,
            view.view_number,
            view.quality,
            view.impression,
            w,
            h,
            0,
        )
        blocks.append(header + data)
    body = b"".join(blocks)
    total = GENERAL_HEADER_LEN + len(body)
    if total > MAX_RECORD_LEN:
        raise _bad("record too long")
    header = (
        MAGIC
        + VERSION
        + total.to_bytes(6, "big")
        + struct.pack(
            ">HHBBHHHHBBH",
            record.capture_device_id,
            record.acquisition_level,
            len(record.views),
            record.scale_units,
            record.ppi,
            record.ppi,
            record.ppi,
            record.ppi,
            record.pixel_depth,
            record.compression,
            0,
        )
    )
    return header + body


def decode(data: bytes) -> FingerRecord:
    """Parse a record; raises ProtocolError (code ``bad_finger_record``) on any defect."""
    if len(data) < GENERAL_HEADER_LEN:
        raise _bad(f"record of {len(data)} bytes is shorter than its header")
    if data[:4] != MAGIC or data[4:8] != VERSION:
        raise _bad("not an ISO/IEC 19794-4:2005 finger image record (FIR\\0 010\\0)")
    total = int.from_bytes(data[8:14], "big")
    if total != len(data):
        raise _bad(f"length field says {total} bytes, record has {len(data)}", length=total)
    (
        device_id,
        level,
        n_views,
        units,
        scan_h,
        scan_v,
        img_h,
        img_v,
        depth,
        compression,
        _reserved,
    ) = struct.unpack_from(">HHBBHHHHBBH", data, 14)
    if n_views == 0:
        raise _bad("record holds no finger view")
    if depth != 8:
        raise _bad(f"pixel depth {depth} is not supported (8 only)", pixel_depth=depth)
    try:
        comp = Compression(compression)
    except ValueError:
        raise _bad(f"unknown compression code {compression}", compression=compression) from None
    views = []
    offset = GENERAL_HEADER_LEN
    for index in range(n_views):
        if offset + VIEW_HEADER_LEN > len(data):
            raise _bad(f"view {index + 1} header runs past the end", view=index + 1)
        length, pos, count, number, quality, impression, w, h, _ = struct.unpack_from(
            ">IBBBBBHHB", data, offset
        )
        if length < VIEW_HEADER_LEN or offset + length > len(data):
            raise _bad(f"view {index + 1} length {length} is impossible", view=index + 1)
        image = _decompress(data[offset + VIEW_HEADER_LEN : offset + length], comp, w, h)
        views.append(
            FingerView(
                image=image,
                position=pos,
                quality=quality,
                impression=impression,
                view_number=number,
                view_count=count,
            )
        )
        offset += length
    if offset != len(data):
        raise _bad(f"{len(data) - offset} bytes after the last view")
    return FingerRecord(
        views=views,
        compression=comp,
        ppi=img_h,
        capture_device_id=device_id,
        acquisition_level=level,
        pixel_depth=depth,
        scale_units=units,
        extras={"scan_ppi_h": scan_h, "scan_ppi_v": scan_v, "image_ppi_v": img_v},
    )
