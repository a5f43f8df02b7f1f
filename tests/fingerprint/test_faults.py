"""Each emulator fault mode against the production driver over a real pty (and TCP).

Every fault test runs twice (a packet mid-stream of an upload: unpaced only): against the
emulator unpaced, and paced at the real line rate of the kit as it runs (115,200 baud, the rate
the driver negotiates on first contact and the sensor keeps; 10 bit times a byte: an image takes
~3.3 s on the wire), where a stream is still arriving when a fast host would already retry. The
factory rate (57,600 baud) is paced in test_link_speed.py. Each test ends with the sensor
working again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.drivers.fingerprint.device import FingerprintSensor
from appliance.drivers.fingerprint.emulator import FingerprintEmulator
from appliance.drivers.fingerprint.frames import Instruction, pack_image
from appliance.errors import DeviceDisconnected, DeviceTimeout, ProtocolError
from tests.helpers import wait_for

from .conftest import Events

MakeEmu = Callable[..., FingerprintEmulator]
MakeDev = Callable[..., tuple[FingerprintSensor, Events]]


Pair = tuple[FingerprintEmulator, FingerprintSensor]
KIT_BAUD = 115_200  # what the kit's driver switches a sensor to (firmware_profiles: negotiate_baud)


@pytest.fixture(params=["unpaced", "paced"])
def pair(request: pytest.FixtureRequest, make_emulator: MakeEmu, make_sensor: MakeDev) -> Pair:
    emu = make_emulator("r307", pace=request.param == "paced", baud=KIT_BAUD)
    dev, _ = make_sensor(emu.path, baud=KIT_BAUD, command_timeout_s=0.3, health_probe_s=0)
    return emu, dev


@pytest.fixture
def unpaced(make_emulator: MakeEmu, make_sensor: MakeDev) -> Pair:
    emu = make_emulator("r307", pace=False)
    dev, _ = make_sensor(emu.path, command_timeout_s=0.3, health_probe_s=0)
    return emu, dev


def works(emu: FingerprintEmulator, dev: FingerprintSensor) -> None:
    """The sensor answers every kind of reply correctly again (lengths 12, 14, 16, 28, 44)."""
    templates = len(emu.library)
    assert dev.template_num() == templates
    assert dev.read_sys_para().library_size == 1000
    assert isinstance(dev.get_random_code(), int)
    assert dev.read_index_table(0) == set(emu.library)
    assert dev.template_num() == templates


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
    works(emu, dev)


def test_a_dropped_ack_is_retried(pair: tuple[FingerprintEmulator, FingerprintSensor]) -> None:
    emu, dev = pair
    emu.drop_next_packets(1)
    assert dev.template_num() == 0
    assert dev.stats["retries"] == 1 and dev.stats["timeouts"] == 1
    works(emu, dev)


def _dropped_packet_is_retried(emu: FingerprintEmulator, dev: FingerprintSensor, at: int) -> None:
    emu.present_finger(2, "good")
    assert dev.gen_img()
    emu.drop_data_packet(at)
    data, _ = dev.up_image_raw()
    assert data == emu.finger_image(2, "good", 0)
    assert dev.stats["retries"] >= 1
    # The retry waited for the first stream to leave the line: never a second stream queued.
    assert emu.stats["input_during_reply"] == 0
    works(emu, dev)


# The first and the last of the 288 data packets, unpaced and at the real line rate; a packet in
# the middle of the stream unpaced only (at the line rate it is the same path as the others and
# costs another ~15 s of the suite's 15-minute budget).
@pytest.mark.parametrize("where", ["start", "end"])
def test_a_dropped_data_packet_is_noticed_and_the_upload_retried_once(
    pair: Pair, where: str
) -> None:
    _dropped_packet_is_retried(*pair, {"start": 0, "end": 287}[where])


def test_a_dropped_data_packet_mid_stream_unpaced(unpaced: Pair) -> None:
    _dropped_packet_is_retried(*unpaced, 144)


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
    works(emu, dev)  # and the link is in sync again afterwards


def _corrupted_packet_is_retried(emu: FingerprintEmulator, dev: FingerprintSensor, at: int) -> None:
    emu.present_finger(3, "good")
    assert dev.gen_img()
    emu.corrupt_data_packet(at)
    data, _ = dev.up_image_raw()
    assert data == emu.finger_image(3, "good", 0)
    assert dev.stats["retries"] >= 1
    assert emu.stats["input_during_reply"] == 0
    works(emu, dev)


@pytest.mark.parametrize("where", ["start", "end"])  # and mid-stream unpaced, as above
def test_a_corrupted_data_packet_in_an_upload(pair: Pair, where: str) -> None:
    _corrupted_packet_is_retried(*pair, {"start": 0, "end": 287}[where])


def test_a_corrupted_data_packet_mid_stream_unpaced(unpaced: Pair) -> None:
    _corrupted_packet_is_retried(*unpaced, 144)


def test_a_corrupted_early_packet_with_no_retry_left_does_not_break_the_driver(
    pair: Pair,
) -> None:
    emu, dev = pair
    emu.present_finger(3, "good")
    assert dev.gen_img()
    emu.corrupt_data_packet(1)
    with pytest.raises(ProtocolError):
        dev._exchange(Instruction.UpImage, data_len=emu.profile.image_wire_bytes, retries=0)
    # The rest of the image was still on the line: the next commands are answered correctly.
    works(emu, dev)
    data, _ = dev.up_image_raw()
    assert data == emu.finger_image(3, "good", 0)
    assert emu.stats["input_during_reply"] == 0


def test_a_late_reply_is_never_taken_as_the_next_commands_answer(pair: Pair) -> None:
    emu, dev = pair
    emu.library[3] = bytes(512)
    emu.set_busy(0.6)  # the ReadSysPara reply comes after the 0.3 s deadline
    assert dev.read_sys_para().library_size == 1000
    assert dev.stats["timeouts"] >= 1
    works(emu, dev)


def test_a_late_reply_to_a_command_that_gave_up(pair: Pair) -> None:
    emu, dev = pair
    emu.library[5] = bytes(512)
    emu.set_busy(0.6)
    with pytest.raises(DeviceTimeout):
        dev.read_sys_para(retries=0)
    # Its reply arrives while the next command waits: skipped, not taken as the answer.
    assert dev.template_num() == 1
    works(emu, dev)


def test_a_late_image_stream_is_not_followed_by_a_second_one(pair: Pair) -> None:
    emu, dev = pair
    emu.present_finger(4, "good")
    assert dev.gen_img()
    emu.set_busy(0.6)
    data, _ = dev.up_image_raw()
    assert data == emu.finger_image(4, "good", 0)
    assert emu.stats["input_during_reply"] == 0
    works(emu, dev)


def test_busy_sensor_answers_late_within_the_deadline(
    pair: tuple[FingerprintEmulator, FingerprintSensor],
) -> None:
    emu, dev = pair
    emu.set_busy(0.15)  # < command_timeout_s
    assert dev.template_num() == 0
    assert dev.stats["retries"] == 0
    works(emu, dev)


def test_busy_beyond_the_deadline_then_recovers(
    pair: tuple[FingerprintEmulator, FingerprintSensor],
) -> None:
    emu, dev = pair
    emu.set_busy(0.5)  # > command_timeout_s: the first attempt times out
    assert dev.template_num() == 0
    assert dev.stats["timeouts"] >= 1
    works(emu, dev)


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
    works(emu, dev)


def test_unplug_during_an_image_upload_then_replug(
    tmp_path: Path, make_emulator: MakeEmu, make_sensor: MakeDev
) -> None:
    """Paced only (unpaced unplug and replug: test_hotplug.py)."""
    link = tmp_path / "ttyFP"
    emu = make_emulator("r307", link=link, pace=True)
    dev, _ = make_sensor(str(link), command_timeout_s=0.3, health_probe_s=0)
    emu.present_finger(5, "good")
    assert dev.gen_img()
    errors: list[BaseException] = []

    def upload() -> None:
        try:
            dev.up_image_raw()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=upload)
    t.start()
    link_ = dev._link
    assert link_ is not None
    wait_for(lambda: link_.bytes_in > 5000, 10, "the image stream under way")
    emu.unplug()
    t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], DeviceDisconnected)
    emu.replug()
    wait_for(lambda: dev.health().state == "ok", 10, "reconnection")
    works(emu, dev)
    emu.present_finger(6, "good")
    assert dev.gen_img()
    data, _ = dev.up_image_raw()
    assert data == emu.finger_image(6, "good", 0)


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
