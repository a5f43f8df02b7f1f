"""Each emulator fault mode against the production driver over a real pty (and TCP)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.drivers.fingerprint.device import FingerprintSensor
from appliance.drivers.fingerprint.emulator import FingerprintEmulator
from appliance.drivers.fingerprint.frames import pack_image
from appliance.errors import DeviceTimeout, ProtocolError

from .conftest import Events

MakeEmu = Callable[..., FingerprintEmulator]
MakeDev = Callable[..., tuple[FingerprintSensor, Events]]


@pytest.fixture
def pair(
    make_emulator: MakeEmu, make_sensor: MakeDev
) -> tuple[FingerprintEmulator, FingerprintSensor]:
    emu = make_emulator("r307")
    dev, _ = make_sensor(emu.path, command_timeout_s=0.3)
    return emu, dev


def test_garbage_before_a_reply_is_skipped(
    pair: tuple[FingerprintEmulator, FingerprintSensor],
) -> None:
    emu, dev = pair
    emu.inject_garbage(300)
    assert dev.read_sys_para().library_size == 1000
    assert dev.stats["retries"] == 0
    # Noise may happen to contain EF 01; every byte before the reply is skipped either way.
    assert dev.garbage_bytes >= 300 - 12


def test_garbage_inside_an_image_upload(
    pair: tuple[FingerprintEmulator, FingerprintSensor],
) -> None:
    emu, dev = pair
    emu.present_finger(1, "good")
    assert dev.gen_img()
    emu.inject_garbage(50)
    assert dev.up_image().shape == (288, 256)


def test_one_byte_at_a_time(pair: tuple[FingerprintEmulator, FingerprintSensor]) -> None:
    emu, dev = pair
    emu.set_byte_at_a_time(True)
    emu.present_finger(1, "good")
    assert dev.gen_img()
    data, _ = dev.up_image_raw()
    assert data == emu.finger_image(1, "good", 0)
    assert dev.stats["retries"] == 0


def test_a_dropped_ack_is_retried(pair: tuple[FingerprintEmulator, FingerprintSensor]) -> None:
    emu, dev = pair
    emu.drop_next_packets(1)
    assert dev.template_num() == 0
    assert dev.stats["retries"] == 1 and dev.stats["timeouts"] == 1


def test_a_dropped_data_packet_is_noticed_and_the_upload_retried(
    pair: tuple[FingerprintEmulator, FingerprintSensor],
) -> None:
    emu, dev = pair
    emu.present_finger(2, "good")
    assert dev.gen_img()
    emu.drop_data_packet(100)
    data, _ = dev.up_image_raw()
    assert data == emu.finger_image(2, "good", 0)
    assert dev.stats["retries"] == 1


@pytest.mark.parametrize("fault", ["corrupt", "checksum"])
def test_a_corrupted_reply_is_a_protocol_error_then_retried(
    pair: tuple[FingerprintEmulator, FingerprintSensor], fault: str
) -> None:
    emu, dev = pair
    inject = emu.corrupt_next_packets if fault == "corrupt" else emu.wrong_checksum_next
    inject(1)
    assert dev.read_sys_para().library_size == 1000
    assert dev.stats["retries"] == 1
    # With retries exhausted the error reaches the caller, typed and retryable.
    inject(3)
    with pytest.raises(ProtocolError) as err:
        dev.template_num()
    assert err.value.retryable and err.value.details["device"] == "fingerprint"
    assert dev.template_num() == 0  # and the link is in sync again afterwards


def test_corrupted_data_packet_in_an_upload(
    pair: tuple[FingerprintEmulator, FingerprintSensor],
) -> None:
    emu, dev = pair
    emu.present_finger(3, "good")
    assert dev.gen_img()
    emu.corrupt_data_packet(10)
    data, _ = dev.up_image_raw()
    assert data == emu.finger_image(3, "good", 0)
    assert dev.stats["retries"] == 1


def test_busy_sensor_answers_late_within_the_deadline(
    pair: tuple[FingerprintEmulator, FingerprintSensor],
) -> None:
    emu, dev = pair
    emu.set_busy(0.15)  # < command_timeout_s
    assert dev.template_num() == 0
    assert dev.stats["retries"] == 0


def test_busy_beyond_the_deadline_then_recovers(
    pair: tuple[FingerprintEmulator, FingerprintSensor],
) -> None:
    emu, dev = pair
    emu.set_busy(0.5)  # > command_timeout_s: the first attempt times out
    assert dev.template_num() == 0
    assert dev.stats["timeouts"] >= 1


def test_a_silent_sensor_times_out_quickly_never_hangs(
    pair: tuple[FingerprintEmulator, FingerprintSensor],
) -> None:
    emu, dev = pair
    emu.set_silent(True)
    t0 = time.monotonic()
    with pytest.raises(DeviceTimeout) as err:
        dev.read_sys_para()
    elapsed = time.monotonic() - t0
    # 1 + retries attempts of command_timeout_s each, plus the drains between them.
    assert elapsed < (1 + dev.config.retries) * (0.3 + 0.1) + 1.0
    assert err.value.retryable
    emu.set_silent(False)
    assert dev.template_num() == 0


def test_tcp_transport(make_sensor: MakeDev) -> None:
    emu = FingerprintEmulator("as608", pace=False)
    host, port = emu.listen_tcp()
    try:
        dev, _ = make_sensor(f"socket://{host}:{port}", model="as608")
        assert dev.health().state == "ok"
        emu.present_finger(6, "good")
        cap = dev.capture(time.monotonic() + 3)
        assert pack_image(cap.image) == emu.finger_image(6, "good", 0)
        emu.inject_garbage(20)
        assert dev.template_num() == 0
    finally:
        emu.stop()


def test_spy_url_traces_the_line(
    make_emulator: MakeEmu, make_sensor: MakeDev, tmp_path: Path
) -> None:
    emu = make_emulator("r307")
    trace = tmp_path / "trace.txt"
    dev, _ = make_sensor(f"spy://{emu.path}?file={trace}")
    assert dev.health().state == "ok"
    assert dev.template_num() == 0
    dev.stop()
    text = " ".join(trace.read_text().upper().split())
    # pyserial's hex dump of our TemplateNum command.
    assert "TX 0000 EF 01 FF FF FF FF 01 00 03 1D 00 21" in text
