"""The screen's unit (systemd/appliance-screen.service): after the daemon, bound to it, its own
user with the token handed over by systemd, restarted when the browser dies; and
``systemd-analyze verify`` accepts it installed next to the daemon's unit."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT

UNIT = ROOT / "systemd" / "appliance-screen.service"


def _unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_screen_unit_follows_the_daemon_and_restarts_the_browser() -> None:
    u = _unit()
    unit, svc = u["Unit"], u["Service"]
    assert "appliance.service" in unit["After"].split()
    assert unit["BindsTo"] == "appliance.service"
    assert u["Install"]["WantedBy"] == "appliance.service"  # back with every daemon start
    assert svc["Restart"] == "always"
    assert svc["User"] not in ("root", "appliance")
    assert svc["LoadCredential"] == "screen-token:/var/lib/appliance/screen-token"
    cmd = svc["ExecStart"]
    assert "/usr/bin/cage" in cmd and "--kiosk" in cmd and "$CREDENTIALS_DIRECTORY" in cmd
    assert "127.0.0.1" in svc["Environment"] or "127.0.0.1" in cmd


def test_systemd_analyze_verify_accepts_the_screen_unit(tmp_path: Path) -> None:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze (Debian package systemd) is not installed")
    root = tmp_path / "root"
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    shutil.copy(UNIT, units / UNIT.name)
    shutil.copy(ROOT / "systemd" / "appliance.service", units / "appliance.service")
    (root / "usr" / "lib" / "systemd").mkdir(parents=True)
    shutil.copytree(
        Path("/usr/lib/systemd/system"), root / "usr" / "lib" / "systemd" / "system", symlinks=True
    )
    # What the units execute, at their paths in the image (the kiosk installs cage, chromium
    # and the daemon; this machine may not have cage).
    for path in ("opt/appliance/.venv/bin/appliance", "usr/bin/cage", "bin/sh"):
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("#!/bin/sh\n")
        target.chmod(0o755)
    verify = [exe, "verify", f"--root={root}", UNIT.name]
    r = subprocess.run(verify, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr

    (root / "bin" / "sh").unlink()  # the check can fail: without the shell it does
    r = subprocess.run(verify, capture_output=True, text=True, check=False)
    assert r.returncode != 0 and "is not executable" in r.stderr, r.stderr
