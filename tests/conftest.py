"""Shared fixtures: a real mosquitto, the daemon as a real subprocess, a controller client.

Nothing here sleeps for a fixed time: every wait is for a condition (a CONNACK, a message, a
datagram, a process exit) with a deadline.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.devtools.broker import Mosquitto
from appliance.devtools.controller import Controller
from tests.helpers import DaemonProcess


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One mosquitto for the session (tests that stop their broker use ``make_broker``)."""
    m = Mosquitto(tmp_path_factory.mktemp("broker")).start()
    yield m
    m.stop()


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    made: list[Mosquitto] = []

    def make(**kw: Any) -> Mosquitto:
        m = Mosquitto(tmp_path / f"broker{len(made)}", **kw).start()
        made.append(m)
        return m

    yield make
    for m in made:
        m.stop()


@pytest.fixture
def controller(broker: Mosquitto) -> Iterator[Controller]:
    c = Controller(broker.host, broker.port).connect()
    yield c
    c.close()


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    made: list[DaemonProcess] = []

    def make(
        broker: Mosquitto,
        device_id: str = "kiosk-t1",
        extra_toml: str = "",
        env: dict[str, str] | None = None,
    ) -> DaemonProcess:
        d = DaemonProcess(tmp_path / f"d{len(made)}", broker, device_id, extra_toml, env)
        d.workdir.mkdir(parents=True, exist_ok=True)
        made.append(d)
        return d

    yield make
    for d in made:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(15)
    yield path, s
    s.close()
