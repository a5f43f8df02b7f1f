"""Fixtures for the fingerprint tests: the emulator on a real pty, the production driver on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.drivers.fingerprint.config import FingerprintConfig
from appliance.drivers.fingerprint.device import FingerprintSensor
from appliance.drivers.fingerprint.emulator import FingerprintEmulator

PROFILES = ["r307", "r503", "as608"]


class Events(list[tuple[str, dict[str, Any]]]):
    """An EventSink that records (type, data)."""

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        self.append((kind, data))

    def health_states(self) -> list[str]:
        return [d["state"] for k, d in self if k == "device.health"]


@pytest.fixture
def make_emulator() -> Iterator[Callable[..., FingerprintEmulator]]:
    """Start emulators on ptys (unpaced unless asked); all are stopped at teardown."""
    made: list[FingerprintEmulator] = []

    def make(
        profile: str = "r307", *, link: Path | None = None, start: bool = True, **kw: Any
    ) -> FingerprintEmulator:
        kw.setdefault("pace", False)
        emu = FingerprintEmulator(profile, **kw)
        made.append(emu)
        if start:
            emu.start_pty(link)
        return emu

    yield make
    for emu in made:
        emu.stop()


@pytest.fixture
def make_sensor() -> Iterator[Callable[..., tuple[FingerprintSensor, Events]]]:
    """The production driver, started, with fast test timeouts; stopped at teardown."""
    made: list[FingerprintSensor] = []

    def make(
        port: str, *, start: bool = True, **overrides: Any
    ) -> tuple[FingerprintSensor, Events]:
        overrides.setdefault("command_timeout_s", 0.5)
        overrides.setdefault("reconnect_interval_s", 0.05)
        overrides.setdefault("capture_poll_s", 0.0)
        events = Events()
        dev = FingerprintSensor(FingerprintConfig(port=port, **overrides), events)
        made.append(dev)
        if start:
            dev.start()
        return dev, events

    yield make
    for dev in made:
        dev.stop()


@pytest.fixture(params=PROFILES)
def profile(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def kit(
    profile: str,
    make_emulator: Callable[..., FingerprintEmulator],
    make_sensor: Callable[..., tuple[FingerprintSensor, Events]],
) -> tuple[FingerprintEmulator, FingerprintSensor]:
    """An emulator of each profile with the driver connected to it over a pty."""
    emu = make_emulator(profile)
    assert emu.path is not None
    dev, _ = make_sensor(emu.path, model=profile)
    assert dev.health().state == "ok"
    return emu, dev
