"""Per-kiosk identities for the fleet simulator, so it runs on the production path.

The shipped broker configuration takes a client certificate's CN as the MQTT username and the
shipped ACL keys every kiosk topic on it (``pattern write kiosk/%u/status``), so kiosks sharing
one certificate are refused. :class:`SimIdentities` gives every simulated kiosk what a
provisioned kiosk has:

* an X.509 client certificate, CN = the kiosk id, issued by the fleet CA with the profile of
  provisioning/issue-device-cert (EC P-256 key, ``CA:FALSE``, ``digitalSignature,
  keyEncipherment``, ``clientAuth``), made in-process with ``cryptography`` (about a
  millisecond each, where the script's three openssl runs take tens);
* an Ed25519 device key (appliance/trust/keys.py :class:`DeviceIdentity`) that signs every
  message it publishes, the ``sig`` user property of docs/protocol.md ("Signed messages").

Everything is written under one directory (keys mode 0600) and reused when it is already there,
so a test session or a benchmark issues a fleet's identities once.

Given the fleet's root keys (``command_roots``), a kiosk also opens signed command envelopes
with the daemon's own :class:`CommandVerifier` (chain, role, target, expiry, replay; replay
state in an in-memory SQLite database per kiosk, made on its first command), so a command
from the fleet tools or the fleet service gets the answer a kiosk would give.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import sqlite3
import ssl
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from nacl.signing import SigningKey

from ..errors import ConfigError
from ..trust.envelope import CommandVerifier, ensure_replay_schema
from ..trust.keys import DeviceIdentity

# The commands a simulated kiosk answers, and who may send them (docs/trust.md "Roles").
SIM_ROLES: dict[str, tuple[str, ...]] = {
    "ping": ("operator", "admin", "technician"),
    "status": ("operator", "admin", "technician"),
}


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    tmp.replace(path)


class SimIdentities:
    """The certificates and device keys of a simulated fleet, by kiosk id."""

    def __init__(
        self,
        ca_file: Path,
        directory: Path,
        devices: Iterable[str],
        *,
        command_roots: Sequence[bytes] = (),
    ) -> None:
        self.ca_file = Path(ca_file)
        self.dir = Path(directory)
        self.devices = list(devices)
        self.command_roots = list(command_roots)
        self._verifiers: dict[str, CommandVerifier] = {}
        self._keys: dict[str, DeviceIdentity] = {}
        for dev in self.devices:
            seed = (self.dir / f"{dev}.sign").read_bytes()
            self._keys[dev] = DeviceIdentity(SigningKey(seed))

    @classmethod
    def issue(
        cls,
        ca_dir: Path,
        directory: Path,
        devices: Iterable[str],
        *,
        days: int = 30,
        command_roots: Sequence[bytes] = (),
    ) -> SimIdentities:
        """Issue what is missing for ``devices`` from the fleet CA in ``ca_dir`` (``ca.key``,
        ``ca.crt`` as provisioning/issue-device-cert keeps them) into ``directory``."""
        ca_dir, directory = Path(ca_dir), Path(directory)
        try:
            ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
            ca_key = serialization.load_pem_private_key(
                (ca_dir / "ca.key").read_bytes(), password=None
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"fleet CA unusable in {ca_dir}: {exc}", [("ca_dir", str(exc))]
            ) from None
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise ConfigError("the fleet CA key is not an EC key", [("ca_dir", str(ca_dir))])
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        devs = list(devices)
        now = dt.datetime.now(dt.UTC)
        for dev in devs:
            crt, key, sign = (directory / f"{dev}{ext}" for ext in (".crt", ".key", ".sign"))
            if not sign.exists():
                _write_private(sign, secrets.token_bytes(32))
            if crt.exists() and key.exists():
                continue
            priv = ec.generate_private_key(ec.SECP256R1())
            cert = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dev)]))
                .issuer_name(ca_cert.subject)
                .public_key(priv.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=True,
                        content_commitment=False,
                        key_encipherment=True,
                        data_encipherment=False,
                        key_agreement=False,
                        key_cert_sign=False,
                        crl_sign=False,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
                .add_extension(
                    x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
                )
                .sign(ca_key, hashes.SHA256())
            )
            _write_private(
                key,
                priv.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
            crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(ca_dir / "ca.crt", directory, devs, command_roots=command_roots)

    def problems(self, devices: list[str], *, v5: bool, shared_cert: bool) -> list[tuple[str, str]]:
        """What stops these identities serving a simulated fleet of ``devices``
        (FleetConfig.validate)."""
        out: list[tuple[str, str]] = []
        if shared_cert:
            out.append(("identities", "a certificate per kiosk, so no shared tls_cert"))
        if not v5:
            out.append(("identities", "signed messages need MQTT 5 user properties"))
        missing = [d for d in devices if d not in self._keys]
        if missing:
            out.append(("identities", f"no identity for {len(missing)} kiosk(s): {missing[0]} ..."))
        return out

    def ssl_context(self, device: str) -> ssl.SSLContext:
        """A client TLS context presenting ``device``'s certificate."""
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))
            ctx.load_cert_chain(self.dir / f"{device}.crt", self.dir / f"{device}.key")
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"simulated kiosk {device}: TLS material unusable: {exc}", [("tls", str(exc))]
            ) from None
        return ctx

    def sign(self, device: str, payload: bytes) -> str:
        """The ``sig`` user property of ``payload`` signed by ``device``'s key."""
        return self._keys[device].sign(payload).to_header()

    @property
    def verifies_commands(self) -> bool:
        return bool(self.command_roots)

    def open_command(
        self, device: str, message: bytes
    ) -> tuple[bytes | None, tuple[str, str] | None]:
        """(the request inside, None) for an accepted signed command, else (None, (code,
        reason)) with the verifier's refusal code (docs/protocol.md error table)."""
        v = self._verifiers.get(device)
        if v is None:
            conn, lock = sqlite3.connect(":memory:", check_same_thread=False), threading.Lock()
            ensure_replay_schema(conn, lock)
            v = self._verifiers[device] = CommandVerifier(
                roots=self.command_roots,
                device_id=device,
                role_table=SIM_ROLES,
                conn=conn,
                lock=lock,
            )
        decision = v.check(message)
        if not decision.accepted or decision.payload is None:
            return None, (decision.code, decision.reason)
        return decision.payload, None

    def public_keys(self) -> dict[str, bytes]:
        """{kiosk id: Ed25519 public key}, what the fleet's registry approves."""
        return {dev: k.public_key for dev, k in self._keys.items()}
