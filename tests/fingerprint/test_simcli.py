"""``appliance sim fingerprint`` as a real process: prints its pty, serves the driver, stops."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from appliance.drivers.fingerprint.device import FingerprintSensor

from .conftest import Events

MakeDev = Callable[..., tuple[FingerprintSensor, Events]]
CMD = [sys.executable, "-m", "appliance.drivers.fingerprint.simcli"]


def read_line(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise AssertionError("simulator printed nothing")
        return proc.stdout.readline().strip()
    finally:
        sel.close()


def test_help_explains_every_option_and_default() -> None:
    out = subprocess.run([*CMD, "--help"], capture_output=True, text=True, check=True).stdout
    options = ["--profile", "--seed", "--link", "--tcp", "--baud", "--no-pace", "--address"]
    options += ["--password", "--auto-finger", "--no-auto-finger", "--finger-delay-polls"]
    for opt in options:
        assert opt in out
    assert out.count("default") >= 11


def test_bad_profile_exits_with_a_message() -> None:
    r = subprocess.run(
        [*CMD, "--profile", "r999"], capture_output=True, text=True, timeout=60, check=False
    )
    assert r.returncode == 2 and "unknown sensor model 'r999'" in r.stderr


def test_serves_the_driver_on_a_pty_link_until_sigterm(
    tmp_path: Path, make_sensor: MakeDev
) -> None:
    link = tmp_path / "ttyFP"
    proc = subprocess.Popen(
        [*CMD, "--no-pace", "--link", str(link), "--finger-delay-polls", "2", "--seed", "7"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert read_line(proc) == str(link)
        assert os.path.islink(link)
        dev, _ = make_sensor(str(link))
        assert dev.health().state == "ok"
        cap = dev.capture(time.monotonic() + 10)
        assert cap.image.shape == (288, 256) and int(cap.image.std()) > 10
        dev.stop()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert not link.exists()
