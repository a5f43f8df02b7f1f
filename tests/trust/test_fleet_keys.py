"""``appliance fleet keys``: root key and operator certificates, through the real CLI process."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from appliance.errors import TrustError
from appliance.fleet import keys as fleetkeys
from appliance.trust.certs import OperatorKey
from appliance.trust.envelope import TRUST_SCHEMA_SQL, CommandVerifier, EnvelopeBuilder
from appliance.trust.keys import load_public_key

NOW = 1_800_000_000


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, APPLIANCE_FLEET_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "appliance.fleet.keyscli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_cli_end_to_end(tmp_path: Path) -> None:
    home = tmp_path / "fleet"
    r = _cli(home, "init")
    assert r.returncode == 0, r.stderr
    assert "created" in r.stdout
    assert stat.S_IMODE((home / "root.key").stat().st_mode) == 0o600
    r2 = _cli(home, "init")
    assert r2.returncode == 0 and "already present" in r2.stdout
    assert load_public_key(home / "root.pub")  # unchanged, loadable

    ops = tmp_path / "ops"
    r = _cli(
        home, "issue-operator", "--generate-key", str(ops), "--name", "alice",
        "--role", "operator", "--role", "technician", "--device", "kiosk-001",
        "--group", "hanoi", "--not-after", "30d",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((ops / "alice.key").stat().st_mode) == 0o600
    shown = _cli(home, "show", str(ops / "alice.cert"))
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["roles"] == ["operator", "technician"]
    assert info["devices"] == ["kiosk-001"] and info["groups"] == ["hanoi"]
    assert info["status"] == "valid"

    # The issued key and certificate sign a command that a kiosk trusting root.pub accepts.
    op = OperatorKey.load(ops / "alice.key", ops / "alice.cert")
    conn = sqlite3.connect(tmp_path / "kiosk.db", isolation_level=None)
    for stmt in TRUST_SCHEMA_SQL:
        conn.execute(stmt)
    verifier = CommandVerifier(
        roots=[load_public_key(home / "root.pub")],
        device_id="kiosk-001",
        role_table={"enroll.start": "operator"},
        conn=conn,
        lock=threading.Lock(),
    )
    d = verifier.check(EnvelopeBuilder(op).build("enroll.start", b"{}", "kiosk-001"))
    assert d.accepted, d
    assert d.issuer_name == "alice"
    conn.close()


def test_cli_issue_for_existing_public_key(tmp_path: Path) -> None:
    home = tmp_path / "fleet"
    assert _cli(home, "init").returncode == 0
    pub = fleetkeys.generate_operator_key(tmp_path / "bob", "bob")
    out = tmp_path / "bob.cert"
    r = _cli(
        home, "issue-operator", "--public-key", str(tmp_path / "bob" / "bob.pub"),
        "--name", "bob", "--role", "admin", "--device", "*", "--not-after", "2099-12-31",
        "--out", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    cert = fleetkeys.read_certificate(out)
    assert cert.public_key == pub
    # Refuses to overwrite without --force.
    again = _cli(
        home, "issue-operator", "--public-key", str(tmp_path / "bob" / "bob.pub"),
        "--name", "bob", "--role", "admin", "--device", "*", "--not-after", "1d",
        "--out", str(out),
    )  # fmt: skip
    assert again.returncode == 1 and "already exists" in again.stderr


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    home = tmp_path / "fleet"
    # No root yet.
    r = _cli(
        home, "issue-operator", "--generate-key", str(tmp_path / "k"), "--name", "x",
        "--role", "admin", "--device", "*", "--not-after", "1d",
    )  # fmt: skip
    assert r.returncode == 1 and "key_missing" in r.stderr
    assert _cli(home, "init").returncode == 0
    # Unknown role: argparse usage error.
    r = _cli(
        home, "issue-operator", "--generate-key", str(tmp_path / "k"), "--name", "x",
        "--role", "root", "--device", "*", "--not-after", "1d",
    )  # fmt: skip
    assert r.returncode == 2 and "invalid choice" in r.stderr
    # No scope at all.
    r = _cli(
        home, "issue-operator", "--generate-key", str(tmp_path / "k2"), "--name", "x",
        "--role", "admin", "--not-after", "1d",
    )  # fmt: skip
    assert r.returncode == 1 and "at least one device" in r.stderr
    r = _cli(
        home, "issue-operator", "--generate-key", str(tmp_path / "k3"), "--name", "x",
        "--role", "admin", "--device", "*", "--not-after", "yesterday-ish",
    )  # fmt: skip
    assert r.returncode == 1 and "invalid_validity" in r.stderr
    # A group-readable root key is refused.
    os.chmod(home / "root.key", 0o640)
    r = _cli(
        home, "issue-operator", "--generate-key", str(tmp_path / "k4"), "--name", "x",
        "--role", "admin", "--device", "*", "--not-after", "1d",
    )  # fmt: skip
    assert r.returncode == 1 and "key_permissions" in r.stderr


def test_show_reports_foreign_certificate(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    fleetkeys.init_root(a)
    fleetkeys.init_root(b)
    pub = fleetkeys.generate_operator_key(tmp_path / "ops", "carol")
    cert = fleetkeys.issue_operator(
        a, pub, roles=["operator"], devices=["*"], not_after=NOW + 10**9, name="carol"
    )
    fleetkeys.write_certificate(tmp_path / "carol.cert", cert)
    r = _cli(b, "show", str(tmp_path / "carol.cert"))
    assert r.returncode == 1
    assert "untrusted_issuer" in json.loads(r.stdout)["status"]


def test_help_explains_options() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "appliance.fleet.keyscli", "issue-operator", "--help"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0
    for word in ("--public-key", "--generate-key", "--role", "--not-after", "technician"):
        assert word in r.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", NOW + 30 * 86400),
        ("12h", NOW + 12 * 3600),
        ("2w", NOW + 14 * 86400),
        ("2027-01-31", 1_801_439_999),
        ("2027-01-31T12:00:00Z", 1_801_396_800),
        ("2027-01-31T19:00:00+07:00", 1_801_396_800),
    ],
)
def test_parse_not_after(text: str, expected: int) -> None:
    assert fleetkeys.parse_not_after(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["", "0d", "10x", "tomorrow", "2027-13-01"])
def test_parse_not_after_rejects(text: str) -> None:
    with pytest.raises(TrustError):
        fleetkeys.parse_not_after(text, now=NOW)
