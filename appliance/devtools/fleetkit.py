"""A throw-away fleet in one directory, made with the production tooling, for the demo and the
tests: the production path without any committed key.

* ``ca/`` and ``certs/``: the broker's X.509 material from provisioning/issue-device-cert (the
  fleet CA, the broker's server certificate for ``localhost``/``127.0.0.1``, and the client
  identities of the shipped ACL: ``controller``, ``central``, ``directory``, ``claimant``).
* ``fleet/``: the fleet home of the ``appliance fleet`` tools: the fleet root, the central
  enrollment key pair and ``ingest`` signer (appliance/central/keys.py), an ``operator``, an
  ``admin`` and a ``directory`` signing key with certificates under the root (``fleet keys
  issue-operator``).

Every private key is mode 0600. :meth:`FleetKit.broker` starts mosquitto with the shipped
configuration (mutual TLS, ``use_identity_as_username``, the shipped ACL) on loopback.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey

from ..errors import ApplianceError
from ..fleet.conn import BrokerOptions
from ..fleet.keys import write_certificate
from ..protocol.codes import ErrorCode
from ..trust import keys
from ..trust.certs import ROOT_PUB_FILE, FleetRoot, OperatorKey
from ..trust.sealed import ENROLLMENT_PUB_FILE
from .broker import PROVISIONING, BrokerTls, Mosquitto
from .controller import Controller

ISSUE_CERT = PROVISIONING / "issue-device-cert"
HOST = "localhost"  # the name in the broker's certificate (with 127.0.0.1)
# Fleet signing keys the kit makes: name -> roles (docs/trust.md "Roles").
SIGNERS = {
    "operator": ("operator",),
    "admin": ("admin", "technician"),
    # every role, for tests and tools that send any command (one key instead of three)
    "fleet-all": ("operator", "admin", "technician"),
    # the citizen directory's answers (appliance/central/directory.py)
    "directory": ("directory",),
}
IDENTITIES = ("controller", "central", "directory", "claimant")


@dataclass
class FleetKit:
    root: Path
    validity_s: int = 7 * 86400

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def home(self) -> Path:
        return self.root / "fleet"

    @property
    def ca_file(self) -> Path:
        return self.certs / "ca.crt"

    @property
    def root_pub(self) -> Path:
        return self.home / ROOT_PUB_FILE

    @property
    def enrollment_pub(self) -> Path:
        return self.home / ENROLLMENT_PUB_FILE

    def create(self) -> FleetKit:
        """Make what is missing (idempotent; nothing existing is replaced)."""
        from ..central.keys import ensure_central_keys

        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.certs / f"{HOST}.crt").exists():
            self.issue_cert(HOST, "--kind", "server", "--san", f"DNS:{HOST},IP:127.0.0.1")
        for ident in IDENTITIES:
            if not (self.certs / f"{ident}.crt").exists():
                self.issue_cert(ident, "--kind", ident)
        ensure_central_keys(self.home)
        for name, roles in SIGNERS.items():
            if not (self.home / f"{name}.key").exists():
                self.make_signer(name, roles)
        return self

    def issue_cert(self, name: str, *extra: str, out: Path | None = None) -> None:
        """provisioning/issue-device-cert NAME with this kit's CA."""
        proc = subprocess.run(
            [str(ISSUE_CERT), "--ca-dir", str(self.ca_dir), "--out", str(out or self.certs),
             "--days", "30", *extra, name],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise ApplianceError(
                f"issue-device-cert {name} failed: {proc.stderr.strip()}", code=ErrorCode.PKI_FAILED
            )

    def make_signer(
        self, name: str, roles: tuple[str, ...], devices: tuple[str, ...] = ("*",)
    ) -> OperatorKey:
        """A signing key ``<home>/<name>.key`` (0600) and its certificate under the root."""
        root = FleetRoot.load(self.home)
        sk = SigningKey.generate()
        keys.save_signing_key(
            sk, self.home / f"{name}.key", self.home / f"{name}.pub", overwrite=True
        )
        now = int(time.time())
        cert = root.issue(
            bytes(sk.verify_key),
            roles=roles,
            devices=devices,
            not_after=now + self.validity_s,
            issued_at=now - 60,
            name=f"throw-away {name} key",
        )
        write_certificate(self.home / f"{name}.cert", cert, overwrite=True)
        return OperatorKey(sk, cert)

    def home_copy(self, dest: Path) -> Path:
        """A second fleet home with this kit's keys (root, central, signers) and no approved
        devices: tests whose kiosks change keys share the kit's trust without its registry."""
        import shutil

        dest.mkdir(parents=True, exist_ok=True, mode=0o700)
        for f in sorted(self.home.iterdir()):
            if f.is_file():
                shutil.copy2(f, dest / f.name)  # keeps 0600 on the keys
        return dest

    def signer(self, name: str = "operator") -> OperatorKey:
        return OperatorKey.load(self.home / f"{name}.key", self.home / f"{name}.cert")

    def controller(
        self,
        port: int,
        *,
        signer: str | None = "operator",
        host: str = "127.0.0.1",
        protocol: str = "5",
        client_id: str | None = None,
        identity: str = "controller",
    ) -> Controller:
        """A (not yet connected) :class:`Controller` with the ``identity`` certificate
        (``controller``; ``central`` for a receiver's role), signing with
        ``<home>/<signer>.key`` (``None``: unsigned, for tests about unsigned input only)."""
        return Controller(
            host,
            port,
            protocol=protocol,
            client_id=client_id,
            tls={
                "ca_certs": str(self.ca_file),
                "certfile": str(self.certs / f"{identity}.crt"),
                "keyfile": str(self.certs / f"{identity}.key"),
            },
            signer=None if signer is None else self.signer(signer),
        )

    # -- the broker ----------------------------------------------------------------------------

    def broker_tls(self) -> BrokerTls:
        return BrokerTls(
            ca_file=self.ca_file,
            cert_file=self.certs / f"{HOST}.crt",
            key_file=self.certs / f"{HOST}.key",
            probe_cert=self.certs / "controller.crt",
            probe_key=self.certs / "controller.key",
        )

    def broker(self, workdir: Path, port: int = 0) -> Mosquitto:
        """A (not yet started) mosquitto with the shipped configuration on 127.0.0.1."""
        return Mosquitto(workdir, port=port, tls=self.broker_tls())

    def options(self, port: int, identity: str = "controller") -> BrokerOptions:
        """How a fleet tool connects as ``identity`` (controller, central, directory,
        claimant)."""
        return BrokerOptions(
            host=HOST,
            port=port,
            ca_file=self.ca_file,
            cert_file=self.certs / f"{identity}.crt",
            key_file=self.certs / f"{identity}.key",
        )

    def flags(self, port: int, identity: str = "controller") -> list[str]:
        """The same as ``appliance fleet`` flags (``--home`` included)."""
        o = self.options(port, identity)
        return [
            "--home", str(self.home), "--host", o.host, "--port", str(port),
            "--ca", str(o.ca_file), "--cert", str(o.cert_file), "--key", str(o.key_file),
        ]  # fmt: skip

    def kiosk_tls_toml(self, device: str, *, enrollment_key: bool = True) -> str:
        """``[mqtt.tls]`` and ``[trust]`` for a kiosk given a certificate directly (tests
        that are not about provisioning): issues ``certs/<device>.crt`` if missing.
        ``enrollment_key=False`` leaves the central enrollment key out (no enrollment)."""
        if not (self.certs / f"{device}.crt").exists():
            self.issue_cert(device)
        enrollment = f'enrollment_key = "{self.enrollment_pub}"\n' if enrollment_key else ""
        return (
            "[mqtt.tls]\nenabled = true\n"
            f'ca_file = "{self.ca_file}"\n'
            f'cert_file = "{self.certs / (device + ".crt")}"\n'
            f'key_file = "{self.certs / (device + ".key")}"\n'
            f'[trust]\nroot_keys = ["{self.root_pub}"]\n' + enrollment
        )
