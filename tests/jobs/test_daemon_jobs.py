"""Fleet jobs against the real daemon on the production broker (mutual TLS, the shipped ACL),
reports verified with the kiosk's device key: a configuration job goes through the kiosk's
configuration push (verify, apply by restarting, trial) and its outcome becomes the job's
state; an invalid configuration is reported failed; a command job runs through the
dispatcher with the roles of the job's signer."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from appliance.devtools.broker import Mosquitto
from appliance.devtools.fleetkit import FleetKit
from appliance.fleet.jobs import JobRunner, JobStore, Rollout
from appliance.fleet.tools import verify_from
from appliance.mqttclient import FleetMqtt, Message
from appliance.trust.keys import b64encode, load_public_key
from appliance.update import guard as g
from tests.helpers import DaemonProcess, wait_for


def test_config_and_command_jobs_on_the_real_daemon(
    tmp_path: Path,
    fleet_kit: FleetKit,
    tls_broker: Mosquitto,
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    root = tmp_path / "opt"
    (root / g.RELEASES / "0.1.0").mkdir(parents=True)
    (root / g.CURRENT).symlink_to("releases/0.1.0")
    dev = "kiosk-job1"
    d = daemon_factory(
        tls_broker, dev, "[config_push]\ntrial_timeout_s = 20\n",
        env={"APPLIANCE_UPDATE_ROOT": str(root)},
    )  # fmt: skip
    d.start()
    pub = d.state_dir / "device.pub"
    wait_for(pub.exists, 30, d.log)
    keys = {dev: load_public_key(pub)}

    def verify(device: str, msg: Message) -> bool:
        return verify_from(keys, device, msg).ok

    opts = fleet_kit.options(tls_broker.port)
    fleet = FleetMqtt(opts).connect()
    store = JobStore(tmp_path / "fleet")
    runner = JobRunner(store, fleet, fleet_kit.signer("admin"), prefix=opts.prefix, verify=verify)
    expires = int(time.time()) + 600
    try:
        good = {"content": b64encode(b"[telemetry]\nheartbeat_s = 11\n"), "format": "toml",
                "version": 1}  # fmt: skip
        job = store.create("config", good, {}, [dev], Rollout(), expires)
        p = runner.run(job.id, timeout=60)
        assert p.state == "completed" and p.counts == {"succeeded": 1}, (p, d.log()[-3000:])
        assert "trial passed" in store.devices(job.id)[0]["detail"]

        bad = {"content": b64encode(b"[telemetry]\nheartbeat = 7\n"), "format": "toml",
               "version": 2}  # fmt: skip
        job = store.create("config", bad, {}, [dev], Rollout(), expires)
        p = runner.run(job.id, timeout=60)
        assert p.state == "completed" and p.counts == {"failed": 1}, p
        assert "heartbeat" in store.devices(job.id)[0]["detail"]

        # Command jobs run with the roles of the job's signer: `ping` needs the operator role,
        # which the admin key (admin, technician) lacks and the fleet-all key has.
        ping = {"cmd": "ping", "args": {"echo": "from a job"}}
        job = store.create("command", ping, {}, [dev], Rollout(), expires)
        p = runner.run(job.id, timeout=30)
        detail = store.devices(job.id)[0]["detail"]
        assert p.counts == {"failed": 1} and "forbidden_role" in detail, (p, detail)
        every = JobRunner(
            store, fleet, fleet_kit.signer("fleet-all"), prefix=opts.prefix, verify=verify
        )
        job = store.create("command", ping, {}, [dev], Rollout(), expires)
        p = every.run(job.id, timeout=30)
        assert p.state == "completed" and p.counts == {"succeeded": 1}, p
        assert "from a job" in store.devices(job.id)[0]["detail"]
        assert runner.rejected == 0 and every.rejected == 0
    finally:
        fleet.close()
        store.close()
