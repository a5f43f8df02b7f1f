"""``appliance fleet receive`` as a child process for the tests (started, SIGKILLed,
restarted), its readiness read from its first stdout line."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import IO

from appliance.devtools.broker import Mosquitto
from tests.helpers import ROOT


class ReceiverProc:
    """``broker_flags``: the fleet tools' broker flags (``--host --port --ca --cert --key``,
    the ``central`` certificate on the production broker); default: plain ``--port``."""

    def __init__(
        self, home: Path, broker: Mosquitto, log: Path, broker_flags: list[str] | None = None
    ) -> None:
        self.args = [
            sys.executable,
            "-m",
            "appliance.central.receivecli",
            "--home",
            str(home),
            *(broker_flags if broker_flags is not None else ["--port", str(broker.port)]),
            "--client-id",
            f"central-test-{uuid.uuid4().hex[:8]}",  # stable across restarts
        ]
        self.log = log
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str] = queue.Queue()

    def start(self, timeout: float = 20.0) -> None:
        err = self.log.open("a")
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT
        )
        err.close()
        assert self.proc.stdout is not None
        self.pump = threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True)
        self.pump.start()
        line = self.lines.get(timeout=timeout)  # printed once subscribed
        assert line.startswith("receiving"), line

    def _pump(self, out: IO[str]) -> None:
        with out:
            for line in out:
                self.lines.put(line)

    def _reap(self) -> None:
        assert self.proc is not None
        self.proc.wait(15)
        self.pump.join(10)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self._reap()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self._reap()
