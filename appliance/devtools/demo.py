"""``appliance demo``: the kiosk on its embedded default, end to end, on this machine.

Starts a private mosquitto on loopback, runs the daemon (a real subprocess) on the simulated
hardware kit, talks to it as the fleet controller would, prints a summary, and tells you how to
watch and command it yourself with mosquitto_sub / mosquitto_pub.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .broker import Mosquitto, free_port, mqtt_connack
from .controller import Controller


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("run"),
        help="directory for the broker, configuration, state and logs (default: ./%(default)s)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=0,
        help="broker port on 127.0.0.1 (default: 1883 if free, else a free port)",
    )
    p.add_argument("--device-id", default="kiosk-demo", help="device id (default %(default)s)")
    p.add_argument(
        "--once",
        action="store_true",
        help="print the summary and stop, instead of running until Ctrl-C",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="delete the previous demo state (store, keys) before starting",
    )


def _step(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def run(args: argparse.Namespace) -> int:
    work: Path = args.workdir.resolve()
    if args.fresh and (work / "state").exists():
        import shutil

        shutil.rmtree(work / "state")
    work.mkdir(parents=True, exist_ok=True)
    port = args.port or (
        1883 if not mqtt_connack("127.0.0.1", 1883, 0.2) and _free(1883) else free_port()
    )
    _step(f"starting mosquitto on 127.0.0.1:{port} (config and log in {work / 'broker'})")
    broker = Mosquitto(work / "broker", port=port).start()
    cfg = work / "appliance.toml"
    cfg.write_text(
        "# Written by `appliance demo`: the simulated kit against the local broker.\n"
        f'[device]\nid = "{args.device_id}"\nsite = "demo"\nprofile = "sim"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n'
        "[telemetry]\nheartbeat_s = 10\n"
    )
    log_path = work / "daemon.log"
    _step(f"starting the daemon on the simulated kit (log: {log_path})")
    log = log_path.open("ab")
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "appliance",
            "run",
            "--config",
            str(cfg),
            "--state-dir",
            str(work / "state"),
        ],
        stdout=log,
        stderr=log,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    rc = 0
    try:
        with Controller("127.0.0.1", port) as ctl:
            q = ctl.subscribe(f"kiosk/{args.device_id}/status")
            birth = _wait_online(q, daemon, 30)
            t0 = time.perf_counter()
            pong = ctl.request(args.device_id, "ping", timeout=10)
            rtt = (time.perf_counter() - t0) * 1000
            status = ctl.request(args.device_id, "status", timeout=10)["result"]
            _summary(args.device_id, port, birth, status, pong, rtt)
        if not args.once:
            print("\nRunning. Ctrl-C stops the daemon and the broker.", flush=True)
            daemon.wait()
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        print(
            f"demo failed: {exc}\n--- daemon log tail ---\n"
            f"{log_path.read_text(errors='replace')[-3000:]}",
            file=sys.stderr,
        )
        rc = 1
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(15)
            except subprocess.TimeoutExpired:
                daemon.kill()
        broker.stop()
    return rc


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_online(q: Any, daemon: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited with status {daemon.returncode}")
        try:
            _t, payload, _r = q.get(timeout=0.5)
        except Exception:  # noqa: S112 - queue.Empty: keep waiting
            continue
        msg: dict[str, Any] = json.loads(payload)
        if msg.get("online"):
            return msg
    raise RuntimeError("the daemon did not come online in time")


def _summary(
    dev: str,
    port: int,
    birth: dict[str, Any],
    status: dict[str, Any],
    pong: dict[str, Any],
    rtt_ms: float,
) -> None:
    print()
    print(
        f"Kiosk {dev} is online (software {birth.get('version')}, profile {birth.get('profile')})."
    )
    print(f"  ping round trip through the broker: {rtt_ms:.1f} ms ({'ok' if pong['ok'] else pong})")
    for kind, h in status["devices"].items():
        detail = f" ({h['detail']})" if h.get("detail") else ""
        print(f"  {kind:<12} {h['state']}{detail}")
    print(f"  outbox depth: {status['outbox_depth']}")
    print()
    print("Watch everything the kiosk says:")
    print(f"  mosquitto_sub -h 127.0.0.1 -p {port} -t 'kiosk/{dev}/#' -v")
    print("Send it a command (the reply appears on kiosk/{dev}/reply):".replace("{dev}", dev))
    print(
        f"  mosquitto_pub -h 127.0.0.1 -p {port} -q 1 -t kiosk/{dev}/cmd "
        '-m \'{"id":"c1","cmd":"status"}\''
    )
    print(
        f"  mosquitto_pub -h 127.0.0.1 -p {port} -q 1 -t kiosk/{dev}/cmd "
        '-m \'{"id":"c2","cmd":"diagnostics"}\''
    )
    print("Commands and their arguments: docs/protocol.md.")
