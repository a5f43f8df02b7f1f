"""The PUBLISH properties the agent packs itself are byte-identical to paho's encoding and
read back by paho as the same properties (MQTT 5.0 section 3.3.2.3)."""

from __future__ import annotations

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.agent.mqtt import publish_properties


@pytest.mark.parametrize(
    ("sig", "corr", "rt"),
    [
        ("a" * 150, None, None),
        (None, b"\x00corr", None),
        ("é" * 200, b"x" * 300, None),  # over 127 bytes: a two-byte Variable Byte Integer
        ("s", b"", None),
        ("s", b"c", "kiosk/k1/directory/reply"),
        (None, None, "r/é"),
    ],
)
def test_packed_like_paho_and_read_back(
    sig: str | None, corr: bytes | None, rt: str | None
) -> None:
    ref = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if rt is not None:
        ref.ResponseTopic = rt
    if corr is not None:
        ref.CorrelationData = corr
    if sig is not None:
        ref.UserProperty = [("sig", sig)]
    packed = publish_properties(sig, corr, rt)
    assert packed is not None
    assert packed.pack() == ref.pack()  # type: ignore[no-untyped-call]
    back = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    back.unpack(packed.pack())  # type: ignore[no-untyped-call]
    assert getattr(back, "ResponseTopic", None) == rt
    assert getattr(back, "CorrelationData", None) == corr
    assert getattr(back, "UserProperty", None) == ([("sig", sig)] if sig is not None else None)


def test_nothing_to_send_is_no_properties() -> None:
    assert publish_properties(None) is None
