"""Configuration: layers, environment overrides, unknown keys, `appliance config check`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance import config
from appliance.devtools.broker import Mosquitto
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


def run_cli_env(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
        env={**base, **env},
    )


def test_config_check_includes_the_environment_overrides(tmp_path: Path) -> None:
    """What the daemon loads is the file plus APPLIANCE_<SECTION>__<KEY>: the check sees both,
    names the variable that set a bad value, and --no-env checks the file alone."""
    good = write(tmp_path, '[device]\nid = "k1"\n', "good.toml")
    bad_env = {"APPLIANCE_MQTT__PORT": "0", "APPLIANCE_TELEMETRY__HEARTBEET_S": "5"}
    r = run_cli_env(bad_env, "config", "check", str(good))
    assert r.returncode == 2, r.stdout
    assert (
        "mqtt.port: Input should be greater than or equal to 1 (set by APPLIANCE_MQTT__PORT)"
        in r.stderr
    )
    assert (
        "telemetry.heartbeet_s: unknown key (check its spelling and section) "
        "(set by APPLIANCE_TELEMETRY__HEARTBEET_S)" in r.stderr
    )
    assert "environment overrides: APPLIANCE_MQTT__PORT, APPLIANCE_TELEMETRY__HEARTBEET_S" in (
        r.stdout
    )
    r = run_cli_env(bad_env, "config", "check", "--no-env", str(good))
    assert r.returncode == 0, r.stderr
    r = run_cli_env({"APPLIANCE_MQTT__PORT": "1885"}, "config", "check", str(good))
    assert r.returncode == 0, r.stderr
    assert f"{good}: ok (with the environment overrides)" in r.stdout
    # An override can also repair a file (the daemon would start): the check agrees.
    bad_file = write(tmp_path, "[mqtt]\nport = 0\n", "bad.toml")
    assert run_cli_env({}, "config", "check", str(bad_file)).returncode == 2
    r = run_cli_env({"APPLIANCE_MQTT__PORT": "1883"}, "config", "check", str(bad_file))
    assert r.returncode == 0, r.stderr


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


def test_run_without_a_configuration_file_refuses_and_names_the_flags(tmp_path: Path) -> None:
    """A kiosk whose configuration file is missing must not start as the simulated kit with
    unsigned commands accepted (issue 12, point 7): exit 2, naming --config and --dev."""
    missing = tmp_path / "appliance.toml"
    r = run_cli("run", "--config", str(missing), "--state-dir", str(tmp_path / "state"))
    assert r.returncode == 2, r.stderr
    assert f"no configuration file at {missing}" in r.stderr
    assert "--config FILE" in r.stderr and "--dev" in r.stderr
    assert not (tmp_path / "state").exists()  # refused before touching the state directory


def test_run_at_the_default_path_refuses_like_the_systemd_unit_calls_it(tmp_path: Path) -> None:
    """The systemd unit passes the default path explicitly; neither form starts without it."""
    if config.DEFAULT_CONFIG_PATH.exists():
        pytest.skip(f"{config.DEFAULT_CONFIG_PATH} exists on this machine")
    for args in ([], ["--config", str(config.DEFAULT_CONFIG_PATH)]):
        r = run_cli("run", *args, "--state-dir", str(tmp_path / "state"))
        assert r.returncode == 2, (args, r.stderr)
        assert "no configuration file at /etc/appliance/appliance.toml" in r.stderr


def test_run_dev_refuses_an_existing_configuration_file(tmp_path: Path) -> None:
    p = write(tmp_path, '[device]\nid = "k1"\n')
    r = run_cli("run", "--dev", "--config", str(p), "--state-dir", str(tmp_path / "state"))
    assert r.returncode == 2, r.stderr
    assert "--dev is for a run without a configuration file" in r.stderr


def test_run_dev_is_the_simulated_kit_with_unsigned_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--dev layers the simulated kit and unsigned commands under the environment, so an
    operator's APPLIANCE_* variables still win, and reloads (same process) see the same."""
    import argparse

    from appliance import cli

    for name in cli.DEV_RUN_ENV:
        # setenv first so that monkeypatch restores the variable's absence afterwards:
        # _run_config_or_exit writes os.environ itself, which must not leak into later tests.
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)
    monkeypatch.setenv("APPLIANCE_MQTT__PORT", "1999")
    args = argparse.Namespace(config=tmp_path / "missing.toml", dev=True)
    cli._run_config_or_exit(args)
    cfg = config.load(args.config)
    assert cfg.commands.allow_unsigned is True
    assert cfg.device.profile == "sim" and cfg.simulation.fingerprint is True
    assert cfg.mqtt.port == 1999
    monkeypatch.setenv("APPLIANCE_COMMANDS__ALLOW_UNSIGNED", "false")
    cli._run_config_or_exit(args)
    assert config.load(args.config).commands.allow_unsigned is False


