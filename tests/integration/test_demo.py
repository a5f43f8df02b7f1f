"""The README's main command, as a user runs it (fast serial line to keep the test short)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from appliance.devtools.broker import free_port
from appliance.trust.sealed import scan_for_plaintext_biometrics
from tests.helpers import ROOT


def test_demo_enrolls_issues_and_leaves_no_plaintext(tmp_path: Path) -> None:
    work = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance",
            "demo",
            "--once",
            "--fast",
            "--workdir",
            str(work),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "fingerprint  ok" in out and "card         ok" in out and "camera       ok" in out
    assert "hash chain ok" in out
    assert "the kiosk purged its sealed copy" in out
    assert "Card issued and verified" in out and "passive authentication ok" in out
    assert "mosquitto_sub" in out and "mosquitto_pub" in out
    assert scan_for_plaintext_biometrics([work / "state"]) == []
