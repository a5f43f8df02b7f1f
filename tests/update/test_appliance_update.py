"""The appliance itself, updated from one built version to another on the simulated kit over
TLS: two real bundles of this project (every dependency wheel, signed by a release key of the
kit's fleet), 0.1.0 installed side by side and started the way the shipped unit starts it
(guard with --selftest, then current/bin/appliance run, restarted on exit 75), an update job
to 0.2.0 over the production broker, the switch, the guard's self-test of 0.2.0, its trial,
the commit and the job reported succeeded with the kiosk's verified signature."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.devtools.broker import Mosquitto
from appliance.devtools.fleetkit import FleetKit
from appliance.fleet.jobs import JobRunner, JobStore, Rollout
from appliance.fleet.jobs_bundles import sha256_file
from appliance.fleet.release import build_release, build_wheels
from appliance.fleet.tools import verify_from
from appliance.mqttclient import FleetMqtt, Message
from appliance.trust.keys import load_public_key
from appliance.update import guard as g
from appliance.update.installer import Updater
from tests.helpers import ROOT, DaemonProcess, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SELFTEST = "selftest --config {config} --state-dir {state} --device-timeout 5"


@pytest.fixture(scope="module")
def appliance_bundles(
    tmp_path_factory: pytest.TempPathFactory, fleet_kit: FleetKit
) -> Iterator[dict[str, Path]]:
    tmp = tmp_path_factory.mktemp("appliance-bundles")
    release = fleet_kit.make_signer("release-e2e", ("release",))
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True, check=True
    ).stdout
    # The dependencies are the same wheels in both versions: resolve and build them once (the
    # first version's `pip wheel` with its dependencies), then each bundle is its own freshly
    # built project wheel plus those wheels.
    deps = tmp / "wheels"
    deps.mkdir()
    out = {}
    for version in ("0.1.0", "0.2.0"):
        src = tmp / f"src-{version}"
        src.mkdir()
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        pyproject = src / "pyproject.toml"
        pyproject.write_text(
            pyproject.read_text().replace('version = "0.1.0"', f'version = "{version}"', 1)
        )
        if version == "0.1.0":
            build_wheels(src, deps).unlink()  # keep the dependencies only
        out[version] = tmp / f"appliance-{version}.bundle"
        build_release(
            src,
            out[version],
            release,
            min_from="0.1.0",
            with_deps=False,
            extra_wheels=sorted(deps.glob("*.whl")),
        )
    yield out


def _ready(sock: socket.socket, proc: subprocess.Popen[bytes], timeout: float = 90) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if b"READY=1" in sock.recv(4096):
                return True
        except TimeoutError:
            pass
        if proc.poll() is not None:
            return False
    raise AssertionError("the daemon neither became ready nor exited")


def test_appliance_updates_itself_over_tls(
    tmp_path: Path,
    fleet_kit: FleetKit,
    tls_broker: Mosquitto,
    appliance_bundles: dict[str, Path],
) -> None:
    dev = "kiosk-e2e1"
    d = DaemonProcess(
        tmp_path / "kiosk", tls_broker, dev, "[config_push]\ntrial_timeout_s = 30\n", kit=fleet_kit
    )
    root = tmp_path / "opt"
    roots = [load_public_key(fleet_kit.root_pub)]
    first = Updater(root, d.state_dir, roots=roots)
    first.stage(appliance_bundles["0.1.0"])
    first.switch()
    selftest = SELFTEST.format(config=d.config_path, state=d.state_dir)
    guard = [
        sys.executable,
        str(root / "guard.py"),
        "--root",
        str(root),
        "--state-dir",
        str(d.state_dir),
        "--selftest",
        selftest,
    ]
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.5)
    env = {k: v for k, v in os.environ.items() if k != "APPLIANCE_UPDATE_ROOT"}
    env["NOTIFY_SOCKET"] = sock_path
    log = (tmp_path / "daemon.log").open("ab")
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        subprocess.run(guard, check=True, capture_output=True, env=env)
        exe = root / g.CURRENT / "bin" / "appliance"
        p = subprocess.Popen(
            [str(exe), "run", "--config", str(d.config_path), "--state-dir", str(d.state_dir)],
            stdout=log,
            stderr=log,
            env=env,
            cwd=tmp_path,
        )
        procs.append(p)
        return p

    opts = fleet_kit.options(tls_broker.port)
    fleet = FleetMqtt(opts).connect()
    store = JobStore(tmp_path / "fleet")
    try:
        p = start()  # the first start of 0.1.0 is its own trial: commit it
        assert _ready(sock, p), (tmp_path / "daemon.log").read_text()[-3000:]
        wait_for(
            lambda: (first.journal or {}).get("state") == "committed",
            60,
            lambda: (first.journal, (tmp_path / "daemon.log").read_text()[-3000:]),
        )
        keys = {dev: load_public_key(d.state_dir / "device.pub")}

        def verify(device: str, msg: Message) -> bool:
            return verify_from(keys, device, msg).ok

        runner = JobRunner(
            store, fleet, fleet_kit.signer("admin"), prefix=opts.prefix, verify=verify
        )
        bundle = appliance_bundles["0.2.0"]
        spec = {
            "version": "0.2.0",
            "sha256": sha256_file(bundle),
            "size": bundle.stat().st_size,
            "bundle": str(bundle),
        }
        job = store.create("update", spec, {}, [dev], Rollout(), int(time.time()) + 900)
        result: list[object] = []
        driver = threading.Thread(target=lambda: result.append(runner.run(job.id, timeout=400)))
        driver.start()
        assert p.wait(300) == 75, (tmp_path / "daemon.log").read_text()[-3000:]
        p = start()  # systemd: RestartForceExitStatus=75, through the guard
        assert _ready(sock, p), (tmp_path / "daemon.log").read_text()[-3000:]
        driver.join(300)
        assert result and result[0].state == "completed", (
            result,
            store.devices(job.id),
            (tmp_path / "daemon.log").read_text()[-3000:],
        )  # type: ignore[attr-defined]
        assert result[0].counts == {"succeeded": 1}  # type: ignore[attr-defined]
        assert g.current_target(root) == "releases/0.2.0"
        out = subprocess.run(
            [str(root / g.CURRENT / "bin" / "appliance"), "--version"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == "appliance 0.2.0"
        assert runner.rejected == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(20)
        log.close()
        fleet.close()
        store.close()
        sock.close()
