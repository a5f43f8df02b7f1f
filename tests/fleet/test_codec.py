"""The simulator's MQTT codec: the spec's examples, round trips, and malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.errors import ProtocolError
from appliance.fleet.sim import (
    decode_connack,
    decode_properties,
    decode_publish,
    decode_varint,
    encode_connect,
    encode_properties,
    encode_publish,
    encode_subscribe,
    encode_varint,
    peak_rate,
)

# MQTT 3.1.1 §2.2.3, table 2.4: the boundaries of each varint length.
VARINT_VECTORS = [
    (0, b"\x00"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (16_383, b"\xff\x7f"),
    (16_384, b"\x80\x80\x01"),
    (2_097_151, b"\xff\xff\x7f"),
    (2_097_152, b"\x80\x80\x80\x01"),
    (268_435_455, b"\xff\xff\xff\x7f"),
]


@pytest.mark.parametrize(("value", "wire"), VARINT_VECTORS)
def test_varint_spec_vectors(value: int, wire: bytes) -> None:
    assert encode_varint(value) == wire
    assert decode_varint(wire, 0) == (value, len(wire))


def test_varint_limits() -> None:
    with pytest.raises(ValueError, match="out of range"):
        encode_varint(268_435_456)
    with pytest.raises(ProtocolError, match="longer than 4"):
        decode_varint(b"\xff\xff\xff\xff\x01", 0)
    with pytest.raises(ProtocolError, match="truncated"):
        decode_varint(b"\x80", 0)


def test_connect_311_layout() -> None:
    # 3.1.1 §3.1.2: protocol name, level 4, flags (will retain, will QoS 1, will, no clean
    # session), keepalive, then client id, will topic and will message.
    pkt = encode_connect(
        "k1", keepalive=30, v5=False, will_topic="kiosk/k1/status", will_payload=b"{}"
    )
    assert pkt[0] == 0x10
    body = pkt[2:]
    assert body[:6] == b"\x00\x04MQTT"
    assert body[6] == 4
    assert body[7] == 0x20 | 0x08 | 0x04
    assert body[8:10] == b"\x00\x1e"
    assert body[10:14] == b"\x00\x02k1"


def test_connect_v5_carries_session_expiry() -> None:
    pkt = encode_connect("k1", keepalive=30, v5=True, session_expiry=3600)
    body = pkt[2:]
    assert body[6] == 5
    props, pos = decode_properties(body, 10)
    assert props == {0x11: 3600}
    assert body[pos:] == b"\x00\x02k1"


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    topic=st.text(min_size=1, max_size=40).filter(lambda t: "\x00" not in t),
    payload=st.binary(max_size=300),
    qos=st.sampled_from([0, 1]),
    retain=st.booleans(),
    pid=st.integers(1, 65535),
    v5=st.booleans(),
    corr=st.binary(max_size=16),
)
def test_publish_round_trip(
    topic: str, payload: bytes, qos: int, retain: bool, pid: int, v5: bool, corr: bytes
) -> None:
    props = {0x08: "ctl/reply", 0x09: corr} if v5 else None
    pkt = encode_publish(topic, payload, qos=qos, retain=retain, packet_id=pid, v5=v5, props=props)
    assert pkt[0] >> 4 == 3
    length, pos = decode_varint(pkt, 1)
    assert length == len(pkt) - pos
    msg = decode_publish(pkt[0] & 0x0F, pkt[pos:], v5=v5)
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == (topic, payload, qos, retain)
    assert msg.packet_id == (pid if qos else 0)
    assert msg.props == (props or {})


def test_properties_of_every_kind_round_trip() -> None:
    props = {
        0x01: 1,
        0x02: 60,
        0x08: "a/b",
        0x09: b"\x00\x01",
        0x0B: 300,
        0x23: 7,
        0x26: ("k", "v"),
    }
    assert decode_properties(encode_properties(props), 0)[0] == props


def test_subscribe_flags_and_filters() -> None:
    pkt = encode_subscribe(7, [("kiosk/k1/cmd", 1)], v5=False)
    assert pkt[0] == 0x82  # §3.8.1: reserved flags 0010
    assert pkt[2:4] == b"\x00\x07"
    assert pkt[4:] == b"\x00\x0ckiosk/k1/cmd\x01"


@pytest.mark.parametrize(
    ("flags", "body", "v5", "match"),
    [
        (0x06, b"\x00\x01a", False, "QoS 3"),
        (0x00, b"\x00\x09ab", False, "truncated string"),
        (0x02, b"\x00\x01a\x00", False, "packet identifier"),
        (0x00, b"\x00\x01a\x05\x08\x00", True, "past the packet"),
        (0x00, b"\x00\x01a\x02\x7e\x00", True, "unknown MQTT 5 property"),
        (0x00, b"\x00\x02\xff\xfe", False, "not UTF-8"),
    ],
)
def test_malformed_publish_is_a_protocol_error(
    flags: int, body: bytes, v5: bool, match: str
) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_publish(flags, body, v5=v5)


def test_connack() -> None:
    assert decode_connack(b"\x01\x00", v5=False) == (True, 0)
    assert decode_connack(b"\x00\x87\x00", v5=True) == (False, 0x87)
    with pytest.raises(ProtocolError):
        decode_connack(b"\x00", v5=False)


def test_peak_rate_sliding_window() -> None:
    assert peak_rate([]) == 0
    assert peak_rate([0.0, 0.1, 0.2, 5.0, 5.05]) == 3
    assert peak_rate([0.0, 0.5, 0.99, 1.5, 2.4], window_s=1.0) == 3
