"""A throw-away CSCA and Document Signer made at run time, for tests, benchmarks and demos.

Never commit what this writes; production keys live with the central issuer, and the kiosk
holds only the CSCA certificates (its trust bundle).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class TestPki:
    csca_key: ec.EllipticCurvePrivateKey
    csca_cert: x509.Certificate
    ds_key: ec.EllipticCurvePrivateKey
    ds_cert: x509.Certificate


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test only"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def make_test_pki(name: str = "TEST CSCA VN", *, days: int = 3650) -> TestPki:
    """A P-256 CSCA (self-signed CA) and a DS certificate it issued (ICAO 9303 Part 12 shape)."""
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    csca_key = ec.generate_private_key(ec.SECP256R1())
    csca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(csca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(csca_key, hashes.SHA256())
    )
    ds_key = ec.generate_private_key(ec.SECP256R1())
    ds_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name.replace("CSCA", "DS")))
        .issuer_name(csca_cert.subject)
        .public_key(ds_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .sign(csca_key, hashes.SHA256())
    )
    return TestPki(csca_key, csca_cert, ds_key, ds_cert)


def write_test_pki(pki: TestPki, directory: Path) -> dict[str, Path]:
    """Write the certificates (0644) and keys (0600) as PEM; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {
        "csca_cert": directory / "csca.pem",
        "ds_cert": directory / "ds.pem",
        "ds_key": directory / "ds.key",
    }
    out["csca_cert"].write_bytes(pki.csca_cert.public_bytes(serialization.Encoding.PEM))
    out["ds_cert"].write_bytes(pki.ds_cert.public_bytes(serialization.Encoding.PEM))
    key_pem = pki.ds_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(out["ds_key"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    os.chmod(out["ds_key"], 0o600)
    return out
