"""A kiosk on the simulated kit in the production configuration (its own certificate, the
shipped ACL, a fleet root): the sim kit accepts signed commands only, and ``appliance status``
on the kiosk reads the retained status the broker keeps for it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable

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
