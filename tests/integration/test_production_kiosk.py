"""A kiosk on the simulated kit in the production configuration (its own certificate, the
shipped ACL, a fleet root): the sim kit accepts signed commands only, ``appliance status`` on
the kiosk reads the retained status the broker keeps for it, and the broker started as root runs
as the ``mosquitto`` user with its files readable by that user."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.devtools.broker import Mosquitto
from appliance.devtools.controller import Controller
from appliance.devtools.fleetkit import FleetKit
from tests.helpers import ROOT, DaemonProcess, wait_online


def test_sim_kit_accepts_signed_commands_only(
    fleet_kit: FleetKit,
    tls_broker: Mosquitto,
    signed_controller: Controller,
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    dev = "kiosk-prod1"
    d = daemon_factory(tls_broker, dev)
    t0 = time.time()
    d.start()
    wait_online(signed_controller, dev, after=t0)
    assert signed_controller.request(dev, "ping")["ok"] is True
    # Unsigned input (the subject of this test): the sim kit profile no longer allows it.
    with fleet_kit.controller(tls_broker.port, signer=None) as plain:
        reply = plain.request(dev, "ping")
    assert reply["ok"] is False and reply["error"]["code"] == "unsigned", reply


def test_status_reads_the_retained_status_under_the_shipped_acl(
    tls_broker: Mosquitto,
    signed_controller: Controller,
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    dev = "kiosk-prod2"
    d = daemon_factory(tls_broker, dev)
    t0 = time.time()
    d.start()
    wait_online(signed_controller, dev, after=t0)
    # `appliance status` on the kiosk connects with the kiosk's own certificate (the only one
    # it has): the ACL must let it read its own retained status.
    r = subprocess.run(
        [sys.executable, "-m", "appliance", "status", "--config", str(d.config_path),
         "--state-dir", str(d.state_dir), "--json", "--timeout", "10"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert isinstance(out["broker_status"], dict), out["broker_status"]
    assert out["broker_status"]["online"] is True and out["broker_status"]["device"] == dev


@pytest.mark.skipif(os.geteuid() != 0, reason="only root starts mosquitto as another user")
def test_broker_started_as_root_runs_as_the_mosquitto_user(fleet_kit: FleetKit) -> None:
    """mosquitto started by root drops to the ``mosquitto`` user: the broker's files are given
    to that user, and no ``user root`` is needed where that user can reach the directory."""
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no mosquitto user on this machine")
    base = Path(tempfile.mkdtemp(prefix="h4-broker-", dir="/tmp"))
    try:
        base.chmod(0o755)
        broker = fleet_kit.broker(base / "broker").start()
        try:
            assert broker.proc is not None
            conf = broker.conf_path.read_text()
            assert "\nuser root" not in conf and "require_certificate true" in conf
            status = Path(f"/proc/{broker.proc.pid}/status").read_text()
            uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
            assert int(uid) == pwd.getpwnam("mosquitto").pw_uid
            key = base / "broker" / "tls" / "server.key"
            assert key.stat().st_mode & 0o777 == 0o600
            assert key.stat().st_uid == pwd.getpwnam("mosquitto").pw_uid
            with fleet_kit.controller(broker.port, signer=None) as ctl:
                assert ctl.client.is_connected()
        finally:
            broker.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
