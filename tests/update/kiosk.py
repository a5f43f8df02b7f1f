"""A kiosk's installation root driven the way systemd drives it: the guard before every start
(``ExecStartPre``), then ``current/bin/kioskdemo run`` (``ExecStart``), restarted when it dies
(``Restart=on-failure``). Waits are for conditions (a ready file, an exit) with deadlines."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from appliance.update import guard as g
from appliance.update.installer import Updater

DEADLINE_S = 30.0


@dataclass
class Kiosk:
    root: Path
    state: Path
    up: Updater
    proc: subprocess.Popen[bytes] | None = None
    starts: list[str | None] = field(default_factory=list)
    selftest: str | None = None  # None: the daemon's verdict runs the self-test

    def guard(self) -> None:
        script = self.root / "guard.py"
        cmd = [sys.executable, str(script), "--root", str(self.root)]
        cmd += ["--state-dir", str(self.state)]
        if self.selftest is not None:  # the shipped unit's --selftest
            cmd += ["--entry", "kioskdemo", "--selftest", self.selftest]
        subprocess.run(cmd, check=True, capture_output=True)

    def start(self) -> str | None:
        """One start: the version that became ready, or None when the daemon died."""
        self.guard()
        exe = self.root / g.CURRENT / "bin" / "kioskdemo"
        for f in self.state.glob("ready-*"):
            f.unlink()
        self.proc = subprocess.Popen([str(exe), "run", str(self.state)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            ready = sorted(self.state.glob("ready-*"))
            if ready:
                version = ready[0].name.removeprefix("ready-")
                self.starts.append(version)
                return version
            if self.proc.poll() is not None:
                self.proc = None
                self.starts.append(None)
                return None
            time.sleep(0.02)  # ok: poll of a condition wait (ready, or the daemon ended)
        raise AssertionError("the daemon neither became ready nor exited")

    def run_until_up(self, max_starts: int = 3) -> str:
        """systemd's Restart=on-failure: start again while the daemon dies."""
        for _ in range(max_starts):
            version = self.start()
            if version is not None:
                return version
        raise AssertionError(f"no start became ready: {self.starts}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=DEADLINE_S)
            self.proc = None

    def current(self) -> str | None:
        return g.current_target(self.root)
