"""The shipped unit file says what the issue asks (parsed, not grepped as text)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


def service_values(key: str) -> list[str]:
    """Every value of a repeatable [Service] key (DeviceAllow=), in order."""
    values, section = [], ""
    for raw in (ROOT / "systemd" / "appliance.service").read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line.startswith(f"{key}="):
            values.append(line.split("=", 1)[1])
    return values


def test_unit_allows_what_a_raspberry_pi_needs() -> None:
    """libcamera allocates frame buffers from /dev/dma_heap/* (device group dma_heap), the GPIO
    UART is /dev/ttyAMA0 or /dev/ttyS0 behind /dev/serial0; with DevicePolicy=closed each needs
    a DeviceAllow= (systemd.resource-control(5)), else the open fails with EPERM on the Pi."""
    assert load_unit()["Service"]["DevicePolicy"] == "closed"
    allowed = {}
    for value in service_values("DeviceAllow"):
        spec, rights = value.split()
        allowed[spec] = rights
        # A path must be a device node, not a directory such as /dev/dma_heap (systemd ignores
        # it); device groups are the portable form.
        assert spec.startswith(("char-", "block-")), f"{spec}: use the device group"
        assert set(rights) <= set("rwm"), value
    for group in ("char-dma_heap", "char-video4linux", "char-media"):  # camera
        assert allowed.get(group) == "rw", group
    for group in ("char-ttyAMA", "char-ttyS", "char-ttyUSB", "char-ttyACM"):  # serial sensor
        assert allowed.get(group) == "rw", group


def install_layout(root: Path) -> Path:
    """The layout docs/deployment.md installs, under ``root``: the unit in /etc/systemd/system,
    a venv's ``appliance`` console script at the ExecStart path, the configuration file the
    command line names, and the distribution's units it orders against (sysinit.target, ...)."""
    unit_dir = root / "etc" / "systemd" / "system"
    unit_dir.mkdir(parents=True)
    shutil.copy(ROOT / "systemd" / "appliance.service", unit_dir / "appliance.service")
    # Side by side releases (docs/updates.md): releases/<version> linked by `current`, and the
    # guard ExecStartPre runs with the system's python3.
    opt = root / "opt" / "appliance"
    venv_bin = opt / "releases" / "0.1.0" / "bin"
    venv_bin.mkdir(parents=True)
    (opt / "current").symlink_to("releases/0.1.0")
    shutil.copy2(ROOT / "appliance" / "update" / "guard.py", opt / "guard.py")
    (root / "usr" / "bin").mkdir(parents=True)
    shutil.copy2(Path(sys.executable).resolve(), root / "usr" / "bin" / "python3")
    # This venv's console script: its interpreter line names this venv's Python, so the copy
    # runs the installed package like the one under /opt does.
    shutil.copy2(Path(sys.executable).parent / "appliance", venv_bin / "appliance")
    (root / "usr" / "lib" / "systemd").mkdir(parents=True)
    shutil.copytree(
        Path("/usr/lib/systemd/system"), root / "usr" / "lib" / "systemd" / "system", symlinks=True
    )
    return venv_bin / "appliance"


def exec_start() -> list[str]:
    return load_unit()["Service"]["ExecStart"].split()


def test_systemd_analyze_verify_accepts_the_installed_unit(tmp_path: Path) -> None:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze (Debian package systemd) is not installed")
    root = tmp_path / "root"
    install_layout(root)
    verify = [exe, "verify", f"--root={root}", "appliance.service"]
    r = subprocess.run(verify, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr  # warnings (bad rights, unknown keys) count too

    # The check can fail: without the console script at the ExecStart path it does.
    (root / exec_start()[0].lstrip("/")).unlink()
    r = subprocess.run(verify, capture_output=True, text=True, check=False)
    assert r.returncode != 0 and "is not executable" in r.stderr, r.stderr


def test_the_units_command_line_refuses_to_start_without_its_configuration(
    tmp_path: Path,
) -> None:
    """ExecStart, run as installed: without /etc/appliance/appliance.toml the daemon exits 2
    naming --config and --dev instead of starting the simulated kit with unsigned commands;
    Restart=on-failure then gives up after StartLimitBurst (issue 12, point 7)."""
    root = tmp_path / "root"
    script = install_layout(root)
    argv = exec_start()
    assert argv[1] == "run" and "--dev" not in argv
    mapped = [str(script), *(str(root) + a if a.startswith("/") else a for a in argv[1:])]
    state = Path(mapped[mapped.index("--state-dir") + 1])
    r = subprocess.run(mapped, capture_output=True, text=True, check=False, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "no configuration file at" in r.stderr and "--dev" in r.stderr
    assert not state.exists()
