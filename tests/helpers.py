"""Helpers for tests: condition waits, the daemon as a subprocess. No fixed sleeps."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.devtools.broker import Mosquitto
from appliance.devtools.controller import Controller
from appliance.devtools.fleetkit import FleetKit

ROOT = Path(__file__).resolve().parent.parent


def wait_for(
    cond: Callable[[], Any], timeout: float = 10.0, what: str | Callable[[], object] = "condition"
) -> Any:
    """Poll ``cond`` until it returns a truthy value or the deadline passes. ``what`` names the
    condition in the failure; a callable is asked only then (a daemon's log, a journal)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout} s waiting for {detail}")
        time.sleep(0.01)  # ok: the poll interval of a condition wait, not a fixed wait


def get_json(
    q: queue.Queue[tuple[str, bytes, bool]],
    timeout: float = 10.0,
    pred: Callable[[dict[str, Any]], bool] = lambda _m: True,
) -> dict[str, Any]:
    """Next JSON message on a subscription queue that satisfies ``pred``."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("no matching message in time")
        try:
            _topic, payload, _retained = q.get(timeout=left)
        except queue.Empty:
            raise AssertionError("no matching message in time") from None
        msg: dict[str, Any] = json.loads(payload)
        if pred(msg):
            return msg


def drain_json(q: queue.Queue[tuple[str, bytes, bool]]) -> list[dict[str, Any]]:
    """Every JSON message already waiting on a subscription queue, without waiting."""
    out: list[dict[str, Any]] = []
    while True:
        try:
            _topic, payload, _retained = q.get_nowait()
        except queue.Empty:
            return out
        out.append(json.loads(payload))


class DaemonProcess:
    """The daemon as a real subprocess (``python -m appliance run``).

    On a production broker (``broker.tls``, from :class:`FleetKit`) the kiosk connects with its
    own certificate (CN = device id, issued by ``kit``), trusts ``kit``'s fleet root and
    enrollment key, and accepts signed commands only: the configuration of a provisioned kiosk.
    On a plain broker commands must still be signed (``extra_toml`` gives the trust keys) unless
    the test says ``dev=True``: a visible development run that accepts unsigned commands, for
    low-level agent tests and tests about unsigned input only.
    """

    def __init__(
        self,
        workdir: Path,
        broker: Mosquitto,
        device_id: str,
        extra_toml: str = "",
        env: dict[str, str] | None = None,
        *,
        kit: FleetKit | None = None,
        dev: bool = False,
        enrollment_key: bool = True,
    ) -> None:
        self.workdir = workdir
        self.broker = broker
        self.device_id = device_id
        self.state_dir = workdir / "state"
        self.config_path = workdir / "appliance.toml"
        self.log_path = workdir / "daemon.log"
        self.extra_env = env or {}
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.kit = kit
        self.dev = dev
        production = ""
        if getattr(broker, "tls", None) is not None:
            if kit is None:
                raise ValueError("a daemon on a TLS broker needs the FleetKit that made it")
            production = kit.kiosk_tls_toml(device_id, enrollment_key=enrollment_key)
        if dev:
            if "[commands]\n" in extra_toml:
                extra_toml = extra_toml.replace(
                    "[commands]\n", "[commands]\nallow_unsigned = true\n"
                )
            else:
                extra_toml = "[commands]\nallow_unsigned = true\n" + extra_toml
        self.config_path.write_text(
            f'[device]\nid = "{device_id}"\nprofile = "sim"\n'
            f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
            "reconnect_min_s = 0.05\nreconnect_max_s = 0.5\n"
            "[telemetry]\nheartbeat_s = 3600\n"
            "[simulation]\nfingerprint = false\ncard = false\n"
            "[hardware.camera]\nenabled = false\n"
            "[hardware.fingerprint]\nenabled = false\n"
            "[hardware.card]\nenabled = false\n" + production + extra_toml
        )

    def start(self) -> DaemonProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "appliance",
                "run",
                "--config",
                str(self.config_path),
                "--state-dir",
                str(self.state_dir),
            ],
            stdout=log,
            stderr=log,
            env=env,
            cwd=ROOT,
        )
        log.close()
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(15)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_online(
    ctl: Controller, device: str, after: float = 0.0, timeout: float = 15.0
) -> dict[str, Any]:
    """Wait for a birth message of ``device`` newer than ``after`` (a Unix time)."""
    q = ctl.subscribe(f"kiosk/{device}/status")
    return get_json(q, timeout, lambda m: m.get("online") is True and m.get("ts", 0) > after)
