"""Shared fixtures: a real mosquitto, the daemon as a real subprocess, a controller client.

The production path: ``fleet_kit`` (a throw-away fleet made with provisioning/issue-device-cert
and the fleet tools), ``tls_broker`` (mosquitto with the shipped configuration: mutual TLS, the
shipped ACL) and ``signed_controller`` (the ``controller`` certificate, every command signed).
``broker``/``controller`` are the plain development pair, for low-level agent tests.

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
from appliance.devtools.fleetkit import FleetKit
from tests.helpers import DaemonProcess


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One mosquitto for the session (tests that stop their broker use ``make_broker``)."""
    m = Mosquitto(tmp_path_factory.mktemp("broker")).start()
    yield m
    m.stop()


@pytest.fixture(scope="session")
def fleet_kit(tmp_path_factory: pytest.TempPathFactory) -> FleetKit:
    """A throw-away fleet (CA, broker/controller/central/claimant certificates, fleet root,
    operator/admin/ingest keys, central enrollment key), shared by the session."""
    return FleetKit(tmp_path_factory.mktemp("fleetkit")).create()


@pytest.fixture(scope="session")
def tls_broker(
    fleet_kit: FleetKit, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mosquitto]:
    """mosquitto with the shipped configuration (mutual TLS, the shipped ACL) for the session."""
    m = fleet_kit.broker(tmp_path_factory.mktemp("tlsbroker")).start()
    yield m
    m.stop()


@pytest.fixture
def make_tls_broker(fleet_kit: FleetKit, tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    made: list[Mosquitto] = []

    def make(**kw: Any) -> Mosquitto:
        m = fleet_kit.broker(tmp_path / f"tlsbroker{len(made)}", **kw).start()
        made.append(m)
        return m

    yield make
    for m in made:
        m.stop()


@pytest.fixture
def signed_controller(fleet_kit: FleetKit, tls_broker: Mosquitto) -> Iterator[Controller]:
    """The fleet's controller identity on the TLS broker, every command signed (all roles)."""
    c = fleet_kit.controller(tls_broker.port, signer="fleet-all").connect()
    yield c
    c.close()


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
def daemon_factory(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., DaemonProcess]]:
    """Daemons as subprocesses. On a TLS broker (``tls_broker``/``make_tls_broker``) the kiosk
    gets its certificate and trust from ``fleet_kit``; ``dev=True`` (unsigned commands) must be
    asked for."""
    made: list[DaemonProcess] = []

    def make(
        broker: Mosquitto,
        device_id: str = "kiosk-t1",
        extra_toml: str = "",
        env: dict[str, str] | None = None,
        *,
        dev: bool = False,
        enrollment_key: bool = True,
    ) -> DaemonProcess:
        kit = None
        if getattr(broker, "tls", None) is not None:
            kit = request.getfixturevalue("fleet_kit")
        d = DaemonProcess(
            tmp_path / f"d{len(made)}",
            broker,
            device_id,
            extra_toml,
            env,
            kit=kit,
            dev=dev,
            enrollment_key=enrollment_key,
        )
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
