"""Every device command of the production driver against the emulator over a real pty."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest

from appliance.drivers.fingerprint.device import FingerprintSensor
from appliance.drivers.fingerprint.emulator import FingerprintEmulator
from appliance.drivers.fingerprint.frames import PACKET_SIZES, SysParam
from appliance.errors import ConfigError, DeviceError, DeviceStatusError, DeviceTimeout

from .conftest import Events

Kit = tuple[FingerprintEmulator, FingerprintSensor]


def test_connect_reads_system_parameters(kit: Kit) -> None:
    emu, dev = kit
    sp = dev.read_sys_para()
    assert sp.library_size == emu.profile.library.library_size
    assert sp.baud == 57600 and sp.packet_size == 128
    assert sp.password_verified and not sp.busy
    h = dev.health()
    assert h.state == "ok" and h.info["model"] == emu.profile.model


def test_gen_img_without_finger_is_false(kit: Kit) -> None:
    _, dev = kit
    assert dev.gen_img() is False


@pytest.mark.parametrize("size", PACKET_SIZES)
def test_up_image_in_every_packet_size(kit: Kit, size: int) -> None:
    emu, dev = kit
    dev.set_packet_size(size)
    assert dev.read_sys_para().packet_size == size == emu.packet_size
    emu.present_finger(3, "good")
    assert dev.gen_img() is True
    img = dev.up_image()
    assert img.shape == (emu.profile.image.height, emu.profile.image.width)
    expected = np.frombuffer(emu.finger_image(3, "good", 0), dtype=np.uint8)
    from appliance.drivers.fingerprint.frames import pack_image

    assert pack_image(img) == expected.tobytes()
    assert dev.read_sys_para().image_valid


def test_down_image_then_up_image_round_trips(kit: Kit) -> None:
    emu, dev = kit
    rng = np.random.default_rng(1)
    shape = (emu.profile.image.height, emu.profile.image.width)
    img = (rng.integers(0, 16, shape) * 17).astype(np.uint8)
    dev.down_image(img)
    assert np.array_equal(dev.up_image(), img)
    with pytest.raises(ValueError):
        dev.down_image(img[:10])


def test_enroll_store_search_load_delete(kit: Kit) -> None:
    emu, dev = kit
    emu.present_finger(5, "good", captures=2)
    assert dev.gen_img()
    dev.img2tz(1)
    assert dev.gen_img()
    dev.img2tz(2)
    assert dev.match() is not None
    dev.reg_model()
    dev.store(1, 7)
    assert dev.template_num() == 1
    assert dev.read_index_table(0) == {7}
    hit = dev.search(1)
    assert hit is not None and hit.page_id == 7
    assert dev.search(1, fast=True) == hit
    assert dev.search(1, start=8, count=10) is None  # failed search: page/score as zeros
    template = dev.up_char(1)
    assert len(template) == emu.profile.library.template_bytes
    dev.load_char(2, 7)
    assert dev.up_char(2) == template
    dev.delete_char(7)
    assert dev.template_num() == 0
    with pytest.raises(DeviceStatusError) as err:
        dev.load_char(1, 7)
    assert err.value.status == 0x0C


def test_down_char_uploads_a_template_that_then_matches(kit: Kit) -> None:
    emu, dev = kit
    emu.present_finger(9, "good", captures=2)
    assert dev.gen_img()
    dev.img2tz(1)
    char = dev.up_char(1)
    assert len(char) == emu.profile.library.char_file_bytes
    dev.down_char(2, char)
    assert dev.up_char(2) == char
    assert dev.match() is not None
    # The packet size is back to what it was after the DownChar quirk handling.
    assert dev.packet_size == emu.packet_size == 128
    with pytest.raises(ValueError):
        dev.down_char(1, b"short")


def test_r307_down_char_quirk_uses_32_byte_packets(
    make_emulator: Callable[..., FingerprintEmulator],
    make_sensor: Callable[..., tuple[FingerprintSensor, Events]],
) -> None:
    emu = make_emulator("r307")
    dev, _ = make_sensor(emu.path, model="r307")
    dev.set_packet_size(256)
    char = bytes(range(256))
    dev.down_char(1, char)
    assert dev.up_char(1) == char
    assert emu.packet_size == 256
    # The same transfer in 256-byte packets, as the public libraries do, is lost (spec).
    emu.remove_finger()
    from appliance.drivers.fingerprint.frames import Instruction

    dev._exchange(Instruction.DownChar, b"\x02", retries=0)
    dev._send_data(char, 256)
    with pytest.raises(DeviceStatusError) as err:
        dev.up_char(2)
    assert err.value.status == 0x0D


def test_match_of_different_fingers_and_merge_failure(kit: Kit) -> None:
    emu, dev = kit
    emu.present_finger(1, "good")
    emu.present_finger(2, "good")
    assert dev.gen_img()
    dev.img2tz(1)
    assert dev.gen_img()
    dev.img2tz(2)
    assert dev.match() is None
    with pytest.raises(DeviceStatusError) as err:
        dev.reg_model()
    assert err.value.status == 0x0A


def test_img2tz_before_up_image_leaves_a_black_image(kit: Kit) -> None:
    emu, dev = kit
    emu.present_finger(2, "good")
    assert dev.gen_img()
    dev.img2tz(1)
    assert int(dev.up_image().max()) == 0


def test_img2tz_refuses_poor_fingers(kit: Kit) -> None:
    emu, dev = kit
    emu.present_finger(2, "partial")
    assert dev.gen_img()
    with pytest.raises(DeviceStatusError) as err:
        dev.img2tz(1)
    assert err.value.status == 0x07 and err.value.retryable


def test_page_and_buffer_arguments_are_checked_before_sending(kit: Kit) -> None:
    emu, dev = kit
    before = emu.stats["commands"]
    for call in (
        lambda: dev.store(3, 1),
        lambda: dev.store(1, emu.profile.library.library_size),
        lambda: dev.delete_char(0, 0),
        lambda: dev.read_index_table(4),
        lambda: dev.write_notepad(16, bytes(32)),
        lambda: dev.set_security_level(6),
    ):
        with pytest.raises(ValueError):
            call()
    assert emu.stats["commands"] == before


def test_empty_clears_the_library(kit: Kit) -> None:
    emu, dev = kit
    emu.library.update({1: bytes(512), 2: bytes(512)})
    assert dev.template_num() == 2
    dev.empty()
    assert dev.template_num() == 0 and emu.library == {}


def test_security_level_notepad_and_random_code(kit: Kit) -> None:
    emu, dev = kit
    dev.set_security_level(5)
    assert dev.read_sys_para().security_level == 5 == emu.security_level
    dev.write_notepad(3, b"k" * 32)
    assert dev.read_notepad(3) == b"k" * 32
    assert {dev.get_random_code() for _ in range(3)} != {0}


def test_bad_sys_para_register_is_invalid_register(kit: Kit) -> None:
    _, dev = kit
    with pytest.raises(DeviceStatusError) as err:
        dev.set_sys_para(SysParam.PACKET_SIZE, 9)
    assert err.value.status == 0x1A


def test_r503_only_commands(
    make_emulator: Callable[..., FingerprintEmulator],
    make_sensor: Callable[..., tuple[FingerprintSensor, Events]],
) -> None:
    emu = make_emulator("r503")
    dev, _ = make_sensor(emu.path, model="r503")
    dev.aura_led_config(1, 128, 2, 0)
    assert emu.led == (1, 128, 2, 0)
    assert dev.get_echo() is True
    emu.verified = True
    dev.soft_reset()  # ack then a 0x55 byte that the link must skip
    assert dev.read_sys_para().library_size == 200
    r307 = make_emulator("r307")
    dev307, _ = make_sensor(r307.path, model="r307")
    with pytest.raises(DeviceError) as err:
        dev307.aura_led_config(1, 128, 2, 0)
    assert err.value.code == "unsupported"
    with pytest.raises(DeviceError):
        dev307.soft_reset()


def test_password_rules(
    make_emulator: Callable[..., FingerprintEmulator],
    make_sensor: Callable[..., tuple[FingerprintSensor, Events]],
) -> None:
    emu = make_emulator("r307", password=0x1234)
    wrong, _ = make_sensor(emu.path, password=0x9999)
    assert wrong.health().state == "error"
    assert "wrong password" in (wrong.health().detail or "")
    wrong.stop()
    dev, _ = make_sensor(emu.path, password=0x1234)
    assert dev.health().state == "ok"
    assert dev.read_sys_para().password_verified
    # Until VfyPwd, everything else is refused with 0x21.
    emu.verified = False
    with pytest.raises(DeviceStatusError) as err:
        dev.template_num()
    assert err.value.status == 0x21
    dev.vfy_pwd()
    dev.set_pwd(0)
    assert emu.password == 0


def test_packets_for_another_address_are_not_answered(
    make_emulator: Callable[..., FingerprintEmulator],
    make_sensor: Callable[..., tuple[FingerprintSensor, Events]],
) -> None:
    emu = make_emulator("r307", address=0x0000_0001)
    dev, _ = make_sensor(emu.path, command_timeout_s=0.2, retries=0)
    assert dev.health().state == "error"
    dev.stop()
    dev2, _ = make_sensor(emu.path, address=1)
    assert dev2.health().state == "ok"


def test_capture_waits_for_the_finger(kit: Kit) -> None:
    emu, dev = kit
    emu.present_finger(4, "good", after_polls=3, captures=1)
    cap = dev.capture(time.monotonic() + 5)
    assert cap.image.shape == (288, 256)
    with pytest.raises(DeviceTimeout) as err:
        dev.capture(time.monotonic() + 0.2)
    assert err.value.code == "no_finger"


def test_negotiates_the_fastest_baud_and_finds_it_again(
    make_emulator: Callable[..., FingerprintEmulator],
    make_sensor: Callable[..., tuple[FingerprintSensor, Events]],
) -> None:
    emu = make_emulator("r503")
    dev, _ = make_sensor(emu.path, model="r503", negotiate_baud=True)
    assert dev.baud == 115200 == emu.baud
    assert dev.read_sys_para().baud_n == 12
    dev.stop()
    # The sensor keeps its rate; a host configured for 57600 finds it by probing.
    again, _ = make_sensor(emu.path, model="r503", negotiate_baud=True, command_timeout_s=0.2)
    assert again.health().state == "ok" and again.baud == 115200
    again.stop()
    # Without negotiation a wrong rate is just silence: the UART sees framing errors.
    plain, _ = make_sensor(emu.path, model="r503", command_timeout_s=0.2, retries=0)
    assert plain.health().state == "error"
    assert emu.stats["noise_bytes"] > 0


def test_r503_refuses_a_baud_outside_its_list(
    make_emulator: Callable[..., FingerprintEmulator],
    make_sensor: Callable[..., tuple[FingerprintSensor, Events]],
) -> None:
    emu = make_emulator("r503")
    dev, _ = make_sensor(emu.path, model="r503")
    with pytest.raises(ConfigError):
        dev.set_baud(28800)  # N = 3
    dev.set_baud(19200)
    assert emu.baud == 19200 and dev.read_sys_para().baud == 19200


def test_bad_configuration_is_a_config_error() -> None:
    from appliance.drivers.fingerprint.config import FingerprintConfig

    with pytest.raises(ConfigError, match="model"):
        FingerprintSensor(FingerprintConfig(model="r999"), None)
    with pytest.raises(ConfigError, match="baud"):
        FingerprintSensor(FingerprintConfig(baud=50000), None)
