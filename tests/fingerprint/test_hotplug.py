"""Unplug and re-plug: health turns to disconnected (status and event) and comes back alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.drivers.fingerprint.device import FingerprintSensor
from appliance.drivers.fingerprint.emulator import FingerprintEmulator
from appliance.errors import DeviceDisconnected
from tests.helpers import wait_for

from .conftest import Events

MakeEmu = Callable[..., FingerprintEmulator]
MakeDev = Callable[..., tuple[FingerprintSensor, Events]]


def test_start_without_the_port_does_not_raise_and_connects_when_it_appears(
    tmp_path: Path, make_emulator: MakeEmu, make_sensor: MakeDev
) -> None:
    link = tmp_path / "ttyFP0"
    dev, events = make_sensor(str(link))
    assert dev.health().state == "disconnected"
    with pytest.raises(DeviceDisconnected) as err:
        dev.template_num()
    assert err.value.retryable
    make_emulator("r307", link=link)
    wait_for(lambda: dev.health().state == "ok", 5, "reconnection")
    assert dev.template_num() == 0
    assert events.health_states() == ["disconnected", "ok"]


def test_unplug_while_idle_is_noticed_and_replug_reconnects(
    tmp_path: Path, make_emulator: MakeEmu, make_sensor: MakeDev
) -> None:
    link = tmp_path / "ttyFP1"
    emu = make_emulator("r307", link=link)
    dev, events = make_sensor(str(link), health_probe_s=0.05)
    assert dev.health().state == "ok"
    emu.library[4] = bytes(512)
    emu.unplug()
    assert not link.exists()
    wait_for(lambda: dev.health().state == "disconnected", 5, "disconnected health")
    assert any(
        k == "device.health" and d["state"] == "disconnected" and d["device"] == "fingerprint"
        for k, d in events
    )
    with pytest.raises(DeviceDisconnected):
        dev.read_sys_para()
    emu.replug()
    assert link.exists()
    wait_for(lambda: dev.health().state == "ok", 5, "reconnection")
    # A new pty behind the same link; the flash library survived the power cycle.
    assert dev.template_num() == 1
    assert events.health_states()[-2:] == ["disconnected", "ok"]
    assert dev.stats["connects"] >= 2


def test_unplug_during_a_command_raises_disconnected_then_recovers(
    tmp_path: Path, make_emulator: MakeEmu, make_sensor: MakeDev
) -> None:
    link = tmp_path / "ttyFP2"
    emu = make_emulator("r307", link=link)
    dev, _ = make_sensor(str(link), health_probe_s=0)
    emu.set_silent(True)
    emu.unplug()
    with pytest.raises(DeviceDisconnected):
        dev.read_sys_para()
    assert dev.health().state == "disconnected"
    emu.set_silent(False)
    emu.replug()
    wait_for(lambda: dev.health().state == "ok", 5, "reconnection")
    assert dev.read_sys_para().library_size == 1000


def test_tcp_unplug_and_replug(make_sensor: MakeDev) -> None:
    emu = FingerprintEmulator("r307", pace=False)
    host, port = emu.listen_tcp()
    try:
        dev, _ = make_sensor(f"socket://{host}:{port}", health_probe_s=0.05)
        assert dev.health().state == "ok"
        emu.unplug()
        wait_for(lambda: dev.health().state == "disconnected", 5, "disconnected health")
        emu.replug()
        wait_for(lambda: dev.health().state == "ok", 5, "reconnection")
        assert dev.template_num() == 0
    finally:
        emu.stop()


def test_stop_is_idempotent_and_reports_disabled(
    make_emulator: MakeEmu, make_sensor: MakeDev
) -> None:
    emu = make_emulator("r307")
    dev, _ = make_sensor(emu.path)
    dev.stop()
    dev.stop()
    assert dev.health().state == "disabled"
    assert not dev.connected


def test_a_dead_sensor_behind_a_live_port_turns_health_to_error_and_back(
    make_emulator: MakeEmu, make_sensor: MakeDev
) -> None:
    emu = make_emulator("r307")
    dev, events = make_sensor(emu.path, health_probe_s=0.05, command_timeout_s=0.1)
    emu.set_silent(True)
    wait_for(lambda: dev.health().state == "error", 5, "error health")
    assert "not answering" in (dev.health().detail or "")
    emu.set_silent(False)
    wait_for(lambda: dev.health().state == "ok", 5, "ok health again")
    assert events.health_states() == ["ok", "error", "ok"]
