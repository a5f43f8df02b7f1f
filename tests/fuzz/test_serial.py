"""Fuzzing what the fingerprint sensor sends: the pure packet codec, and the production serial
link reading from a real pty whose far side writes hostile bytes. Every input ends in a packet,
``FrameError`` (codec) or ``ProtocolError``/``DeviceTimeout`` (link), never anything else."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.drivers.fingerprint.frames import (
    DEFAULT_ADDRESS,
    PID,
    FrameError,
    PacketParser,
    SystemParameters,
    build_packet,
    try_parse,
)
from appliance.drivers.fingerprint.link import SerialLink
from appliance.errors import DeviceTimeout, ProtocolError

from ._strategies import FUZZ

pids = st.sampled_from([int(p) for p in PID])
packets = st.builds(build_packet, pids, st.binary(min_size=1, max_size=256))
noise_without_header = st.binary(max_size=64).map(lambda b: b.replace(b"\xef", b"\x00"))


@FUZZ
@given(raw=st.binary(max_size=300))
def test_try_parse_never_raises_anything_else(raw: bytes) -> None:
    try:
        pkt, used = try_parse(raw)
    except FrameError:
        return
    assert (pkt is None and used == 0) or (pkt is not None and 0 < used <= len(raw))


@FUZZ
@given(
    chunks=st.lists(st.one_of(st.binary(max_size=40), packets), max_size=8),
    split=st.integers(1, 17),
)
def test_parser_survives_any_stream_fed_in_any_pieces(chunks: list[bytes], split: int) -> None:
    stream = b"".join(chunks)
    parser = PacketParser()
    for i in range(0, len(stream), split):
        parser.feed(stream[i : i + split])
        while True:
            try:
                if parser.next_packet() is None:
                    break
            except FrameError as exc:
                assert "checksum" in str(exc)
    assert parser.pending <= len(stream)


@FUZZ
@given(
    parts=st.lists(st.tuples(noise_without_header, packets), min_size=1, max_size=5),
    split=st.integers(1, 13),
)
def test_every_packet_in_noise_is_recovered_in_order(
    parts: list[tuple[bytes, bytes]], split: int
) -> None:
    stream = b"".join(noise + pkt for noise, pkt in parts)
    parser = PacketParser()
    got = []
    for i in range(0, len(stream), split):
        parser.feed(stream[i : i + split])
        got.extend(p.encode() for p in parser.packets())
    assert got == [pkt for _noise, pkt in parts]
    assert parser.skipped == sum(len(noise) for noise, _pkt in parts)


@FUZZ
@given(raw=st.binary(max_size=40))
def test_system_parameters_decode(raw: bytes) -> None:
    try:
        params = SystemParameters.decode(raw)
    except FrameError:
        assert len(raw) != 16
        return
    assert params.encode() == raw
    for prop in ("packet_size", "baud"):
        with contextlib.suppress(FrameError):
            getattr(params, prop)


@pytest.fixture(scope="module")
def pty_link() -> Iterator[tuple[int, SerialLink]]:
    master, slave = os.openpty()
    link = SerialLink(os.ttyname(slave), 57600, DEFAULT_ADDRESS)
    link.open()
    yield master, link
    link.close()
    os.close(slave)
    os.close(master)


@FUZZ
@given(
    before=st.binary(max_size=80),
    pkt=packets,
    after=st.binary(max_size=20),
)
def test_link_on_a_real_pty_answers_packet_or_error(
    pty_link: tuple[int, SerialLink], before: bytes, pkt: bytes, after: bytes
) -> None:
    master, link = pty_link
    os.write(master, before + pkt + after)
    try:
        got = link.receive(time.monotonic() + 0.15)
    except (ProtocolError, DeviceTimeout):
        assert b"\xef" in before, "only a header-like byte in the noise may hide the packet"
    else:
        if b"\xef" not in before:
            assert got.encode() == pkt
    link.drain(0.005, 0.2)
