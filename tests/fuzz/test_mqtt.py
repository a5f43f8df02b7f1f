"""Fuzzing the fleet simulator's MQTT decoder with hostile broker packets."""

from __future__ import annotations

import asyncio
import contextlib

from hypothesis import given
from hypothesis import strategies as st

from appliance.errors import ProtocolError
from appliance.fleet.sim import decode_connack, decode_properties, decode_publish, read_packet

from ._strategies import FUZZ


@FUZZ
@given(flags=st.integers(0, 15), body=st.binary(max_size=200), v5=st.booleans())
def test_publish_decoder(flags: int, body: bytes, v5: bool) -> None:
    try:
        msg = decode_publish(flags, body, v5=v5)
    except ProtocolError as exc:
        assert exc.code == "protocol_error"
    else:
        assert msg.qos in (0, 1, 2)
        assert len(msg.payload) <= len(body)


@FUZZ
@given(body=st.binary(max_size=60))
def test_properties_and_connack(body: bytes) -> None:
    for fn in (lambda: decode_properties(body, 0), lambda: decode_connack(body, v5=True)):
        with contextlib.suppress(ProtocolError):
            fn()


@FUZZ
@given(stream=st.binary(max_size=100))
def test_stream_framing(stream: bytes) -> None:
    async def run() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(stream)
        reader.feed_eof()
        try:
            while True:
                ptype, flags, _body = await read_packet(reader)
                assert 0 <= ptype <= 15 and 0 <= flags <= 15
        except (asyncio.IncompleteReadError, ProtocolError):
            pass

    asyncio.run(run())
