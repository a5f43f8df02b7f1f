"""Fleet scale: N virtual kiosks on one mosquitto, controller ingest latency, broker CPU and
memory, then the reconnect storm after a broker restart (issue 8 target on 2 cores: 5,000
kiosks at a 10 s heartbeat, p99 ingest latency < 500 ms, every kiosk back < 60 s after a
broker restart).

    .venv/bin/python bench/fleet_scale.py [--devices 5000] [--heartbeat 10] [--steady 40]

Three processes share the 2 cores: mosquitto, the fleet simulator (``appliance.fleet.simcli``,
one asyncio loop, one TCP connection per kiosk) and this process (the controller-side ingest,
paho on MQTT 5). Baseline, measured in the same run: 50 kiosks beating every second on a
fresh broker (the unloaded path); the ratio is the full fleet's p99 over the baseline's.

The reconnect storm uses the daemon's own reconnect settings (``mqtt.reconnect_min_s`` 0.5,
``reconnect_max_s`` 60, full jitter) unless overridden; "back" is a CONNACK at the kiosk
(times recorded by the simulator) and a birth at the ingest.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, emit

from appliance.devtools.broker import Mosquitto, free_port
from appliance.devtools.pki import TestCA
from appliance.fleet.ingest import Ingest, latency_summary
from appliance.fleet.sim import peak_rate

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime (proc(5) fields 14, 15)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def wait(cond: Any, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - t0


class SimProcess:
    def __init__(self, port: int, devices: int, prefix: str, stats: Path, extra: list[str]) -> None:
        self.stats = stats
        self.log = stats.with_suffix(".log")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "appliance.fleet.simcli",
                    "--port", str(port), "--devices", str(devices), "--topic-prefix", prefix,
                    "--no-ingest", "--duration", "3600", "--stats-out", str(stats), *extra,
                ],
                stdout=log, stderr=log, cwd=ROOT,
            )  # fmt: skip

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)
        out: dict[str, Any] = json.loads(self.stats.read_text())
        return out


def phase_fleet(
    broker: Mosquitto,
    ingest: Ingest,
    devices: int,
    prefix: str,
    work: Path,
    steady: float,
    extra: list[str],
    sim_port: int | None = None,
) -> tuple[SimProcess, dict[str, Any]]:
    sim = SimProcess(sim_port or broker.port, devices, prefix, work / f"{prefix}.json", extra)
    t0 = time.monotonic()
    births = lambda: sum(1 for d, _t in ingest.snapshot().births if d.startswith("sim-"))  # noqa: E731
    wait(lambda: births() >= devices, 300, f"{devices} births")
    ramp = time.monotonic() - t0
    mark = len(ingest.snapshot().telemetry_latency)
    b0, s0, w0 = cpu_seconds(broker.proc.pid), cpu_seconds(sim.proc.pid), time.monotonic()  # type: ignore[union-attr]
    time.sleep(steady)
    b1, s1, w1 = cpu_seconds(broker.proc.pid), cpu_seconds(sim.proc.pid), time.monotonic()  # type: ignore[union-attr]
    lat = ingest.snapshot().telemetry_latency[mark:]
    return sim, {
        "devices": devices,
        "ramp_s": round(ramp, 2),
        "steady_s": steady,
        "telemetry_latency": latency_summary(lat),
        "broker_cpu_pct": round(100 * (b1 - b0) / (w1 - w0), 1),
        "broker_rss_mib": rss_mib(broker.proc.pid),  # type: ignore[union-attr]
        "sim_cpu_pct": round(100 * (s1 - s0) / (w1 - w0), 1),
        "sim_rss_mib": rss_mib(sim.proc.pid),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument("--heartbeat", type=float, default=10.0)
    ap.add_argument("--event-rate", type=float, default=1 / 300, help="per kiosk per second")
    ap.add_argument("--steady", type=float, default=40.0, help="seconds measured after the ramp")
    ap.add_argument("--connect-rate", type=float, default=500.0)
    ap.add_argument("--reconnect-min", type=float, default=0.5)
    ap.add_argument("--reconnect-max", type=float, default=60.0)
    ap.add_argument(
        "--down", type=float, default=5.0, help="seconds the broker stays down in the restart"
    )
    ap.add_argument(
        "--tls",
        action="store_true",
        help="kiosks connect with mutual TLS (EC P-256, one shared client certificate) to a "
        "second listener; the ingest stays on the plain one",
    )
    ap.add_argument("--baseline-devices", type=int, default=50)
    ap.add_argument("--baseline-steady", type=float, default=20.0)
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.devices * 2 + 1024  # the broker inherits this limit too
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, need), hard), hard))

    result: dict[str, Any] = {"cores": os.cpu_count(), "heartbeat_s": args.heartbeat}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # -- baseline: 50 kiosks, 1 s heartbeat, its own broker ------------------------------
        with Mosquitto(work / "base-broker") as broker:
            ingest = Ingest(broker.host, broker.port, prefix="base").start()
            sim, base = phase_fleet(
                broker, ingest, args.baseline_devices, "base", work, args.baseline_steady,
                ["--heartbeat", "1"],
            )  # fmt: skip
            sim.stop()
            ingest.stop()
        result["baseline"] = base

        # -- the fleet -------------------------------------------------------------------------
        conf, sim_port, tls_args = "", None, []
        if args.tls:
            ca = TestCA(work / "pki")
            server, client = ca.issue("broker", server=True), ca.issue("sim-kiosk")
            sim_port = free_port()
            conf = (
                f"listener {sim_port} 127.0.0.1\ncafile {ca.cert_path}\n"
                f"certfile {server.cert}\nkeyfile {server.key}\nrequire_certificate true\n"
            )
            tls_args = ["--tls-ca", str(ca.cert_path), "--tls-cert", str(client.cert),
                        "--tls-key", str(client.key)]  # fmt: skip
        result["tls"] = args.tls
        broker = Mosquitto(work / "broker", extra_conf=conf).start()
        ingest = Ingest(broker.host, broker.port, prefix="fleet", client_id="bench-ingest").start()
        extra = [*tls_args,
            "--heartbeat", str(args.heartbeat), "--event-rate", str(args.event_rate),
            "--connect-rate", str(args.connect_rate),
            "--reconnect-min", str(args.reconnect_min), "--reconnect-max", str(args.reconnect_max),
        ]  # fmt: skip
        sim, fleet = phase_fleet(
            broker, ingest, args.devices, "fleet", work, args.steady, extra, sim_port
        )
        result["fleet"] = fleet

        # -- reconnect storm: broker restart (SIGTERM, persistence kept, start again) ---------
        before = len(ingest.snapshot().births)

        def first_births() -> dict[str, float]:
            first: dict[str, float] = {}
            for dev, t in ingest.snapshot().births[before:]:
                first.setdefault(dev, t)
            return first

        restart_at = time.time()
        broker.stop()
        time.sleep(args.down)
        broker.start()
        up_at = time.time()
        b0, w0 = cpu_seconds(broker.proc.pid), time.monotonic()  # type: ignore[union-attr]
        try:
            wait(lambda: len(first_births()) >= args.devices, 180, "every kiosk reborn")
        except SystemExit as exc:
            print(exc, file=sys.stderr)
        b1, w1 = cpu_seconds(broker.proc.pid), time.monotonic()  # type: ignore[union-attr]
        first = first_births()
        births_after = len(ingest.snapshot().births) - before
        sim_stats = sim.stop()
        seen = ingest.stop()
        broker.stop()
        connacks = sorted(t for t in sim_stats["connect_times"] if t > restart_at)
        back = sorted(first.values())
        complete = len(first) >= args.devices
        result["storm"] = {
            "broker_down_s": round(up_at - restart_at, 3),
            "kiosks_back": len(first),
            "all_back_s": round(back[-1] - restart_at, 2) if complete else None,
            "all_back_after_broker_up_s": round(back[-1] - up_at, 2) if complete else None,
            "p50_back_s": round(back[len(back) // 2] - restart_at, 2) if back else None,
            "peak_connacks_per_s": peak_rate(connacks),
            "connacks": len(connacks),
            "extra_births": births_after - len(first),
            "broker_cpu_pct_during_storm": round(100 * (b1 - b0) / (w1 - w0), 1),
            "connect_failures": sim_stats["fleet"]["connect_failures"],
        }
        summary = seen.summary()
        result["events"] = {
            "created": sim_stats["fleet"]["events_created"],
            "acked": sim_stats["fleet"]["events_acked"],
            "resent": sim_stats["fleet"]["events_resent"],
            "pending_at_stop": sim_stats["fleet"]["events_pending"],
            "unique_at_ingest": summary["events_unique"],
            "duplicates": summary["duplicates"],
            "gaps": summary["gaps"],
            "event_latency": summary["event_latency"],
        }

    p99 = result["fleet"]["telemetry_latency"]["p99_ms"]
    base99 = result["baseline"]["telemetry_latency"]["p99_ms"]
    all_back = result["storm"]["all_back_s"]
    result["ratio_p99_vs_baseline"] = round(p99 / base99, 2) if base99 else None
    result["targets"] = {
        "p99_ms_lt_500": {"value": p99, "met": p99 is not None and p99 < 500},
        "all_back_lt_60_s": {"value": all_back, "met": all_back is not None and all_back < 60},
    }
    tls = "_tls" if args.tls else ""
    emit(f"fleet_scale_{args.devices}_hb{args.heartbeat:g}{tls}", result)


if __name__ == "__main__":
    main()
