"""Shared by the enrollment benchmarks: a private mosquitto, the fleet home with the central
keys, and the daemon on the simulated kit (fingerprint emulator on a pty, camera scene, card
emulator behind pcscd + vpcd) configured to seal to that home's enrollment key."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import start_daemon, stop

from appliance.central.demo import prepare
from appliance.devtools.broker import Mosquitto
from appliance.devtools.controller import Controller

DEV = "kiosk-bench"


@dataclass
class Kit:
    work: Path
    broker: Mosquitto
    home: Path
    state: Path
    proc: Any
    ctl: Controller

    def cpu_s(self) -> float:
        """User + system CPU seconds of the daemon process so far (all its threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def close(self) -> None:
        self.ctl.close()
        stop(self.proc)
        self.broker.stop()


def start_kit(work: Path, *, line_rate: bool, card: bool = True) -> Kit:
    work.mkdir(parents=True, exist_ok=True)
    broker = Mosquitto(work / "broker").start()
    home = work / "fleet"
    trust_toml = prepare(home)
    cfg = work / "appliance.toml"
    cfg.write_text(
        f'[device]\nid = "{DEV}"\nprofile = "sim"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
        "reconnect_min_s = 0.05\nreconnect_max_s = 0.5\n"
        '[telemetry]\nheartbeat_s = 3600\n[logging]\nlevel = "WARNING"\n'
        f"[simulation]\nfingerprint = true\ncard = {str(card).lower()}\n"
        f"line_rate = {str(line_rate).lower()}\n"
        + ("" if card else "[hardware.card]\nenabled = false\n")
        # development run (plain broker, unsigned commands): the sim kit no longer allows
        # them by itself
        + "[commands]\nallow_unsigned = true\n"
        + trust_toml
    )
    state = work / "state"
    proc = start_daemon(cfg, state, env={"PYTHONUNBUFFERED": "1"}, log=work / "daemon.log")
    ctl = Controller("127.0.0.1", broker.port).connect()
    deadline = time.monotonic() + 60
    while True:
        try:
            devices = ctl.request(DEV, "status", timeout=2)["result"]["devices"]
            kinds = ("camera", "fingerprint", "card") if card else ("camera", "fingerprint")
            if all(devices[k]["state"] == "ok" for k in kinds):
                break
        except Exception:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"the kiosk did not come up; see {work / 'daemon.log'}")
        time.sleep(0.1)
    return Kit(work, broker, home, state, proc, ctl)


def enroll_args(kit: Kit, citizen: str, *extra: str) -> list[str]:
    return [
        DEV,
        "--home",
        str(kit.home),
        "--port",
        str(kit.broker.port),
        "--unsigned",
        "--register-device-key",
        str(kit.state / "device.pub"),
        "--citizen-ref",
        citizen,
        *extra,
    ]
