"""ISO/IEC 19794-5 face records: layout, round trips, and rejection of malformed bytes."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.biometrics.face_record import (
    LEFT_EYE_CENTRE,
    RIGHT_EYE_CENTRE,
    ColourSpace,
    FaceImage,
    FaceImageType,
    FaceRecord,
    FeaturePoint,
    ImageDataType,
    SourceType,
    decode_angle,
    encode_angle,
    encode_uncertainty,
)
from appliance.errors import ProtocolError

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(40)) + b"\xff\xd9"


def sample() -> FaceImage:
    return FaceImage(
        image=JPEG,
        width=240,
        height=320,
        quality=73,
        yaw=4,
        pitch=-2,
        roll=0,
        yaw_uncertainty=4,
        pitch_uncertainty=4,
        roll_uncertainty=2,
        feature_points=(
            FeaturePoint(*RIGHT_EYE_CENTRE, x=90, y=144),
            FeaturePoint(*LEFT_EYE_CENTRE, x=150, y=144),
        ),
    )


def test_layout_matches_the_clauses_byte_for_byte() -> None:
    data = FaceRecord(images=(sample(),)).encode()
    image_len = len(JPEG)
    block = 20 + 2 * 8 + 12 + image_len
    # 5.4 header: FAC\0, 010\0, total length, one image.
    assert data[:14] == b"FAC\x00010\x00" + struct.pack(">IH", 14 + block, 1)
    # 5.5 facial information: block length, 2 points, gender/eye/hair 0, mask 0, expression 0,
    # pose yaw 4 -> 93, pitch -2 -> 90, roll 0 -> 91; uncertainty 4 -> 3, 4 -> 3, 2 -> 2.
    assert data[14:34] == struct.pack(">IH", block, 2) + bytes(
        [0, 0, 0, 0, 0, 0, 0, 0, 93, 90, 91, 3, 3, 2]
    )
    # 5.6 feature points: type 1, code 0xC2 (12.2) then 0xC1 (12.1), x, y, reserved.
    assert data[34:42] == bytes([1, 0xC2]) + struct.pack(">HHH", 90, 144, 0)
    assert data[42:50] == bytes([1, 0xC1]) + struct.pack(">HHH", 150, 144, 0)
    # 5.7 image information: token frontal, JPEG, 240 x 320, RGB24, digital video frame,
    # device 0, quality 73; then the image itself.
    assert data[50:62] == bytes([2, 0]) + struct.pack(">HHBBHH", 240, 320, 1, 6, 0, 73)
    assert data[62:] == JPEG
    assert len(data) == 14 + block


def test_round_trip() -> None:
    record = FaceRecord(images=(sample(), sample()))
    assert FaceRecord.decode(record.encode()) == record


def test_angle_codes() -> None:
    assert encode_angle(None) == 0
    assert encode_angle(0) == 91
    assert encode_angle(-180) == 1
    assert encode_angle(180) == 181
    assert decode_angle(93) == 4
    assert encode_uncertainty(None) == 0
    assert encode_uncertainty(0) == 1
    assert encode_uncertainty(180) == 91
    with pytest.raises(ProtocolError):
        encode_angle(200)
    with pytest.raises(ProtocolError):
        decode_angle(200)


even_angle = st.one_of(st.none(), st.integers(-90, 90).map(lambda a: 2 * a))
even_unc = st.one_of(st.none(), st.integers(0, 90).map(lambda a: 2 * a))
points = st.lists(
    st.builds(
        FeaturePoint,
        major=st.integers(0, 15),
        minor=st.integers(0, 15),
        x=st.integers(0, 0xFFFF),
        y=st.integers(0, 0xFFFF),
        type=st.integers(0, 255),
    ),
    max_size=6,
).map(tuple)


@settings(max_examples=60, deadline=None)
@given(
    image=st.binary(min_size=1, max_size=300),
    width=st.integers(0, 0xFFFF),
    height=st.integers(0, 0xFFFF),
    data_type=st.sampled_from(ImageDataType),
    face_type=st.sampled_from(FaceImageType),
    colour=st.sampled_from(ColourSpace),
    source=st.sampled_from(SourceType),
    quality=st.integers(0, 0xFFFF),
    mask=st.integers(0, 0xFFFFFF),
    yaw=even_angle,
    pitch=even_angle,
    roll=even_angle,
    unc=even_unc,
    pts=points,
)
def test_round_trip_any_fields(
    image: bytes,
    width: int,
    height: int,
    data_type: ImageDataType,
    face_type: FaceImageType,
    colour: ColourSpace,
    source: SourceType,
    quality: int,
    mask: int,
    yaw: int | None,
    pitch: int | None,
    roll: int | None,
    unc: int | None,
    pts: tuple[FeaturePoint, ...],
) -> None:
    face = FaceImage(
        image=image,
        width=width,
        height=height,
        image_data_type=data_type,
        face_image_type=face_type,
        colour_space=colour,
        source_type=source,
        quality=quality,
        feature_mask=mask,
        yaw=yaw,
        pitch=pitch,
        roll=roll,
        yaw_uncertainty=unc,
        feature_points=pts,
    )
    record = FaceRecord(images=(face,))
    assert FaceRecord.decode(record.encode()) == record


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: b"FIR\x00" + d[4:], "format identifier"),
        (lambda d: d[:4] + b"020\x00" + d[8:], "version"),
        (lambda d: d[:-1], "record length"),
        (lambda d: d + b"\x00", "record length"),
        (lambda d: d[:8] + struct.pack(">I", 14) + b"\x00\x00", "no facial image"),
        (lambda d: d[:12] + b"\x00\x00" + d[14:], "no facial image"),
        (lambda d: d[:14] + struct.pack(">I", 10) + d[18:], "inconsistent"),
        (lambda d: d[:50] + b"\x07" + d[51:], "facial image 0"),
        (lambda d: d[:51] + b"\x05" + d[52:], "facial image 0"),
        (lambda d: d[:30] + b"\xff" + d[31:], "pose angle code"),
        (lambda d: d[:6], "shorter than its header"),
    ],
)
def test_malformed_records_are_protocol_errors(
    mutate: Callable[[bytes], bytes], message: str
) -> None:
    good = FaceRecord(images=(sample(),)).encode()
    with pytest.raises(ProtocolError, match=message) as info:
        FaceRecord.decode(mutate(good))
    assert info.value.code == "bad_face_record"


def test_trailing_bytes_inside_declared_length_are_rejected() -> None:
    good = FaceRecord(images=(sample(),)).encode()
    bad = good[:8] + struct.pack(">I", len(good) + 3) + good[12:] + b"abc"
    with pytest.raises(ProtocolError, match="trailing"):
        FaceRecord.decode(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_escape_the_error_tree(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        FaceRecord.decode(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 200), st.binary(min_size=1, max_size=4))
def test_corrupted_good_records_never_escape_the_error_tree(pos: int, junk: bytes) -> None:
    good = FaceRecord(images=(sample(),)).encode()
    pos = pos % len(good)
    data = good[:pos] + junk + good[pos + len(junk) :]
    with contextlib.suppress(ProtocolError):
        FaceRecord.decode(data)


def test_invalid_fields_are_refused_at_construction() -> None:
    with pytest.raises(ProtocolError):
        FaceImage(image=b"", width=1, height=1)
    with pytest.raises(ProtocolError):
        FaceImage(image=b"x", width=70000, height=1)
    with pytest.raises(ProtocolError):
        FeaturePoint(16, 1, 0, 0)
    with pytest.raises(ProtocolError):
        FaceRecord(images=()).encode()
