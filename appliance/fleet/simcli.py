"""``appliance fleet sim``: run N virtual kiosks against a broker and print what happened.

    appliance fleet sim --port 1883 --devices 1000 --heartbeat 10 --duration 60

The output is one JSON object: the fleet's own counters and, unless ``--no-ingest``, what a
controller-side ingest on the same broker received (latency p50/p99, gaps, duplicates).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

from ..config import parse_broker_address
from ..errors import ApplianceError
from .ingest import Ingest
from .sim import FleetConfig, FleetSim, FleetStats, peak_rate

log = logging.getLogger(__name__)


def configure_parser(p: argparse.ArgumentParser) -> None:
    d = FleetConfig()
    p.description = (
        "Run N virtual kiosks, each with its own MQTT connection (retained birth, Last Will, "
        "heartbeat, durable events with id+seq, ping answered), against any broker; print a "
        "JSON summary at the end."
    )
    p.add_argument("--host", default=d.host, help=f"broker host (default {d.host})")
    p.add_argument("--port", type=int, default=d.port, help=f"broker port (default {d.port})")
    p.add_argument(
        "--broker",
        action="append",
        metavar="HOST:PORT",
        help="a broker of a cluster (repeat: each kiosk tries them in its own order and moves "
        "to the next on a failed connect or a lost connection, as mqtt.brokers); replaces "
        "--host/--port",
    )
    p.add_argument(
        "--devices", type=int, default=d.devices, help=f"number of kiosks (default {d.devices})"
    )
    p.add_argument(
        "--id-prefix",
        default=d.id_prefix,
        help=f"kiosk ids are PREFIX-00000, PREFIX-00001, ... (default {d.id_prefix!r})",
    )
    p.add_argument(
        "--first-index",
        type=int,
        default=d.first_index,
        help="index of the first kiosk, to split a fleet over several processes (default 0)",
    )
    p.add_argument(
        "--topic-prefix",
        default=d.topic_prefix,
        help=f"MQTT topic root, the daemon's mqtt.topic_prefix (default {d.topic_prefix!r})",
    )
    p.add_argument(
        "--protocol",
        choices=["5", "3.1.1"],
        default=d.protocol,
        help=f"MQTT version (default {d.protocol})",
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        default=d.heartbeat_s,
        help=f"seconds between heartbeats of each kiosk (default {d.heartbeat_s})",
    )
    p.add_argument(
        "--event-rate",
        type=float,
        default=d.event_rate,
        help="simulated enrollments per kiosk per second, Poisson; each is a durable QoS 1 "
        f"event with id and seq (default {d.event_rate}: none)",
    )
    p.add_argument(
        "--keepalive",
        type=int,
        default=d.keepalive_s,
        help=f"MQTT keepalive in seconds (default {d.keepalive_s})",
    )
    p.add_argument(
        "--reconnect-min",
        type=float,
        default=d.reconnect_min_s,
        help=f"first backoff ceiling in seconds, full jitter (default {d.reconnect_min_s})",
    )
    p.add_argument(
        "--reconnect-max",
        type=float,
        default=d.reconnect_max_s,
        help=f"largest backoff ceiling in seconds (default {d.reconnect_max_s})",
    )
    p.add_argument(
        "--connect-rate",
        type=float,
        default=d.connect_rate,
        help=f"initial ramp in connections per second (default {d.connect_rate})",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=30.0,
        help="seconds to run after the start of the ramp; SIGTERM or Ctrl-C end the run "
        "early with the same clean stop and summary (default 30)",
    )
    p.add_argument(
        "--seed", type=int, default=d.seed, help=f"seed of jitter and event ids (default {d.seed})"
    )
    p.add_argument(
        "--no-ingest",
        action="store_true",
        help="do not run the controller-side ingest in this process (default: run it)",
    )
    p.add_argument(
        "--tls-ca",
        default=None,
        help="CA file of the broker's certificate: connect with TLS (default: plain TCP)",
    )
    p.add_argument(
        "--tls-cert",
        default=None,
        help="client certificate for mutual TLS, shared by every kiosk (default: none)",
    )
    p.add_argument("--tls-key", default=None, help="private key of --tls-cert (default: none)")
    p.add_argument(
        "--ingest-port",
        type=int,
        default=None,
        help="port of a plain listener for the ingest when the kiosks use TLS "
        "(default: --port, plain)",
    )
    p.add_argument(
        "--stats-out",
        default=None,
        help="also write the fleet's counters and the wall-clock time of every CONNACK to "
        "this JSON file (for reconnect-storm analysis; default: none)",
    )
    p.add_argument(
        "--share-group",
        default=None,
        help="subscribe the ingest through $share/GROUP/... (MQTT 5 shared subscriptions; "
        "default: plain subscriptions)",
    )


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < need:
            log.warning("open-file limit %d is below the %d sockets needed", new, need)


async def _run_until_signal(sim: FleetSim, duration: float) -> FleetStats:
    """Run for ``duration`` or until SIGTERM/SIGINT, then stop the kiosks cleanly."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sim.request_stop)
    return await sim.run(duration)


