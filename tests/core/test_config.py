"""Configuration: layers, environment overrides, unknown keys, `appliance config check`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance import config
from appliance.errors import ConfigError
from tests.helpers import ROOT


def write(tmp_path: Path, text: str, name: str = "a.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_layer_the_sim_profile() -> None:
    cfg = config.load(None, environ={})
    assert cfg.device.profile == "sim"
    assert cfg.simulation.fingerprint is True  # from firmware_profiles/sim.toml
    assert cfg.hardware.camera.backend == "sim"
    assert cfg.mqtt.protocol == "5"


def test_local_file_overrides_profile_and_env_overrides_file(tmp_path: Path) -> None:
    p = write(tmp_path, '[device]\nid = "k9"\nprofile = "rpi-r307-pcsc"\n[mqtt]\nport = 1884\n')
    cfg = config.load(p, environ={})
    assert cfg.hardware.camera.backend == "picamera2"  # profile layer
    assert cfg.mqtt.port == 1884  # local file
    cfg = config.load(
        p,
        environ={
            "APPLIANCE_MQTT__PORT": "1885",
            "APPLIANCE_DEVICE__GROUPS": '["hanoi", "north"]',
            "APPLIANCE_HARDWARE__CAMERA__BACKEND": "opencv",
            "APPLIANCE_PROFILES_DIR_UNRELATED": "x",
        },
    )
    assert cfg.mqtt.port == 1885
    assert cfg.device.groups == ["hanoi", "north"]
    assert cfg.hardware.camera.backend == "opencv"


def test_env_can_choose_the_profile(tmp_path: Path) -> None:
    cfg = config.load(None, environ={"APPLIANCE_DEVICE__PROFILE": "rpi-r307-pcsc"})
    assert cfg.hardware.fingerprint.port == "/dev/ttyUSB0"


def test_desired_layer_is_highest(tmp_path: Path) -> None:
    p = write(tmp_path, "[telemetry]\nheartbeat_s = 10\n")
    cfg = config.load(
        p,
        environ={"APPLIANCE_TELEMETRY__HEARTBEAT_S": "20"},
        desired={"telemetry": {"heartbeat_s": 40}},
    )
    assert cfg.telemetry.heartbeat_s == 40


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[mqtt]\nprot = 1\n", "mqtt.prot: unknown key"),
        ("[mqtt]\nport = 70000\n", "mqtt.port: Input should be less than or equal to 65535"),
        ('[mqtt]\nprotocol = "4"\n', "mqtt.protocol: Input should be '5' or '3.1.1'"),
        ('[device]\nid = "a/b"\n', "device.id: String should match pattern"),
        ('[device]\ngroups = ["a#"]\n', "device.groups: Value error"),
        ("[nonsense]\nx = 1\n", "nonsense: unknown key"),
        ('[hardware.camera]\nbackend = "kodak"\n', "hardware.camera.backend: Input should be"),
        ('[device]\nprofile = "nope"\n', "device.profile: no profile 'nope'"),
        ("[mqtt\nport = 1\n", "is not valid TOML"),
    ],
)
def test_every_problem_names_its_field(tmp_path: Path, text: str, expected: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        config.load(p, environ={}, require_file=True)
    lines = [f"{path}: {reason}" for path, reason in exc.value.problems]
    assert any(expected in line for line in lines), lines


def test_config_round_trips_through_json() -> None:
    cfg = config.load(None, environ={})
    again = config.AppConfig.model_validate(cfg.redacted())
    assert again == cfg


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_config_check_cli_good_and_bad_files(tmp_path: Path) -> None:
    good = write(tmp_path, '[device]\nid = "k1"\n', "good.toml")
    bad = write(tmp_path, "[mqtt]\nport = 0\nkeepalive = 5\n", "bad.toml")
    r = run_cli("config", "check", str(good))
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout
    r = run_cli("config", "check", str(good), str(bad))
    assert r.returncode == 2
    assert "mqtt.port: Input should be greater than or equal to 1" in r.stderr
    assert "mqtt.keepalive: unknown key (check its spelling and section)" in r.stderr
    r = run_cli("config", "check", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "file not found" in r.stderr


def test_shipped_profiles_are_valid(tmp_path: Path) -> None:
    for profile in sorted((ROOT / "firmware_profiles").glob("*.toml")):
        p = write(tmp_path, f'[device]\nprofile = "{profile.stem}"\n', f"{profile.stem}.toml")
        assert config.check_file(p) == [], profile


def test_help_explains_each_command() -> None:
    for args in (
        ["--help"],
        ["run", "--help"],
        ["config", "check", "--help"],
        ["status", "--help"],
        ["schemas", "--help"],
    ):
        r = run_cli(*args)
        assert r.returncode == 0, (args, r.stderr)
        assert "usage: appliance" in r.stdout
    assert "default" in run_cli("run", "--help").stdout


def test_configuration_reference_doc_is_current() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc == config.reference_markdown(), (
        "docs/configuration.md is stale: run `appliance config reference > docs/configuration.md`"
    )
