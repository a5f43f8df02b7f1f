"""Shared bits of the benchmarks: percentiles, a daemon subprocess, result output."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def summary_ms(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "p50_ms": round(pct(samples, 50) * 1000, 3),
        "p99_ms": round(pct(samples, 99) * 1000, 3),
        "mean_ms": round(statistics.fmean(samples) * 1000, 3),
    }


def daemon_config(
    workdir: Path, port: int, device: str, *, sim: bool = False, dev: bool = False
) -> Path:
    """``dev``: a development run that accepts unsigned commands (no kit profile does)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "appliance.toml"
    hw = (
        ""
        if sim
        else "[simulation]\nfingerprint = false\ncard = false\n"
        "[hardware.camera]\nenabled = false\n[hardware.fingerprint]\nenabled = false\n"
        "[hardware.card]\nenabled = false\n"
    )
    cfg.write_text(
        f'[device]\nid = "{device}"\n[mqtt]\nport = {port}\n'
        "reconnect_min_s = 0.05\nreconnect_max_s = 0.5\n"
        '[telemetry]\nheartbeat_s = 3600\n[logging]\nlevel = "WARNING"\n'
        + hw
        + ("[commands]\nallow_unsigned = true\n" if dev else "")
    )
    return cfg


def start_daemon(
    cfg: Path, state: Path, env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    out = (log or cfg.parent / "daemon.log").open("ab")
    p = subprocess.Popen(
        [sys.executable, "-m", "appliance", "run", "--config", str(cfg), "--state-dir", str(state)],
        stdout=out,
        stderr=out,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    out.close()
    return p


def stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def emit(name: str, result: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"bench": name, "when": time.strftime("%Y-%m-%d %H:%M:%S"), **result}
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