def test_the_dev_run_test_leaves_the_environment_as_it_found_it() -> None:
    """Runs after the test above (same module, file order): nothing of --dev leaked."""
    import os

    from appliance import cli

    assert not set(cli.DEV_RUN_ENV) & set(os.environ)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("bad.toml", '[telemetry]\nheartbeet_s = 5\n[mqtt]\nport = 0\n[device]\nprofile = "x"\n'),
        ("bad.json", '{"telemetry": {"heartbeat_s": "often"}, "hardware": {"camera": 3}}'),
        ("list.json", "[1, 2]"),
    ],
)
def test_push_config_refuses_what_config_check_refuses(
    tmp_path: Path, name: str, text: str
) -> None:
    """`fleet push-config` runs config check's checker on the document before signing: the same
    problems, exit 2, and it never gets as far as the signer or the broker (none exist here)."""
    doc = write(tmp_path, text, name)
    home = tmp_path / "empty-fleet-home"
    r = run_cli_env(
        {"APPLIANCE_MQTT__PORT": "1"},  # this machine's overrides are not the kiosk's
        "fleet", "push-config", "kiosk-1", str(doc), "--home", str(home), "--port", "9",
    )  # fmt: skip
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "nothing signed or published" in r.stderr
    problems = [line for line in r.stderr.splitlines() if ": " in line and "problem(s)" not in line]
    assert problems
    expected = [f"{p}: {reason}" for p, reason in config.check_file(
        doc, fmt="json" if name.endswith(".json") else "toml"
    )]  # fmt: skip
    assert problems == expected
    assert not home.exists()


def test_run_dev_serves_unsigned_commands_without_a_configuration_file(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """The development run is a real daemon: no configuration file, the simulated kit, the
    operator's APPLIANCE_* variables on top, unsigned commands answered."""
    import os
    import time

    from appliance.devtools.controller import Controller
    from tests.helpers import wait_online

    dev = "kiosk-dev-run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update(
        PYTHONUNBUFFERED="1",
        APPLIANCE_CONFIG=str(tmp_path / "appliance.toml"),  # absent
        APPLIANCE_DEVICE__ID=dev,
        APPLIANCE_MQTT__HOST=broker.host,
        APPLIANCE_MQTT__PORT=str(broker.port),
        APPLIANCE_SIMULATION__FINGERPRINT="false",
        APPLIANCE_SIMULATION__CARD="false",
        APPLIANCE_HARDWARE__CAMERA__ENABLED="false",
        APPLIANCE_HARDWARE__FINGERPRINT__ENABLED="false",
        APPLIANCE_HARDWARE__CARD__ENABLED="false",
    )
    ctl = Controller(broker.host, broker.port).connect()
    t0 = time.time()
    log = (tmp_path / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "run", "--dev", "--state-dir",
         str(tmp_path / "state")],
        stdout=log, stderr=log, env=env, cwd=ROOT,
    )  # fmt: skip
    log.close()
    try:
        wait_online(ctl, dev, after=t0, timeout=30)
        reply = ctl.request(dev, "ping", {"echo": "dev"}, timeout=10)
        assert reply["ok"] is True, reply
    finally:
        proc.terminate()
        rc = proc.wait(20)
        ctl.close()
    assert rc == 0
    assert "development run (--dev)" in (tmp_path / "daemon.log").read_text()
