"""The real daemon, installed side by side (APPLIANCE_UPDATE_ROOT), on the production broker
(mutual TLS, the shipped ACL): a signed update job arrives retained, the bundle comes in
chunks over MQTT, the release is installed beside the running one, the daemon switches and
exits 75 for systemd to start it again through the guard. Its reports are signed with its
device key and verified by the fleet side."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from appliance.devtools.broker import Mosquitto
from appliance.devtools.fleetkit import FleetKit
from appliance.fleet.jobs import JobRunner, JobStore, Rollout
from appliance.fleet.jobs_bundles import sha256_file
from appliance.fleet.release import write_bundle
from appliance.fleet.tools import verify_from
from appliance.mqttclient import FleetMqtt, Message
from appliance.trust.keys import load_public_key
from appliance.update import guard as g
from tests.helpers import DaemonProcess, wait_for

from .wheels import make_wheel


def test_daemon_takes_an_update_job_installs_switches_and_exits_75(
    tmp_path: Path,
    fleet_kit: FleetKit,
    tls_broker: Mosquitto,
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    release = fleet_kit.make_signer("release-t", ("release",))
    wheel = make_wheel(tmp_path / "w", "0.2.0")
    bundle = tmp_path / "kioskdemo-0.2.0.bundle"
    write_bundle(bundle, release, [wheel], wheel, min_from="0.1.0")
    root = tmp_path / "opt"
    (root / g.RELEASES / "0.1.0").mkdir(parents=True)
    (root / g.CURRENT).symlink_to("releases/0.1.0")

    dev = "kiosk-upd1"
    d = daemon_factory(tls_broker, dev, env={"APPLIANCE_UPDATE_ROOT": str(root)})
    d.start()
    pub_file = d.state_dir / "device.pub"
    wait_for(pub_file.exists, 30, d.log)
    device_keys = {dev: load_public_key(pub_file)}

    def verify(device: str, msg: Message) -> bool:
        return verify_from(device_keys, device, msg).ok

    opts = fleet_kit.options(tls_broker.port)
    fleet = FleetMqtt(opts).connect()
    store = JobStore(tmp_path / "fleet")
    runner = JobRunner(store, fleet, fleet_kit.signer("admin"), prefix=opts.prefix, verify=verify)
    spec = {"version": "0.2.0", "sha256": sha256_file(bundle), "size": bundle.stat().st_size,
            "bundle": str(bundle)}  # fmt: skip
    job = store.create("update", spec, {"devices": [dev]}, [dev], Rollout(), int(time.time()) + 600)
    stop = threading.Event()
    driver = threading.Thread(target=lambda: runner.run(job.id, timeout=60), daemon=True)
    try:
        driver.start()
        assert d.proc is not None
        rc = d.proc.wait(60)
        assert rc == 75, d.log()
        assert g.current_target(root) == "releases/0.2.0"
        j = g.read_journal(d.state_dir)
        assert j is not None and j["state"] == "switched" and j["job"] == job.id
        assert (root / "guard.py").exists()
        exe = root / g.CURRENT / "bin" / "kioskdemo"
        assert exe.exists()
        wait_for(
            lambda: store.devices(job.id)[0]["detail"] == "installed; switching when idle",
            15,
            lambda: store.devices(job.id),
        )
        assert store.devices(job.id)[0]["state"] == "in_progress"
        assert runner.rejected == 0  # every report carried the kiosk's verified signature
    finally:
        stop.set()
        store.finish(job.id, "canceled", "test over", now=time.time())
        driver.join(10)
        fleet.close()
        store.close()
