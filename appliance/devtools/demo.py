"""``appliance demo``: the kiosk's main job on its embedded default, end to end, on this machine.

Starts a private mosquitto on loopback, the central enrollment receiver, and the daemon (a real
subprocess) on the simulated hardware kit: the fingerprint emulator on a pty, the generated
camera scene, and the card emulator behind a private pcscd + vpcd. Then it enrolls a synthetic
citizen as the fleet would (portrait, fingers in the 4-4-2 order, a missing finger recorded as
such), waits for the sealed, signed package to be verified centrally and purged from the kiosk,
issues the citizen's card and verifies it, prints a summary, and tells you how to watch and
command the kiosk yourself with mosquitto_sub / mosquitto_pub.
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
    p.add_argument(
        "--no-enroll",
        action="store_true",
        help="only start the kiosk and check it; skip the enrollment and the card",
    )
    p.add_argument("--no-card", action="store_true", help="enroll, but do not issue a card")
    p.add_argument(
        "--fast",
        action="store_true",
        help="do not pace the fingerprint emulator at the real 57,600 baud "
        "(each finger image takes ~7 s on the real serial line)",
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
    trust = ""
    if not args.no_enroll:
        from ..central.demo import prepare

        trust = prepare(work / "fleet")  # fleet root, enrollment and ingest keys (throw-away)
    cfg.write_text(
        "# Written by `appliance demo`: the simulated kit against the local broker.\n"
        f'[device]\nid = "{args.device_id}"\nsite = "demo"\nprofile = "sim"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n'
        "[telemetry]\nheartbeat_s = 10\n"
        f"[simulation]\nline_rate = {'false' if args.fast else 'true'}\n" + trust
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
            status = _wait_devices(ctl, args.device_id, 60)
            _summary(args.device_id, port, birth, status, pong, rtt)
        if not args.no_enroll:
            from ..central.demo import enroll_and_issue

            _step("enrolling a synthetic citizen as the fleet would (fleet enroll + issue)")
            rc = enroll_and_issue(
                work / "fleet",
                device=args.device_id,
                state_dir=work / "state",
                port=port,
                issue=not args.no_card,
            )
            if rc != 0:
                print(
                    f"demo: the enrollment ended with status {rc}; daemon log: {log_path}",
                    file=sys.stderr,
                )
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


def _wait_devices(ctl: Controller, device: str, timeout: float) -> dict[str, Any]:
    """The kiosk's status once every simulated device has come up (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = ctl.request(device, "status", timeout=10)["result"]
        states = {k: v["state"] for k, v in status["devices"].items()}
        if all(s in ("ok", "disabled") for s in states.values()) or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


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
