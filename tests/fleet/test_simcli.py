"""``python -m appliance.fleet.simcli`` as a real process: help, bad input, a short run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from appliance.devtools.broker import Mosquitto
from appliance.fleet.ingest import Ingest
from tests.helpers import ROOT, wait_for


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance.fleet.simcli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


def test_help_explains_every_option_with_its_default() -> None:
    out = _run("--help")
    assert out.returncode == 0
    for opt in ("--devices", "--heartbeat", "--event-rate", "--reconnect-min", "--share-group"):
        assert opt in out.stdout
    assert out.stdout.count("default") >= 15


def test_bad_values_are_explained_not_crashed() -> None:
    out = _run("--devices", "0", "--heartbeat", "-1")
    assert out.returncode == 2
    assert "devices: must be at least 1" in out.stderr
    assert "heartbeat_s: must be positive" in out.stderr
    assert "Traceback" not in out.stderr
    out = _run("--port", "1", "--devices", "1", "--duration", "0.5")
    assert out.returncode == 1
    assert "ingest cannot start" in out.stderr
    assert "Traceback" not in out.stderr


def test_short_run_prints_a_summary(broker: Mosquitto) -> None:
    out = _run(
        "--port", str(broker.port), "--devices", "10", "--heartbeat", "0.5",
        "--event-rate", "2", "--duration", "2", "--topic-prefix", "simcli", "--id-prefix", "cli",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["fleet"]["connects"] == 10
    assert summary["ingest"]["births"] == 10
    assert summary["ingest"]["telemetry_latency"]["n"] >= 10
    assert summary["ingest"]["duplicates"] == 0
    assert summary["ingest"]["gaps"] == 0
    assert summary["ingest"]["events_unique"] == summary["fleet"]["events_acked"]


def test_sigterm_ends_the_run_cleanly_with_stats(broker: Mosquitto, tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    ingest = Ingest(broker.host, broker.port, prefix="simterm").start()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "appliance.fleet.simcli", "--port", str(broker.port),
            "--devices", "8", "--duration", "600", "--topic-prefix", "simterm",
            "--no-ingest", "--stats-out", str(stats),
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        wait_for(lambda: len(ingest.snapshot().births) == 8, 30, "8 births")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        wait_for(lambda: len(ingest.snapshot().deaths) == 8, 10, "8 clean offline statuses")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        ingest.stop()
    assert proc.returncode == 0, err
    assert json.loads(out)["fleet"]["connects"] == 8
    saved = json.loads(stats.read_text())
    assert len(saved["connect_times"]) == 8
    assert {reason for _d, reason in ingest.stats.deaths} == {"shutdown"}
