"""The README's main command, as a user runs it (fast serial line to keep the test short): the
production configuration (claim-provisioned kiosk, signed commands, mutual TLS with the shipped
ACL, end-to-end delivery) enrolls and issues a card; ``--dev`` still starts the plain kiosk."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from appliance.config import load
from appliance.devtools.broker import free_port
from appliance.trust.sealed import scan_for_plaintext_biometrics
from tests.helpers import ROOT


def demo(work: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "demo", "--once", "--workdir", str(work),
         "--port", str(free_port()), *extra],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout, check=False,
    )  # fmt: skip


def test_demo_enrolls_issues_and_leaves_no_plaintext(tmp_path: Path) -> None:
    work = tmp_path / "run"
    r = demo(work, "--fast")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
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
    assert "Card issued and verified" in out and "passive authentication ok" in out
    assert "mosquitto_sub" in out and "mosquitto_pub" in out and "--cafile" in out
    assert scan_for_plaintext_biometrics([work / "state"]) == []
    # End-to-end delivery: the ingest recorded the kiosk's events and acknowledged them.
    ingest_log = (work / "ingest" / "controller.log").read_text()
    assert " 0 acknowledged" not in ingest_log and "acknowledged" in ingest_log, ingest_log
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
