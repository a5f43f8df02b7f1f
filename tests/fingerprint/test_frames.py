"""The pure codec against worked frames of the ZhianTec user manual ("Packet format")."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.drivers.fingerprint import frames as f


def hx(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# (purpose, bytes) from the spec's "Worked frames" table.
WORKED = {
    "GenImg": "EF01 FFFFFFFF 01 0003 01 0005",
    "no finger": "EF01 FFFFFFFF 07 0003 02 000C",
    "VfyPwd": "EF01 FFFFFFFF 01 0007 13 00000000 001B",
    "ReadSysPara": "EF01 FFFFFFFF 01 0003 0F 0013",
    "ReadSysPara reply": "EF01 FFFFFFFF 07 0013 00 0000 0000 0050 0003 FFFFFFFF 0002 000C 0477",
    "UpChar 1": "EF01 FFFFFFFF 01 0004 08 01 000E",
}


def test_worked_command_frames_are_built_byte_exact() -> None:
    assert f.build_command(f.Instruction.GenImg) == hx(WORKED["GenImg"])
    assert f.build_ack(f.Confirm.NO_FINGER) == hx(WORKED["no finger"])
    assert f.build_command(f.Instruction.VfyPwd, bytes(4)) == hx(WORKED["VfyPwd"])
    assert f.build_command(f.Instruction.ReadSysPara) == hx(WORKED["ReadSysPara"])
    assert f.build_command(f.Instruction.UpChar, b"\x01") == hx(WORKED["UpChar 1"])


@pytest.mark.parametrize("name", sorted(WORKED))
def test_worked_frames_parse_and_reencode(name: str) -> None:
    raw = hx(WORKED[name])
    pkt = f.parse_packet(raw)
    assert pkt.address == 0xFFFFFFFF
    assert pkt.encode() == raw


def test_real_r307_sys_para_reply_decodes() -> None:
    pkt = f.parse_packet(hx(WORKED["ReadSysPara reply"]))
    assert pkt.pid == f.PID.ACK and pkt.confirm == f.Confirm.OK
    assert len(hx(WORKED["ReadSysPara reply"])) == 28  # fixed reply length (spec)
    sp = f.SystemParameters.decode(pkt.payload[1:])
    assert (sp.status, sp.system_id, sp.library_size, sp.security_level) == (0, 0, 0x50, 3)
    assert sp.address == 0xFFFFFFFF
    assert sp.packet_size_code == 2 and sp.packet_size == 128
    assert sp.baud_n == 12 and sp.baud == 115200
    assert sp.encode() == pkt.payload[1:]


def test_checksum_covers_pid_length_and_payload_only() -> None:
    # Header and address are excluded: changing the address leaves the checksum alone.
    a = f.build_command(f.Instruction.GenImg, address=0x12345678)
    assert a[-2:] == hx("0005")
    assert f.checksum(0x01, b"\x01") == 0x0005


def test_every_instruction_and_confirmation_code_matches_the_spec_table() -> None:
    expected = {
        0x01: "GenImg", 0x02: "Img2Tz", 0x03: "Match", 0x04: "Search", 0x05: "RegModel",
        0x06: "Store", 0x07: "LoadChar", 0x08: "UpChar", 0x09: "DownChar", 0x0A: "UpImage",
        0x0B: "DownImage", 0x0C: "DeleteChar", 0x0D: "Empty", 0x0E: "SetSysPara",
        0x0F: "ReadSysPara", 0x12: "SetPwd", 0x13: "VfyPwd", 0x14: "GetRandomCode",
        0x15: "SetAddr", 0x18: "WriteNotepad", 0x19: "ReadNotepad", 0x1B: "HighSpeedSearch",
        0x1D: "TemplateNum", 0x1F: "ReadIndexTable", 0x35: "AuraLedConfig",
        0x3D: "SoftReset", 0x53: "GetEcho",
    }  # fmt: skip
    assert {i.value: i.name for i in f.Instruction} == expected
    codes = {
        0x00, 0x01, 0x02, 0x03, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F,
        0x10, 0x11, 0x13, 0x15, 0x18, 0x1A, 0x1B, 0x1C, 0x1D, 0x1E, 0x1F, 0x20, 0x21, 0x22,
        0x24, 0x26, 0x27, 0x29, 0xFC, 0xFD, 0xFE,
    }  # fmt: skip
    assert {c.value for c in f.Confirm} == codes
    assert all("unknown" not in f.confirm_text(c) for c in codes)
    assert "0x99" in f.confirm_text(0x99)


@pytest.mark.parametrize("size", f.PACKET_SIZES)
def test_data_streams_in_every_packet_size_keep_a_partial_tail(size: int) -> None:
    data = bytes(range(256)) * 3 + b"tail"  # not a multiple of any packet size
    packets = [f.parse_packet(p) for p in f.split_data(data, size)]
    assert all(p.pid == f.PID.DATA for p in packets[:-1])
    assert packets[-1].pid == f.PID.END
    assert all(len(p.payload) == size for p in packets[:-1])
    assert b"".join(p.payload for p in packets) == data
    assert sum(len(p) for p in f.split_data(data, size)) == f.wire_bytes_for(len(data), size)


def test_image_upload_geometry_matches_the_spec() -> None:
    # 36,864 data bytes, 288 packets of 128: ~40,056 bytes on the wire.
    assert f.IMAGE_WIRE_BYTES == 36_864
    assert len(f.split_data(bytes(f.IMAGE_WIRE_BYTES), 128)) == 288
    assert f.wire_bytes_for(f.IMAGE_WIRE_BYTES, 128) == 36_864 + 288 * 11 == 40_032
    # Plus the 12-byte command and the 12-byte ack: the spec's 40,056 bytes.
    command, ack = f.build_command(f.Instruction.UpImage), f.build_ack(f.Confirm.OK)
    assert f.wire_bytes_for(f.IMAGE_WIRE_BYTES, 128) + len(command) + len(ack) == 40_056


def test_upchar_data_packets_have_len_0082() -> None:
    pkts = f.split_data(bytes(512), 128)
    assert all(p[7:9] == hx("0082") for p in pkts)


def test_image_nibbles_pack_high_first_and_round_trip() -> None:
    img = np.array([[0x10, 0x20, 0xF0, 0x00]], dtype=np.uint8)
    assert f.pack_image(img) == bytes([0x12, 0xF0])
    rng = np.random.default_rng(5)
    full = (rng.integers(0, 16, (f.IMAGE_HEIGHT, f.IMAGE_WIDTH)) * 17).astype(np.uint8)
    assert np.array_equal(f.unpack_image(f.pack_image(full)), full)
    with pytest.raises(f.FrameError):
        f.unpack_image(b"\x00" * 10)


def test_parser_resyncs_after_garbage_and_reassembles_bytes_one_at_a_time() -> None:
    good = f.build_ack(f.Confirm.OK, b"\x00\x07")
    stream = b"\x55\x00\xef\xef\x01\x99garbage" + good + b"\xef" + good
    parser = f.PacketParser()
    out = []
    for b in stream:
        parser.feed(bytes([b]))
        out.extend(parser.packets())
    assert [p.encode() for p in out] == [good, good]
    assert parser.skipped > 0 and parser.pending == 0


def test_parser_reports_a_checksum_error_once_then_continues() -> None:
    good = f.build_ack(f.Confirm.OK)
    bad = bytearray(good)
    bad[-1] ^= 0xFF
    parser = f.PacketParser()
    parser.feed(bytes(bad) + good)
    with pytest.raises(f.FrameError, match="checksum"):
        parser.next_packet()
    assert parser.next_packet() == f.parse_packet(good)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        hx("EF02 FFFFFFFF 07 0003 00 000A"),  # bad header
        hx("EF01 FFFFFFFF 05 0003 00 0008"),  # unknown PID
        hx("EF01 FFFFFFFF 07 0001 00"),  # impossible length
        hx("EF01 FFFFFFFF 07 0003 00 000B"),  # wrong checksum
        hx("EF01 FFFFFFFF 07 0003 00 000A 00"),  # trailing byte
    ],
)
def test_malformed_packets_are_refused_clearly(raw: bytes) -> None:
    with pytest.raises(f.FrameError):
        f.parse_packet(raw)


def test_builders_refuse_bad_arguments() -> None:
    with pytest.raises(f.FrameError):
        f.build_packet(0x05, b"\x00")
    with pytest.raises(f.FrameError):
        f.build_packet(f.PID.DATA, bytes(257))
    with pytest.raises(f.FrameError):
        f.split_data(b"x", 100)
    with pytest.raises(f.FrameError):
        f.n_from_baud(50000)
    assert [f.baud_from_n(n) for n in (1, 6, 12)] == [9600, 57600, 115200]
    assert [f.packet_size_code(s) for s in f.PACKET_SIZES] == [0, 1, 2, 3]


@given(
    pid=st.sampled_from(list(f.PID)),
    payload=st.binary(min_size=1, max_size=256),
    address=st.integers(0, 0xFFFFFFFF),
    # Noise without 0xEF: a noise "header" could otherwise claim the real packet's bytes.
    noise=st.lists(st.integers(0, 0xEE), max_size=64).map(bytes),
)
def test_any_packet_survives_leading_noise(
    pid: int, payload: bytes, address: int, noise: bytes
) -> None:
    raw = f.build_packet(pid, payload, address)
    parser = f.PacketParser()
    parser.feed(noise + raw)
    found = []
    while True:
        pkt = parser.next_packet()
        if pkt is None:
            break
        found.append(pkt)
    assert found[-1] == f.Packet(pid, payload, address)
