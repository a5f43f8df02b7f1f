"""The fast link by default: 115,200 baud and 256-byte packets negotiated on connect, the rate
remembered across restarts (no probing when it is known), and a safe fallback on sensors that
refuse. Real ptys; the emulator paced at the line rate where the rate matters."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.devtools.broker import Mosquitto
from appliance.drivers.fingerprint.device import FingerprintSensor
from appliance.drivers.fingerprint.emulator import FingerprintEmulator
from appliance.drivers.fingerprint.profiles import default_profile_dir
from appliance.resources import profiles_dir
from tests.helpers import DaemonProcess, wait_for

from .conftest import Events

MakeEmu = Callable[..., FingerprintEmulator]
MakeDev = Callable[..., tuple[FingerprintSensor, Events]]


@pytest.mark.parametrize("kit", ["sim", "rpi-r307-pcsc"])
def test_the_kit_profiles_turn_the_fast_link_on(kit: str) -> None:
    with (profiles_dir() / f"{kit}.toml").open("rb") as fh:
        fp = tomllib.load(fh)["hardware"]["fingerprint"]
    assert fp["negotiate_baud"] is True and fp["packet_size"] == 256


@pytest.mark.parametrize("profile", ["r307", "r503", "as608"])
def test_negotiated_rate_is_remembered_and_not_probed_again(
    profile: str, tmp_path: Path, make_emulator: MakeEmu, make_sensor: MakeDev
) -> None:
    flash = tmp_path / "flash.json"
    memo = tmp_path / "fingerprint-link.json"
    emu = make_emulator(profile, pace=True, flash_file=flash)
    kit = {"model": profile, "negotiate_baud": True, "packet_size": 256}
    dev, _ = make_sensor(emu.path, link_state_file=str(memo), **kit)
    assert dev.health().state == "ok"
    assert (dev.baud, dev.packet_size) == (115200, 256) == (emu.baud, emu.packet_size)
    saved = json.loads(memo.read_text())
    assert saved["baud"] == 115200 and saved["packet_size"] == 256
    dev.stop()
    emu.stop()
    # A restart of both: the module kept its settings in flash, the driver its memo.
    emu2 = make_emulator(profile, pace=True, flash_file=flash)
    assert emu2.baud == 115200
    again, _ = make_sensor(emu2.path, link_state_file=str(memo), **kit)
    assert again.health().state == "ok" and again.baud == 115200
    # Found at once: one VfyPwd, no timeout, no SetSysPara.
    assert emu2.received["VfyPwd"] == 1 and emu2.received["SetSysPara"] == 0
    assert again.stats["timeouts"] == 0 and emu2.stats["noise_bytes"] == 0


def test_a_stale_memo_falls_back_to_probing(
    tmp_path: Path, make_emulator: MakeEmu, make_sensor: MakeDev
) -> None:
    memo = tmp_path / "fingerprint-link.json"
    port = str(tmp_path / "ttyFP")
    memo.write_text(json.dumps({"port": port, "model": "r307", "baud": 115200}))
    # The module was replaced by a factory-fresh one at 57600.
    emu = make_emulator("r307", link=Path(port), pace=True)
    dev, _ = make_sensor(port, link_state_file=str(memo), negotiate_baud=True, packet_size=256)
    assert dev.health().state == "ok"
    assert dev.baud == emu.baud == 115200 and emu.packet_size == 256
    assert json.loads(memo.read_text())["baud"] == 115200


def _refusing_profile(tmp_path: Path, **quirks: bool) -> Path:
    text = (default_profile_dir() / "r307.toml").read_text()
    text = text.replace(
        "allowed_baud_n = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]", "allowed_baud_n = [6]"
    )
    codes = "allowed_packet_size_codes"
    text = text.replace(f"{codes} = [0, 1, 2, 3]", f"{codes} = [2]")
    for key, value in quirks.items():
        text += f"{key} = {str(value).lower()}\n"
    path = tmp_path / "r307-refusing.toml"
    path.write_text(text)
    return path


def test_a_sensor_that_refuses_the_fast_link_keeps_working(
    tmp_path: Path, make_emulator: MakeEmu, make_sensor: MakeDev
) -> None:
    emu = make_emulator(str(_refusing_profile(tmp_path)), pace=True)
    memo = tmp_path / "fingerprint-link.json"
    kit = {"negotiate_baud": True, "packet_size": 256, "link_state_file": str(memo)}
    dev, _ = make_sensor(emu.path, **kit)
    assert dev.health().state == "ok"
    assert (dev.baud, dev.packet_size) == (57600, 128) == (emu.baud, emu.packet_size)
    assert dev.template_num() == 0
    assert json.loads(memo.read_text())["refused_baud"] == [115200]
    dev.stop()
    # The refusal is remembered: the next connect does not ask for the rate again.
    asked = emu.received["SetSysPara"]
    again, _ = make_sensor(emu.path, **kit)
    assert again.health().state == "ok" and again.baud == 57600
    assert emu.received["SetSysPara"] == asked + 1  # only the packet size, refused again


def test_a_sensor_that_acks_the_rate_but_does_not_follow(
    tmp_path: Path, make_emulator: MakeEmu, make_sensor: MakeDev
) -> None:
    profile = _refusing_profile(tmp_path, ignores_baud_change=True)
    profile.write_text(
        profile.read_text().replace("allowed_baud_n = [6]", "allowed_baud_n = [6, 12]")
    )
    emu = make_emulator(str(profile), pace=True)
    dev, _ = make_sensor(emu.path, negotiate_baud=True)
    assert dev.health().state == "ok" and dev.baud == emu.baud == 57600
    assert dev.template_num() == 0 and dev.read_sys_para().baud == 57600


def test_the_daemon_remembers_the_negotiated_link_in_its_state_dir(
    broker: Mosquitto, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """The simulated kit as the daemon runs it: the fast link is negotiated at the first start,
    remembered in the state directory (and kept in the emulated module's flash), and found
    again after a restart."""
    d = daemon_factory(broker, "kiosk-fplink")
    text = d.config_path.read_text()
    text = text.replace("[hardware.fingerprint]\nenabled = false\n", "[hardware.fingerprint]\n")
    sim_on = "[simulation]\nfingerprint = true\nline_rate = false\n"
    text = text.replace("[simulation]\nfingerprint = false\n", sim_on)
    d.config_path.write_text(text)
    memo = d.state_dir / "fingerprint-link.json"
    flash = d.state_dir / "sim" / "fingerprint-flash.json"
    connected = "fingerprint sensor r307 on"

    def saved_baud() -> int | None:
        try:
            return int(json.loads(memo.read_text())["baud"])
        except (FileNotFoundError, ValueError, KeyError):
            return None

    d.start()
    wait_for(lambda: saved_baud() == 115200, 30, "the negotiated rate remembered")
    assert json.loads(memo.read_text())["packet_size"] == 256
    assert json.loads(flash.read_text())["baud_n"] == 12
    assert d.terminate() == 0
    d.start()
    wait_for(lambda: d.log().count(connected) >= 2, 30, "the sensor found again after a restart")
    second = d.log().split(connected)[2]
    assert second.split("\n")[0].rstrip().endswith("at 115200 baud, 256-byte packets")
    assert d.terminate() == 0
