"""ISO/IEC 19794-5:2005 face image records: a pure encoder and decoder (no I/O).

Layout (clause numbers of ISO/IEC 19794-5:2005):

- 5.4 Facial Record Header, 14 bytes: format identifier ``FAC\\0``, version ``010\\0``,
  record length (4, the whole record), number of facial images (2).
- per image, 5.5 Facial Information, 20 bytes: facial record data length (4, this block up to
  the end of its image data), number of feature points (2), gender (1), eye colour (1),
  hair colour (1), feature mask (3), expression (2), pose angle yaw/pitch/roll (3),
  pose angle uncertainty yaw/pitch/roll (3);
- 5.6 Feature Points, 8 bytes each: type (1, 1 = MPEG-4 2D), point code (1, major << 4 | minor),
  x (2), y (2), reserved (2);
- 5.7 Image Information, 12 bytes: face image type (1), image data type (1: 0 JPEG,
  1 JPEG 2000), width (2), height (2), colour space (1), source type (1), device type (2),
  quality (2); then 5.8 the image data.

Pose angles (5.5.8) are coded as ``round(angle / 2) + 91`` (1..181 for -180..+180 degrees,
0 = unspecified); uncertainties (5.5.9) as ``round(u / 2) + 1`` (1..91 for 0..180 degrees,
0 = unspecified). Eye centres are MPEG-4 feature points 12.1 (the subject's left eye, on the
image's right) and 12.2 (the subject's right eye).

The record is wrapped by the card layer in DG2's CBEFF template (format owner 0x0101, format
type 0x0008); that wrapper is not this module's job.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from ..errors import ProtocolError
from ..protocol.codes import ErrorCode

FORMAT_ID = b"FAC\x00"
VERSION = b"010\x00"
HEADER_LEN = 14
FACIAL_INFO_LEN = 20
FEATURE_POINT_LEN = 8
IMAGE_INFO_LEN = 12
# The record length field is 4 bytes (5.4.3); the image sizes are 2 bytes (5.7.3-4).
MAX_RECORD_LEN = 0xFFFFFFFF

_HEADER = struct.Struct(">4s4sIH")
_FACIAL_INFO = struct.Struct(">IHBBB3sH3s3s")
_FEATURE_POINT = struct.Struct(">BBHHH")
_IMAGE_INFO = struct.Struct(">BBHHBBHH")


class FaceImageType(IntEnum):
    """5.7.1 face image type."""

    BASIC = 0
    FULL_FRONTAL = 1
    TOKEN_FRONTAL = 2


class ImageDataType(IntEnum):
    """5.7.2 image data type."""

    JPEG = 0
    JPEG2000 = 1


class ColourSpace(IntEnum):
    """5.7.4 image colour space."""

    UNSPECIFIED = 0
    RGB24 = 1
    YUV422 = 2
    GREY8 = 3
    OTHER = 4


class SourceType(IntEnum):
    """5.7.6 source type."""

    UNSPECIFIED = 0
    STATIC_PHOTO_UNKNOWN = 1
    STATIC_PHOTO_DIGITAL_STILL = 2
    STATIC_PHOTO_SCAN = 3
    VIDEO_FRAME_UNKNOWN = 4
    VIDEO_FRAME_ANALOGUE = 5
    VIDEO_FRAME_DIGITAL = 6
    UNKNOWN = 7


class Expression(IntEnum):
    """5.5.7 expression."""

    UNSPECIFIED = 0
    NEUTRAL = 1
    SMILE_CLOSED_JAW = 2
    SMILE_OPEN_JAW = 3
    RAISED_EYEBROWS = 4
    EYES_LOOKING_AWAY = 5
    SQUINTING = 6
    FROWNING = 7


# 5.6 feature point codes (major, minor) used by this appliance.
LEFT_EYE_CENTRE = (12, 1)
RIGHT_EYE_CENTRE = (12, 2)
FEATURE_TYPE_MPEG4 = 1


def _bad(message: str, **details: object) -> ProtocolError:
    return ProtocolError(
        message, device="camera", code=ErrorCode.BAD_FACE_RECORD, details=dict(details)
    )


def encode_angle(angle: float | None) -> int:
    """5.5.8: ``None`` (unspecified) -> 0, else ``round(angle / 2) + 91`` in 1..181."""
    if angle is None:
        return 0
    if not -180.0 <= angle <= 180.0:
        raise _bad(f"pose angle {angle} outside -180..180 degrees", angle=angle)
    return round(angle / 2.0) + 91


def decode_angle(code: int) -> int | None:
    """Inverse of :func:`encode_angle` (the value is in whole degrees, even)."""
    if code == 0:
        return None
    if not 1 <= code <= 181:
        raise _bad(f"pose angle code {code} outside 0..181", code=code)
    return (code - 91) * 2


def encode_uncertainty(value: float | None) -> int:
    """5.5.9: ``None`` -> 0, else ``round(u / 2) + 1`` in 1..91."""
    if value is None:
        return 0
    if not 0.0 <= value <= 180.0:
        raise _bad(f"pose uncertainty {value} outside 0..180 degrees", value=value)
    return round(value / 2.0) + 1


def decode_uncertainty(code: int) -> int | None:
    if code == 0:
        return None
    if not 1 <= code <= 91:
        raise _bad(f"pose uncertainty code {code} outside 0..91", code=code)
    return (code - 1) * 2


@dataclass(frozen=True)
class FeaturePoint:
    """5.6: one landmark in image pixel coordinates."""

    major: int
    minor: int
    x: int
    y: int
    type: int = FEATURE_TYPE_MPEG4

    def __post_init__(self) -> None:
        if not (0 <= self.major <= 15 and 0 <= self.minor <= 15):
            raise _bad(f"feature point code {self.major}.{self.minor} does not fit 4+4 bits")
        if not (0 <= self.x <= 0xFFFF and 0 <= self.y <= 0xFFFF):
            raise _bad(f"feature point ({self.x}, {self.y}) outside 0..65535")
        if not 0 <= self.type <= 0xFF:
            raise _bad(f"feature point type {self.type} outside 0..255")


@dataclass(frozen=True)
class FaceImage:
    """One facial record data block (5.5-5.8). Angles are in degrees (``None``: unspecified)."""

    image: bytes
    width: int
    height: int
    image_data_type: ImageDataType = ImageDataType.JPEG
    face_image_type: FaceImageType = FaceImageType.TOKEN_FRONTAL
    colour_space: ColourSpace = ColourSpace.RGB24
    source_type: SourceType = SourceType.VIDEO_FRAME_DIGITAL
    device_type: int = 0
    quality: int = 0
    gender: int = 0
    eye_colour: int = 0
    hair_colour: int = 0
    feature_mask: int = 0
    expression: int = Expression.UNSPECIFIED
    yaw: int | None = None
    pitch: int | None = None
    roll: int | None = None
    yaw_uncertainty: int | None = None
    pitch_uncertainty: int | None = None
    roll_uncertainty: int | None = None
    feature_points: tuple[FeaturePoint, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for name, value, limit in (
            ("width", self.width, 0xFFFF),
            ("height", self.height, 0xFFFF),
            ("device_type", self.device_type, 0xFFFF),
            ("quality", self.quality, 0xFFFF),
            ("gender", self.gender, 0xFF),
            ("eye_colour", self.eye_colour, 0xFF),
            ("hair_colour", self.hair_colour, 0xFF),
            ("feature_mask", self.feature_mask, 0xFFFFFF),
            ("expression", self.expression, 0xFFFF),
        ):
            if not 0 <= value <= limit:
                raise _bad(f"{name} {value} outside 0..{limit}", field=name)
        if not self.image:
            raise _bad("face image data is empty")

    def encode(self) -> bytes:
        points = b"".join(
            _FEATURE_POINT.pack(p.type, (p.major << 4) | p.minor, p.x, p.y, 0)
            for p in self.feature_points
        )
        image_info = _IMAGE_INFO.pack(
            int(self.face_image_type),
            int(self.image_data_type),
            self.width,
            self.height,
            int(self.colour_space),
            int(self.source_type),
            self.device_type,
            self.quality,
        )
        length = FACIAL_INFO_LEN + len(points) + IMAGE_INFO_LEN + len(self.image)
        if length > MAX_RECORD_LEN:
            raise _bad("face image too large for a 19794-5 record", length=length)
        info = _FACIAL_INFO.pack(
            length,
            len(self.feature_points),
            self.gender,
            self.eye_colour,
            self.hair_colour,
            self.feature_mask.to_bytes(3, "big"),
            int(self.expression),
            bytes(encode_angle(a) for a in (self.yaw, self.pitch, self.roll)),
            bytes(
                encode_uncertainty(u)
                for u in (self.yaw_uncertainty, self.pitch_uncertainty, self.roll_uncertainty)
            ),
        )
        return info + points + image_info + self.image


@dataclass(frozen=True)
class FaceRecord:
    """A whole 19794-5 record: the header and one or more facial images."""

    images: tuple[FaceImage, ...]

    def encode(self) -> bytes:
        """Serialise (5.4): header + facial record data blocks."""
        if not self.images:
            raise _bad("a face record needs at least one facial image")
        if len(self.images) > 0xFFFF:
            raise _bad("too many facial images for one record")
        body = b"".join(img.encode() for img in self.images)
        total = HEADER_LEN + len(body)
        if total > MAX_RECORD_LEN:
            raise _bad("face record too large", length=total)
        return _HEADER.pack(FORMAT_ID, VERSION, total, len(self.images)) + body

    @classmethod
    def decode(cls, data: bytes) -> FaceRecord:
        """Parse a record; every length is checked, trailing or missing bytes are errors."""
        if len(data) < HEADER_LEN:
            raise _bad(f"face record of {len(data)} bytes is shorter than its header")
        fmt, version, total, count = _HEADER.unpack_from(data, 0)
        if fmt != FORMAT_ID:
            raise _bad("not a face record: format identifier is not 'FAC\\0'", found=fmt.hex())
        if version != VERSION:
            raise _bad("unsupported face record version", found=version.hex())
        if total != len(data):
            raise _bad(
                f"record length field says {total} bytes, got {len(data)}",
                declared=total,
                actual=len(data),
            )
        if count == 0:
            raise _bad("face record declares no facial image")
        images = []
        offset = HEADER_LEN
        for index in range(count):
            image, offset = _decode_image(data, offset, index)
            images.append(image)
        if offset != len(data):
            raise _bad("trailing bytes after the last facial image", extra=len(data) - offset)
        return cls(images=tuple(images))


def _decode_image(data: bytes, offset: int, index: int) -> tuple[FaceImage, int]:
    if len(data) - offset < FACIAL_INFO_LEN + IMAGE_INFO_LEN:
        raise _bad(f"facial image {index} is truncated", index=index)
    (length, n_points, gender, eye, hair, mask, expression, angles, uncert) = (
        _FACIAL_INFO.unpack_from(data, offset)
    )
    fixed = FACIAL_INFO_LEN + n_points * FEATURE_POINT_LEN + IMAGE_INFO_LEN
    if length <= fixed or offset + length > len(data):
        raise _bad(
            f"facial image {index}: block length {length} is inconsistent",
            index=index,
            length=length,
        )
    pos = offset + FACIAL_INFO_LEN
    points = []
    for _ in range(n_points):
        ptype, code, x, y, _reserved = _FEATURE_POINT.unpack_from(data, pos)
        points.append(FeaturePoint(major=code >> 4, minor=code & 0x0F, x=x, y=y, type=ptype))
        pos += FEATURE_POINT_LEN
    (face_type, data_type, width, height, colour, source, device, quality) = (
        _IMAGE_INFO.unpack_from(data, pos)
    )
    pos += IMAGE_INFO_LEN
    try:
        face_image_type = FaceImageType(face_type)
        image_data_type = ImageDataType(data_type)
        colour_space = ColourSpace(colour)
        source_type = SourceType(source)
    except ValueError as exc:
        raise _bad(f"facial image {index}: {exc}", index=index) from None
    end = offset + length
    image = FaceImage(
        image=bytes(data[pos:end]),
        width=width,
        height=height,
        image_data_type=image_data_type,
        face_image_type=face_image_type,
        colour_space=colour_space,
        source_type=source_type,
        device_type=device,
        quality=quality,
        gender=gender,
        eye_colour=eye,
        hair_colour=hair,
        feature_mask=int.from_bytes(mask, "big"),
        expression=expression,
        yaw=decode_angle(angles[0]),
        pitch=decode_angle(angles[1]),
        roll=decode_angle(angles[2]),
        yaw_uncertainty=decode_uncertainty(uncert[0]),
        pitch_uncertainty=decode_uncertainty(uncert[1]),
        roll_uncertainty=decode_uncertainty(uncert[2]),
        feature_points=tuple(points),
    )
    return image, end
