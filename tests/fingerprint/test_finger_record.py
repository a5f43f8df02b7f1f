"""ISO/IEC 19794-4:2005 records: byte layout, round trips (raw, PNG, WSQ), refusals."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from appliance.biometrics import finger_record as fr
from appliance.drivers.fingerprint import quality, synth
from appliance.drivers.fingerprint.frames import pack_image, unpack_image
from appliance.errors import ProtocolError


@pytest.fixture(scope="module")
def finger() -> np.ndarray:
    return unpack_image(pack_image(synth.generate(synth.FingerSpec(4, 2))))


def test_header_layout_field_by_field(finger: np.ndarray) -> None:
    rec = fr.FingerRecord(
        [fr.FingerView(finger, position=7, quality=66)],
        compression=fr.Compression.RAW,
        capture_device_id=0x0102,
    )
    data = fr.encode(rec)
    # General header (32 bytes).
    assert data[0:4] == b"FIR\x00" and data[4:8] == b"010\x00"
    assert int.from_bytes(data[8:14], "big") == len(data) == 32 + 14 + 256 * 288
    assert data[14:16] == b"\x01\x02"  # capture device id
    assert struct.unpack(">H", data[16:18])[0] == 31  # acquisition level 500 ppi
    assert data[18] == 1 and data[19] == 1  # one finger, scale in ppi
    assert struct.unpack(">HHHH", data[20:28]) == (500, 500, 500, 500)
    assert data[28] == 8 and data[29] == 0 and data[30:32] == b"\x00\x00"
    # Finger image header (14 bytes).
    view = data[32:46]
    assert struct.unpack(">I", view[0:4])[0] == 14 + 256 * 288
    assert tuple(view[4:9]) == (7, 1, 1, 66, 0)  # position, count, number, quality, live plain
    assert struct.unpack(">HH", view[9:13]) == (256, 288) and view[13] == 0
    assert data[46:] == finger.tobytes()


@pytest.mark.parametrize("compression", [fr.Compression.RAW, fr.Compression.PNG])
def test_lossless_round_trip(finger: np.ndarray, compression: fr.Compression) -> None:
    rec = fr.FingerRecord(
        [fr.FingerView(finger, position=1, quality=80), fr.FingerView(finger[:200], position=2)],
        compression=compression,
    )
    back = fr.decode(fr.encode(rec))
    assert back.compression == compression and back.ppi == 500
    assert [v.position for v in back.views] == [1, 2]
    assert [v.quality for v in back.views] == [80, 254]
    assert np.array_equal(back.views[0].image, finger)
    assert np.array_equal(back.views[1].image, finger[:200])
    assert fr.encode(back) == fr.encode(rec)


def test_wsq_round_trip_is_lossy_but_keeps_the_finger(finger: np.ndarray) -> None:
    rec = fr.FingerRecord([fr.FingerView(finger, position=3, quality=70)], fr.Compression.WSQ)
    data = fr.encode(rec)
    assert len(data) < len(fr.encode(fr.FingerRecord(rec.views, fr.Compression.PNG)))
    back = fr.decode(data)
    img = back.views[0].image
    assert img.shape == finger.shape and back.compression == fr.Compression.WSQ
    assert float(np.abs(img.astype(int) - finger.astype(int)).mean()) < 10
    # The finger is still a finger of about the same quality.
    assert abs(quality.assess(img).score - quality.assess(finger).score) <= 15


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:20], "shorter than its header"),
        (lambda d: b"FIX\x00" + d[4:], "not an ISO"),
        (lambda d: d + b"\x00", "length field"),
        (lambda d: d[:18] + b"\x00" + d[19:], "no finger view"),
        (lambda d: d[:28] + b"\x10" + d[29:], "pixel depth"),
        (lambda d: d[:29] + b"\x09" + d[30:], "compression code"),
        (lambda d: d[:32] + b"\x00\x00\x00\x05" + d[36:], "impossible"),
        (lambda d: d[:90] + bytes([d[90] ^ 0xFF]) + d[91:], "decode"),  # inside IDAT
    ],
)
def test_damaged_records_are_refused_with_a_clear_error(mutate: object, message: str) -> None:
    img = np.full((40, 40), 128, dtype=np.uint8)
    img[::4] = 0
    good = fr.encode(fr.FingerRecord([fr.FingerView(img)], fr.Compression.PNG))
    damaged = mutate(good)  # type: ignore[operator]
    # Keep the length field honest where the damage is elsewhere.
    if message not in ("length field", "shorter than its header"):
        damaged = damaged[:8] + len(damaged).to_bytes(6, "big") + damaged[14:]
    with pytest.raises(ProtocolError, match=message) as err:
        fr.decode(damaged)
    assert err.value.code == "bad_finger_record"


def test_bad_views_are_refused() -> None:
    img = np.zeros((10, 10), dtype=np.uint8)
    with pytest.raises(ProtocolError):
        fr.FingerView(img, position=16)
    with pytest.raises(ProtocolError):
        fr.FingerView(img, quality=101)
    with pytest.raises(ProtocolError):
        fr.FingerView(img.astype(np.uint16))  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        fr.encode(fr.FingerRecord([]))
