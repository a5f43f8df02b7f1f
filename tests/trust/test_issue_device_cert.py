"""provisioning/issue-device-cert and render-broker-config as real processes (openssl)."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PROVISIONING = Path(__file__).resolve().parents[2] / "provisioning"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PROVISIONING / "issue-device-cert"), *args],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_ca_once_and_device_certificate(tmp_path: Path) -> None:
    ca, out = tmp_path / "ca", tmp_path / "out"
    r = _run("--ca-dir", str(ca), "--out", str(out), "kiosk-001")
    assert r.returncode == 0, r.stderr
    ca_pem = (ca / "ca.crt").read_bytes()
    assert stat.S_IMODE((ca / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "kiosk-001.key").stat().st_mode) == 0o600
    r = _run("--ca-dir", str(ca), "--out", str(out), "kiosk-002")
    assert r.returncode == 0, r.stderr
    assert (ca / "ca.crt").read_bytes() == ca_pem  # the CA was not re-created
    ca_cert = _cert(ca / "ca.crt")
    for dev in ("kiosk-001", "kiosk-002"):
        cert = _cert(out / f"{dev}.crt")
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == dev
        assert cert.issuer == ca_cert.subject
        cert.verify_directly_issued_by(ca_cert)
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # Serial numbers are random and distinct.
    assert _cert(out / "kiosk-001.crt").serial_number != _cert(out / "kiosk-002.crt").serial_number


def test_server_certificate_has_san(tmp_path: Path) -> None:
    r = _run(
        "--ca-dir", str(tmp_path / "ca"), "--out", str(tmp_path / "o"), "--kind", "server",
        "--san", "DNS:mqtt.example,IP:127.0.0.1", "mqtt.example",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    cert = _cert(tmp_path / "o" / "mqtt.example.crt")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["a/b"], "invalid name"),
        (["a+b"], "invalid name"),
        (["#"], "invalid name"),
        (["-x"], "unknown option"),
        (["controller"], "reserved"),
        (["central"], "reserved"),
        (["directory"], "reserved"),
        (["group"], "reserved"),
        (["--kind", "controller", "ops"], "must have the CN"),
        (["--kind", "central", "receiver"], "must have the CN"),
        (["--kind", "root", "x"], "unknown --kind"),
        (["--days", "ten", "x"], "positive integers"),
        ([], "NAME is required"),
    ],
)
def test_refusals(tmp_path: Path, args: list[str], message: str) -> None:
    r = _run("--ca-dir", str(tmp_path / "ca"), "--out", str(tmp_path / "o"), *args)
    assert r.returncode == 2
    assert message in r.stderr
    assert list(tmp_path.glob("o/*.crt")) == []


def test_central_certificate_for_the_enrollment_receiver(tmp_path: Path) -> None:
    r = _run("--ca-dir", str(tmp_path / "ca"), "--out", str(tmp_path / "o"), "--kind", "central",
             "central")  # fmt: skip
    assert r.returncode == 0, r.stderr
    cert = _cert(tmp_path / "o" / "central.crt")
    assert cert.subject.rfc4514_string() == "CN=central"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    assert (tmp_path / "o" / "central.key").stat().st_mode & 0o777 == 0o600


def test_existing_key_needs_force(tmp_path: Path) -> None:
    base = ["--ca-dir", str(tmp_path / "ca"), "--out", str(tmp_path / "o")]
    assert _run(*base, "k1").returncode == 0
    first = (tmp_path / "o" / "k1.key").read_bytes()
    r = _run(*base, "k1")
    assert r.returncode == 2 and "--force" in r.stderr
    assert (tmp_path / "o" / "k1.key").read_bytes() == first
    assert _run(*base, "--force", "k1").returncode == 0
    assert (tmp_path / "o" / "k1.key").read_bytes() != first
    assert not list((tmp_path / "o").glob(".issue.*"))  # work dir cleaned up


def test_help() -> None:
    r = _run("--help")
    assert r.returncode == 0
    for opt in ("--ca-dir", "--out", "--kind", "--days", "--san", "--force", "--init-ca"):
        assert opt in r.stdout


def test_render_refuses_bad_input(tmp_path: Path) -> None:
    render = str(PROVISIONING / "render-broker-config")
    r = subprocess.run(
        [render, "--out", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert r.returncode == 2 and "required" in r.stderr
    f = tmp_path / "x.pem"
    f.write_text("x")
    r = subprocess.run(
        [render, "--out", str(tmp_path / "c"), "--ca", str(f), "--cert", str(f), "--key", str(f),
         "--prefix", "kiosk/#"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 2 and "invalid --prefix" in r.stderr
    r = subprocess.run(
        [render, "--out", str(tmp_path / "c"), "--ca", str(f), "--cert", str(f), "--key", str(f),
         "--prefix", "fleet/vn", "--port", "9999"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    conf = (tmp_path / "c" / "mosquitto.conf").read_text()
    acl = (tmp_path / "c" / "acl").read_text()
    assert "listener 9999 0.0.0.0" in conf
    assert "@" not in conf.replace("@PLACEHOLDERS@", "")
    assert "pattern read fleet/vn/%u/cmd" in acl and "@PREFIX@" not in acl
    assert "user root" not in conf
