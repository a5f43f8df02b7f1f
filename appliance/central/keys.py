"""The central service's keys, kept in the fleet home (docs/central.md "Keys").

* ``<home>/enrollment.key`` (0600) / ``enrollment.pub``: the X25519 key pair biometric records
  are sealed to (:class:`~appliance.trust.sealed.EnrollmentKeyPair`); kiosks get the public
  half as ``trust.enrollment_key``.
* ``<home>/ingest.key`` (0600) / ``ingest.cert``: the Ed25519 key and fleet certificate with
  the ``ingest`` role that signs receipts (docs/trust.md "Sealed biometrics").
* ``<home>/root.key`` / ``root.pub``: the fleet root (``appliance fleet keys init``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey

from ..errors import TrustError
from ..protocol.codes import ErrorCode
from ..trust import keys
from ..trust.certs import ROOT_PUB_FILE, FleetRoot, OperatorKey
from ..trust.sealed import ENROLLMENT_KEY_FILE, EnrollmentKeyPair

log = logging.getLogger(__name__)

INGEST_NAME = "ingest"


@dataclass
class CentralKeys:
    enrollment: EnrollmentKeyPair
    ingest: OperatorKey
    root_public_key: bytes | None


def load_central_keys(
    home: Path, *, enrollment_dir: Path | None = None, signer: Path | None = None
) -> CentralKeys:
    """Load the enrollment key pair and the ingest signer; clear errors when missing."""
    home = Path(home).expanduser()
    edir = Path(enrollment_dir).expanduser() if enrollment_dir else home
    if not (edir / ENROLLMENT_KEY_FILE).exists():
        raise TrustError(
            f"no central enrollment key in {edir}: create it with 'appliance fleet receive "
            "--create-keys' (then give kiosks its enrollment.pub as trust.enrollment_key)",
            code=ErrorCode.KEY_MISSING,
        )
    base = Path(signer).expanduser() if signer else home / INGEST_NAME
    key_path = base.parent / f"{base.name}.key"
    if not key_path.exists():
        raise TrustError(
            f"no ingest signing key {key_path}: issue one with 'appliance fleet keys "
            f"issue-operator --generate-key {base.parent} --name {base.name} --role ingest "
            '--device "*" --not-after 365d\' or use --create-keys',
            code=ErrorCode.KEY_MISSING,
        )
    ingest = OperatorKey.load(key_path, base.parent / f"{base.name}.cert")
    if "ingest" not in ingest.certificate.roles:
        raise TrustError(
            f"{key_path}'s certificate lacks the ingest role: kiosks would refuse its receipts",
            code=ErrorCode.FORBIDDEN_ROLE,
        )
    root_pub = home / ROOT_PUB_FILE
    return CentralKeys(
        EnrollmentKeyPair.load(edir),
        ingest,
        keys.load_public_key(root_pub) if root_pub.exists() else None,
    )


def ensure_central_keys(home: Path, *, validity_s: int = 365 * 86400) -> CentralKeys:
    """Create what is missing (fleet root, enrollment key pair, ingest key and certificate)
    and load them. Idempotent; an existing key is never replaced."""
    from ..fleet.keys import init_root

    home = Path(home).expanduser()
    root, created = init_root(home)
    if created:
        log.info("created the fleet root key in %s", home)
    if not (home / ENROLLMENT_KEY_FILE).exists():
        EnrollmentKeyPair.generate().save(home)
        log.info("created the central enrollment key pair in %s", home)
    key_path = home / f"{INGEST_NAME}.key"
    cert_path = home / f"{INGEST_NAME}.cert"
    if not key_path.exists():
        sk = SigningKey.generate()
        keys.save_signing_key(sk, key_path, home / f"{INGEST_NAME}.pub", overwrite=False)
        _issue_ingest(root, bytes(sk.verify_key), cert_path, validity_s)
    elif not cert_path.exists():
        sk = keys.load_signing_key(key_path)
        _issue_ingest(root, bytes(sk.verify_key), cert_path, validity_s)
    return load_central_keys(home)


def _issue_ingest(root: FleetRoot, public_key: bytes, cert_path: Path, validity_s: int) -> None:
    from ..fleet.keys import write_certificate

    cert = root.issue(
        public_key,
        roles=["ingest"],
        devices=["*"],
        not_after=int(time.time()) + validity_s,
        name="central-ingest",
    )
    write_certificate(cert_path, cert, overwrite=True)
    log.info("issued the ingest certificate %s", cert.key_id)