def run(args: argparse.Namespace) -> int:
    brokers = None
    if args.broker:
        try:
            parsed = [parse_broker_address(b) for b in args.broker]
        except ValueError as exc:
            print(f"error: --broker: {exc}", file=sys.stderr)
            return 2
        brokers = [(b["host"], b["port"] or args.port) for b in parsed]
    cfg = FleetConfig(
        host=brokers[0][0] if brokers else args.host,
        port=brokers[0][1] if brokers else args.port,
        brokers=brokers,
        devices=args.devices,
        id_prefix=args.id_prefix,
        first_index=args.first_index,
        topic_prefix=args.topic_prefix,
        protocol=args.protocol,
        keepalive_s=args.keepalive,
        heartbeat_s=args.heartbeat,
        event_rate=args.event_rate,
        reconnect_min_s=args.reconnect_min,
        reconnect_max_s=args.reconnect_max,
        connect_rate=args.connect_rate,
        seed=args.seed,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )
    if args.duration <= 0:
        print("error: --duration must be positive", file=sys.stderr)
        return 2
    try:
        sim = FleetSim(cfg)
    except ApplianceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        for where, why in getattr(exc, "problems", []):
            print(f"  {where}: {why}", file=sys.stderr)
        return 2
    _raise_fd_limit(cfg.devices + 256)
    ingest: Ingest | None = None
    if not args.no_ingest:
        try:
            ingest = Ingest(
                cfg.host,
                args.ingest_port or cfg.port,
                prefix=cfg.topic_prefix,
                share_group=args.share_group,
                protocol="5" if args.share_group or cfg.protocol == "5" else "3.1.1",
            ).start()
        except (OSError, ApplianceError, ValueError) as exc:
            print(f"error: ingest cannot start: {exc}", file=sys.stderr)
            return 1
    t0 = time.time()
    stats = asyncio.run(_run_until_signal(sim, args.duration))
    out: dict[str, Any] = {
        "devices": cfg.devices,
        "heartbeat_s": cfg.heartbeat_s,
        "duration_s": round(time.time() - t0, 2),
        "fleet": stats.snapshot(),
        "peak_connects_per_s": peak_rate(stats.connect_times),
    }
    if ingest is not None:
        # Give the last acknowledged events (and the shutdown statuses) a moment to arrive.
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            seen = ingest.snapshot()
            if seen.events() >= stats.events_acked and len(seen.deaths) >= cfg.devices:
                break
            time.sleep(0.02)
        out["ingest"] = ingest.stop().summary()
    if args.stats_out:
        Path(args.stats_out).write_text(
            json.dumps({**out, "connect_times": stats.connect_times}, separators=(",", ":"))
        )
    print(json.dumps(out, indent=2), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="appliance fleet sim")
    configure_parser(p)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
