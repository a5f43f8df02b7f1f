"""The README's main command, as a user runs it (fast serial line to keep the test short): the
production configuration (claim-provisioned kiosk, signed commands, mutual TLS with the shipped
ACL, end-to-end delivery) enrolls and issues a card; ``--dev`` still starts the plain kiosk."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

from appliance.config import load
from appliance.devtools.broker import free_port
from appliance.fleet.conn import read_fleet_config
from appliance.trust.envelope import CommandVerifier
from appliance.trust.keys import load_public_key
from appliance.trust.sealed import scan_for_plaintext_biometrics
from tests.helpers import ROOT


def demo(work: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "demo", "--once", "--workdir", str(work),
         "--port", str(free_port()), *extra],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout, check=False,
    )  # fmt: skip


def _screen(url: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("X-Screen-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_demo_enrolls_issues_and_leaves_no_plaintext(tmp_path: Path) -> None:
    work = tmp_path / "run"
    # Not --once: the demo keeps the kiosk running after the enrollment, as for a person who
    # opens the screen, until Ctrl-C.
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "demo", "--workdir", str(work),
         "--port", str(free_port()), "--station-port", str(free_port()), "--fast"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )  # fmt: skip
    lines: list[str] = []
    running = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Running. Ctrl-C"):
                running.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not running.wait(0.5) and reader.is_alive() and time.monotonic() < deadline:
            pass  # the demo runs (or ended: its output says why)
        assert running.is_set(), "".join(lines)[-3000:]
        # The screen's URL on loopback, with this boot's token: the screen answers it.
        out = "".join(lines)
        url = next(ln.strip() for ln in lines if ln.strip().startswith("http://127.0.0.1:"))
        base, token = url.split("/?token=")
        assert token == (work / "state" / "screen-token").read_text()
        status, page = _screen(url)
        assert status == 200 and b"<html" in page.lower()
        status, body = _screen(base + "/v1/state", token)
        assert status == 200 and json.loads(body)["screen"] == "welcome", body
        assert _screen(base + "/v1/state")[0] == 401
        assert "officer sign-in: can-bo-demo / PIN " in out
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the demo stops the daemon and the broker
        try:
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        reader.join(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0, "".join(lines)[-3000:]
    out = "".join(lines)
    # The kiosk was provisioned the production way: claim token, approval, its own certificate.
    assert "[4/6] claim     approved" in out and "signed commands only" in out
    assert "[6/6] verify" in out and "accepted the connection over TLS" in out
    assert "production configuration: claim-provisioned, signed commands, mutual TLS" in out
    cfg = load(work / "appliance.toml", environ={}, require_file=True)
    assert cfg.commands.allow_unsigned is False and cfg.trust.root_keys
    assert cfg.mqtt.tls.enabled and cfg.mqtt.delivery == "end_to_end"
    conf = (work / "broker" / "conf" / "mosquitto.conf").read_text()
    assert "require_certificate true" in conf and "allow_anonymous false" in conf
    assert "pattern write kiosk/%u/status" in (work / "broker" / "conf" / "acl").read_text()
    # The main job, signed over TLS.
    assert "fingerprint  ok" in out and "card         ok" in out and "camera       ok" in out
    assert "device signature ok" in out and "hash chain ok" in out
    assert "the kiosk purged its sealed copy" in out
    # The scripted enrollment went to the centre the demo keeps running for its screen (the
    # background receiver), which Ctrl-C stopped cleanly.
    assert "receiver: stopped: 1 complete, 0 rejected" in out, out[-3000:]
    assert "directory: stopped: " in out and "issuance desk: stopped: " in out
    assert "Card issued and verified" in out and "passive authentication ok" in out
    assert "mosquitto_sub" in out and "mosquitto_pub" in out and "--cafile" in out
    assert scan_for_plaintext_biometrics([work / "state"]) == []
    # End-to-end delivery: the ingest recorded the kiosk's events and acknowledged them.
    ingest_log = (work / "ingest" / "controller.log").read_text()
    assert " 0 acknowledged" not in ingest_log and "acknowledged" in ingest_log, ingest_log
    # The hints work as printed after the enrollment. The pre-signed status command is still
    # accepted by the kiosk (its own key: the enrollment's later operator commands do not make
    # it a replay), checked against the kiosk's own replay state.
    kiosk_db = sqlite3.connect(work / "state" / "appliance.db")
    try:
        decision = CommandVerifier(
            roots=[load_public_key(p) for p in cfg.trust.root_keys],
            device_id="kiosk-demo",
            role_table={"status": "operator"},
            conn=kiosk_db,
            lock=threading.Lock(),
        ).check((work / "status-command.json").read_bytes())
    finally:
        kiosk_db.close()
    assert decision.accepted and decision.code == "ok", decision
    # The `appliance` of the printed commands is a path the shell finds (a fresh clone's venv
    # is not on PATH): the kiosk's own view runs as printed.
    status_hint = next(ln for ln in out.splitlines() if " status --config " in ln)
    r = subprocess.run(shlex.split(status_hint), capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PATH": "/usr/bin:/bin"}, check=False)  # fmt: skip
    assert r.returncode == 0 and "kiosk-demo" in r.stdout, r.stdout + r.stderr
    # The fleet tools find the demo's broker in the fleet home (no broker flags needed).
    fleet = read_fleet_config(work / "kit" / "fleet")["broker"]
    assert f"starting mosquitto on 127.0.0.1:{fleet['port']}:" in out
    assert fleet["host"] == "localhost" and fleet["cert_file"].endswith("controller.crt")
    assert all(Path(fleet[k]).is_file() for k in ("ca_file", "cert_file", "key_file"))
    assert f"export APPLIANCE_FLEET_HOME={work / 'kit' / 'fleet'}" in out
    # Private keys are 0600.
    for key in [*(work / "kit").rglob("*.key"), *(work / "state").rglob("*.key")]:
        assert key.stat().st_mode & 0o777 == 0o600, key


def test_demo_dev_mode_is_explicit_and_plain(tmp_path: Path) -> None:
    work = tmp_path / "run"
    r = demo(work, "--dev", "--no-enroll", "--fast", timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "development mode (--dev)" in r.stdout
    data = tomllib.loads((work / "appliance.toml").read_text())
    assert data["commands"]["allow_unsigned"] is True and "tls" not in data["mqtt"]
