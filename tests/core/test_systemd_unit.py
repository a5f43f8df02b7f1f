"""The shipped unit file says what the issue asks (parsed, not grepped as text)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT


def load_unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(ROOT / "systemd" / "appliance.service")
    return parser


def test_unit_is_notify_with_watchdog_restart_and_hardening() -> None:
    u = load_unit()
    svc = u["Service"]
    assert svc["Type"] == "notify"
    assert int(svc["WatchdogSec"]) > 0
    assert svc["Restart"] == "on-failure"
    assert svc["ProtectSystem"] == "strict"
    assert "/var/lib/appliance" in svc["ReadWritePaths"]
    assert svc["NoNewPrivileges"] == "yes"
    assert svc["PrivateTmp"] == "yes"
    assert set(svc["SupplementaryGroups"].split()) >= {"dialout", "video"}
    assert "appliance run" in svc["ExecStart"]
    assert u["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze (Debian package systemd) is needed to verify the unit"
    text = (ROOT / "systemd" / "appliance.service").read_text()
    venv_bin = str(Path(sys.executable).parent / "appliance")
    unit = tmp_path / "appliance.service"
    unit.write_text(text.replace("/opt/appliance/.venv/bin/appliance", venv_bin))
    r = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr
