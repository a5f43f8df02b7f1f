"""Fleet jobs and software updates (docs/performance.md, "Fleet jobs and updates"):

1. time from the creation of a command job to every one of N simulated kiosks (default 1,000,
   fleet/simjobs.py) reporting its final state, against the same fleet-side client publishing
   N QoS 1 messages (the floor of any job: one signed retained document per kiosk);
2. the download rate of a release bundle in chunks over MQTT (request, chunk, append, fsync:
   update/agent.py against fleet/jobs_bundles.py) as a share of the MQTT link's throughput
   measured in the same run (the same bytes streamed as QoS 1 publishes of the same size);
3. kiosk downtime during a switch: from SIGTERM of the running daemon to READY=1 of the next
   one started through the update guard (guard.py, then `appliance run`, which finds its
   trial), against a plain restart without the guard, in the same run. systemd's
   ``RestartSec=`` (2 s in the shipped unit) comes on top of both.

    .venv/bin/python bench/fleet_jobs.py [--kiosks 1000] [--bundle-mb 16] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import daemon_config, emit, start_daemon, stop
from nacl.signing import SigningKey

from appliance.devtools.broker import Mosquitto
from appliance.fleet.jobs import JobRunner, JobStore, Rollout
from appliance.fleet.jobs_bundles import BundleServer
from appliance.fleet.sim import FleetConfig, FleetSim
from appliance.fleet.simjobs import SimJobs
from appliance.mqttclient import BrokerOptions, FleetMqtt
from appliance.trust.certs import FleetRoot, OperatorKey
from appliance.update import guard as g
from appliance.update import topics
from appliance.update.agent import CHUNK, WINDOW, Download, Fetcher, split_chunk


def _admin(home: Path) -> OperatorKey:
    root = FleetRoot.create(home)
    sk = SigningKey.generate()
    cert = root.issue(
        bytes(sk.verify_key), roles=("admin",), devices=("*",), not_after=int(time.time()) + 3600
    )
    return OperatorKey(sk, cert)


def _wait(cond: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.02)


def bench_job(broker: Mosquitto, work: Path, n: int) -> dict[str, float]:
    prefix = "bj"
    sim = FleetSim(
        FleetConfig(
            host=broker.host, port=broker.port, devices=n, topic_prefix=prefix,
            heartbeat_s=3600.0, connect_rate=2000, reconnect_min_s=0.05, reconnect_max_s=1.0,
        )
    )  # fmt: skip
    sim.extensions.append(SimJobs())
    sim.start()
    try:
        _wait(lambda: sim.connected_count() == n, 120)
        mqtt = FleetMqtt(BrokerOptions(broker.host, broker.port, prefix)).connect()
        # Baseline: N QoS 1 publishes of a document-sized payload by the same client.
        body = b"x" * 1200
        t0 = time.perf_counter()
        for i in range(n):
            mqtt.publish(f"{prefix}/baseline/{i}", body)
        base = time.perf_counter() - t0
        store = JobStore(work / "fleet")
        runner = JobRunner(store, mqtt, _admin(work / "root"), prefix=prefix, verify=None)
        devices = [f"sim-{i:05d}" for i in range(n)]
        t0 = time.perf_counter()
        job = store.create("command", {"cmd": "ping", "args": {}}, {}, devices, Rollout(),
                           int(time.time()) + 600)  # fmt: skip
        p = runner.run(job.id, timeout=600, poll_s=0.05)
        took = time.perf_counter() - t0
        assert p.state == "completed" and p.counts == {"succeeded": n}, p
        mqtt.close()
        store.close()
    finally:
        sim.stop()
    return {
        "kiosks": n,
        "job_to_all_final_s": round(took, 3),
        "baseline_publish_n_s": round(base, 3),
        "ratio_job_over_publish": round(took / base, 2),
    }


def bench_download(broker: Mosquitto, work: Path, mb: int) -> dict[str, float]:
    prefix, dev = "bd", "k1"
    data = os.urandom(mb * 1024 * 1024)
    bundle = work / "bundle.bin"
    bundle.write_bytes(data)
    fleet = FleetMqtt(BrokerOptions(broker.host, broker.port, prefix)).connect()
    kiosk = FleetMqtt(BrokerOptions(broker.host, broker.port, prefix)).connect()
    # Link: the same bytes as QoS 1 publishes of CHUNK bytes, fleet -> kiosk.
    q = kiosk.collector(f"{prefix}/{dev}/link")
    kiosk.subscribe([f"{prefix}/{dev}/link"])
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    t0 = time.perf_counter()
    for c in chunks:
        fleet.publish(f"{prefix}/{dev}/link", c)
    for _ in chunks:
        q.get(timeout=60)
    link = time.perf_counter() - t0
    # Download: request -> chunk -> append + fsync, as update/agent.py does.
    server = BundleServer(fleet, prefix)
    sha = server.add(bundle)
    server.start()
    dq = kiosk.collector(topics.update_data(prefix, dev))
    kiosk.subscribe([topics.update_data(prefix, dev)])
    d = Download(work / "download.part", sha, len(data))

    def request(offset: int, length: int) -> None:
        req = f'{{"sha256":"{sha}","offset":{offset},"length":{length}}}'.encode()
        kiosk.publish(topics.update_get(prefix, dev), req)

    fetcher = Fetcher(d, request)
    t0 = time.perf_counter()
    fetcher.start()
    done = False
    while not done:
        try:
            header, body = split_chunk(dq.get(timeout=30).payload)
        except queue.Empty:
            raise SystemExit("no chunk") from None
        done = fetcher.on_chunk(header, body)
    dl = time.perf_counter() - t0
    server.stop()
    fleet.close()
    kiosk.close()
    return {
        "bundle_mb": mb,
        "chunk_kib": CHUNK // 1024,
        "window": WINDOW,
        "link_mb_s": round(mb / link, 2),
        "download_mb_s": round(mb / dl, 2),
        "download_share_of_link": round(link / dl, 3),
    }


def _ready(sock: socket.socket) -> None:
    while b"READY=1" not in sock.recv(4096):
        pass


def bench_switch(broker: Mosquitto, work: Path, runs: int) -> dict[str, float]:
    root, state = work / "opt", work / "sw" / "state"
    for v in ("0.1.0", "0.2.0"):
        (root / g.RELEASES / v).mkdir(parents=True, exist_ok=True)
    g.point_current(root, "releases/0.1.0")
    shutil.copy(g.__file__, root / "guard.py")
    cfg = daemon_config(work / "sw", broker.port, "bench-switch")
    sock_path = str(work / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(60)
    env = {"NOTIFY_SOCKET": sock_path, "APPLIANCE_UPDATE_ROOT": str(root)}
    guard = [sys.executable, str(root / "guard.py"), "--root", str(root), "--state-dir", str(state)]
    plain, switched = [], []
    p = start_daemon(cfg, state, env)
    _ready(sock)
    try:
        for i in range(runs):
            for kind in ("plain", "switch"):
                if kind == "switch":
                    frm, to = ("releases/0.1.0", "releases/0.2.0") if i % 2 == 0 else (
                        "releases/0.2.0", "releases/0.1.0")  # fmt: skip
                    g.write_journal(state, {"state": "switching", "from": frm, "to": to})
                t0 = time.perf_counter()
                p.send_signal(signal.SIGTERM)
                p.wait(30)
                if kind == "switch":
                    subprocess.run(guard, check=True)
                p = start_daemon(cfg, state, env)
                _ready(sock)
                (plain if kind == "plain" else switched).append(time.perf_counter() - t0)
                if kind == "switch":  # end the trial as committed, like a healthy one
                    j = g.read_journal(state)
                    assert j is not None and j["state"] == "trial", j
                    g.set_state(state, j, "committed")
    finally:
        stop(p)
    return {
        "runs": runs,
        "plain_restart_stop_to_ready_s": round(statistics.median(plain), 3),
        "switch_stop_to_ready_s": round(statistics.median(switched), 3),
        "ratio_switch_over_plain": round(statistics.median(switched) / statistics.median(plain), 2),
        "target_s": 5.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kiosks", type=int, default=1000)
    ap.add_argument("--bundle-mb", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker").start()
        try:
            result = {
                "job": bench_job(broker, work, args.kiosks),
                "download": bench_download(broker, work, args.bundle_mb),
                "switch": bench_switch(broker, work, args.runs),
            }
        finally:
            broker.stop()
    emit("fleet_jobs", result)


if __name__ == "__main__":
    main()
