"""Emulator robustness and the rules a host depends on, seen from a raw serial port."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import serial

from appliance.drivers.fingerprint import frames as f
from appliance.drivers.fingerprint.device import FingerprintSensor
from appliance.drivers.fingerprint.emulator import FingerprintEmulator
from appliance.drivers.fingerprint.profiles import default_profile_dir, load_profile
from appliance.errors import ConfigError

from .conftest import Events

MakeEmu = Callable[..., FingerprintEmulator]
MakeDev = Callable[..., tuple[FingerprintSensor, Events]]

# Fixed reply lengths per instruction (spec, "Sensor behaviour that host software depends on").
REPLY_LEN = {
    f.Instruction.TemplateNum: 14,
    f.Instruction.Match: 14,
    f.Instruction.Search: 16,
    f.Instruction.ReadSysPara: 28,
    f.Instruction.ReadIndexTable: 44,
    f.Instruction.GenImg: 12,
    f.Instruction.Empty: 12,
}


def read_packet(port: serial.Serial, timeout: float = 2.0) -> bytes:
    """One whole packet from a raw port (no driver involved)."""
    parser = f.PacketParser()
    deadline = time.monotonic() + timeout
    raw = b""
    while time.monotonic() < deadline:
        chunk = port.read(max(1, port.in_waiting))
        raw += chunk
        parser.feed(chunk)
        pkt = parser.next_packet()
        if pkt is not None:
            return pkt.encode()
    raise AssertionError(f"no packet; got {raw!r}")


@pytest.mark.parametrize("ins", sorted(REPLY_LEN))
def test_replies_have_fixed_lengths_errors_included(make_emulator: MakeEmu, ins: int) -> None:
    emu = make_emulator("r307")
    params = {
        f.Instruction.Search: bytes([1, 0, 0, 0, 10]),  # empty buffer: a failed search
        f.Instruction.ReadIndexTable: b"\x00",
    }.get(f.Instruction(ins), b"")
    with serial.Serial(emu.path, 57600, timeout=0.05) as port:
        port.write(f.build_command(ins, params))
        reply = read_packet(port)
    assert len(reply) == REPLY_LEN[f.Instruction(ins)]


def test_random_commands_and_noise_never_kill_the_emulator(make_emulator: MakeEmu) -> None:
    emu = make_emulator("r503")
    rng = random.Random(1234)
    answered = 0
    with serial.Serial(emu.path, 57600, timeout=0.05) as port:
        for _ in range(150):
            code = rng.choice([i.value for i in f.Instruction] + [0x00, 0x44, 0xFF])
            if code in (f.Instruction.DownChar, f.Instruction.DownImage, f.Instruction.SoftReset,
                        f.Instruction.SetSysPara, f.Instruction.SetAddr, f.Instruction.SetPwd,
                        f.Instruction.UpImage, f.Instruction.UpChar):  # fmt: skip
                continue  # these change the link or start data streams
            params = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 12)))
            port.write(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 5))))
            port.write(f.build_command(code, params))
            pkt = f.parse_packet(read_packet(port))
            assert pkt.pid == f.PID.ACK and pkt.address == 0xFFFFFFFF
            answered += 1
        # A packet with a bad checksum gets "packet receive error".
        bad = bytearray(f.build_command(f.Instruction.TemplateNum))
        bad[-1] ^= 1
        port.write(bytes(bad))
        assert f.parse_packet(read_packet(port)).confirm == f.Confirm.PACKET_RECEIVE_ERROR
        port.write(f.build_command(f.Instruction.TemplateNum))
        assert f.parse_packet(read_packet(port)).confirm == f.Confirm.OK
    assert answered > 100 and emu.plugged


def test_power_up_handshake_byte_is_skipped_by_the_driver(
    tmp_path: Path, make_emulator: MakeEmu, make_sensor: MakeDev
) -> None:
    text = (default_profile_dir() / "r503.toml").read_text()
    custom = tmp_path / "zfm70.toml"
    custom.write_text(
        text.replace('model = "r503"', 'model = "zfm70"').replace(
            "power_up_handshake = false", "power_up_handshake = true"
        )
    )
    emu = FingerprintEmulator(load_profile(str(custom)), pace=False)
    link = tmp_path / "tty"
    try:
        emu.start_pty(link)
        # The first 0x55 waits in the pty until pyserial flushes it on open; a reboot while
        # the host is connected puts one on the line in front of the next reply.
        dev, _ = make_sensor(str(link), model=str(custom))
        emu.power_cycle()
        assert emu.image is None
        before = dev.garbage_bytes
        assert dev.template_num() == 0
        assert dev.stats["retries"] == 0 and dev.garbage_bytes == before + 1
    finally:
        emu.stop()


def test_set_addr_moves_the_module_and_the_driver_follows(
    make_emulator: MakeEmu, make_sensor: MakeDev
) -> None:
    emu = make_emulator("r307")
    dev, _ = make_sensor(emu.path)
    dev.set_addr(0x0A0B0C0D)
    assert emu.address == 0x0A0B0C0D
    assert dev.read_sys_para().address == 0x0A0B0C0D


def test_profiles_load_and_refuse_bad_files(tmp_path: Path) -> None:
    for model in ("r307", "r503", "as608"):
        p = load_profile(model)
        assert p.model == model and p.image_wire_bytes == 36_864
        assert p.supports(f.Instruction.UpImage)
    assert load_profile("r503").uart.allowed_baud_n == [1, 2, 4, 6, 12]
    assert load_profile("r503").max_baud == 115200
    assert load_profile("r307").quirks.downchar_max_packet_size == 32
    bad = tmp_path / "bad.toml"
    bad.write_text((default_profile_dir() / "r307.toml").read_text() + "\ncolour = 1\n")
    with pytest.raises(ConfigError, match="colour"):
        load_profile(str(bad))
    bad.write_text("model = [")
    with pytest.raises(ConfigError, match="cannot read"):
        load_profile(str(bad))
    with pytest.raises(ConfigError):
        load_profile("../etc/passwd")
    wrong = (default_profile_dir() / "r307.toml").read_text().replace('"GenImg"', '"GenImage"')
    bad.write_text(wrong)
    with pytest.raises(ConfigError, match="unknown instruction"):
        load_profile(str(bad))


def test_commands_written_one_byte_at_a_time_are_reassembled(make_emulator: MakeEmu) -> None:
    emu = make_emulator("r307")
    with serial.Serial(emu.path, 57600, timeout=0.05) as port:
        for byte in f.build_command(f.Instruction.ReadSysPara):
            port.write(bytes([byte]))
            port.flush()
        pkt = f.parse_packet(read_packet(port))
    assert pkt.confirm == f.Confirm.OK and len(pkt.payload) == 17


def test_backend_factory_builds_the_driver_and_it_satisfies_the_interfaces(
    make_emulator: MakeEmu,
) -> None:
    from appliance.devices import Device
    from appliance.drivers import create_device
    from appliance.drivers.fingerprint.config import FingerprintConfig
    from appliance.drivers.fingerprint.interface import FingerprintScanner

    emu = make_emulator("r307")
    events = Events()
    dev = create_device("fingerprint", "serial", FingerprintConfig(port=emu.path), events)
    try:
        assert isinstance(dev, FingerprintSensor)
        assert isinstance(dev, Device) and isinstance(dev, FingerprintScanner)
        assert dev.kind == "fingerprint" and dev.health().state == "starting"
        dev.start()
        assert dev.health().state == "ok"
        assert events.health_states() == ["ok"]
    finally:
        dev.stop()


# --- presentations: one finger stays on the platen ------------------------------------------


def test_a_presented_finger_stays_until_lifted_or_replaced(
    make_emulator: MakeEmu, make_sensor: MakeDev
) -> None:
    emu = make_emulator("r307")
    dev, _ = make_sensor(emu.path)
    emu.present_finger(5, "good")
    for _ in range(3):
        assert dev.gen_img()
    emu.remove_finger()
    assert not dev.gen_img()
    emu.present_finger(5, "good")
    assert dev.gen_img()
    dev.img2tz(1)
    emu.present_finger(6, "good")  # a new finger queued: the first one is lifted
    assert dev.gen_img()
    dev.img2tz(2)
    assert dev.match() is None


def test_the_automatic_finger_is_one_persons_finger(
    make_emulator: MakeEmu, make_sensor: MakeDev
) -> None:
    emu = make_emulator("r307")
    emu.set_auto_finger("good", 2)
    dev, _ = make_sensor(emu.path)

    def until(probe: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 10
        while not probe():
            assert time.monotonic() < deadline

    # Two captures of one placement merge.
    until(dev.gen_img)
    dev.img2tz(1)
    assert dev.gen_img()
    dev.img2tz(2)
    dev.reg_model()
    dev.store(1, 0)
    # Lifted after a while; placed again, it is the same finger: the search finds it.
    until(lambda: not dev.gen_img())
    until(dev.gen_img)
    dev.img2tz(1)
    hit = dev.search(1)
    assert hit is not None and hit.page_id == 0
    # Once its image was uploaded (a kiosk recorded it), the next placement is the next finger.
    until(dev.gen_img)
    first = emu.image_finger
    dev.up_image_raw()
    until(lambda: not dev.gen_img())
    until(dev.gen_img)
    assert emu.image_finger is not None and first is not None
    assert emu.image_finger[0] == first[0] % 10 + 1


def test_gen_img_answers_in_the_sensors_time_even_when_synthesis_is_slow(
    make_emulator: MakeEmu, make_sensor: MakeDev, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance.drivers.fingerprint import emulator as em

    # A loaded machine: synthesising an image takes longer than the R307's capture (0.5 s).
    real = em.generate
    gate = threading.Event()

    def slow(*args: object, **kw: object) -> object:
        gate.wait(5)
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(em, "generate", slow)
    emu = make_emulator("r307", pace=True)
    dev, _ = make_sensor(emu.path, command_timeout_s=2.0)
    emu.present_finger(3, "good")
    assert dev.gen_img()  # answered at the capture time while the synthesis still waits
    assert emu.stats["late_replies"] == 0
    gate.set()
    data, _ = dev.up_image_raw()
    assert data == emu.finger_image(3, "good", 0)
