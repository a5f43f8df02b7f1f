"""Fleet key management: the root key (``keys init``) and operator certificates
(``keys issue-operator``).

The root key directory holds ``root.key`` (mode 0600) and ``root.pub``; ``root.pub`` is the
trust anchor installed on every kiosk at provisioning. Operators normally generate their own
key pair and hand over only the public key; for convenience :func:`generate_operator_key`
creates one.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from nacl.signing import SigningKey

from ..errors import TrustError
from ..protocol.codes import ErrorCode
from ..trust import keys
from ..trust.certs import (
    ROOT_KEY_FILE,
    ROOT_PUB_FILE,
    FleetRoot,
    OperatorCertificate,
    validate_name,
    verify_certificate,
)

log = logging.getLogger(__name__)

DEFAULT_HOME = Path("~/.appliance-fleet")
_RELATIVE = re.compile(r"^\+?(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def init_root(directory: Path) -> tuple[FleetRoot, bool]:
    """Create the fleet root key in ``directory`` unless it exists: ``(root, created)``.

    Idempotent: an existing root is loaded, never replaced (a new root would orphan every
    certificate and every kiosk's trust anchor).
    """
    directory = Path(directory).expanduser()
    if (directory / ROOT_KEY_FILE).exists():
        return FleetRoot.load(directory), False
    return FleetRoot.create(directory), True


def parse_not_after(text: str, *, now: float | None = None) -> int:
    """``30d``/``12h``/``2w`` (relative), ``2027-01-31`` (end of that day UTC), or an ISO 8601
    date-time (``2027-01-31T12:00:00Z``; naive means UTC) to Unix seconds."""
    base = time.time() if now is None else now
    value = text.strip()
    m = _RELATIVE.match(value)
    if m:
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
        if seconds <= 0:
            raise TrustError("validity must be positive", code=ErrorCode.INVALID_VALIDITY)
        return int(base) + seconds
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            day = datetime.fromisoformat(value).replace(tzinfo=UTC)
            return int(day.timestamp()) + 86400 - 1
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise TrustError(
            f"cannot read {text!r} as a date: use e.g. 90d, 12h, 2027-01-31 or "
            "2027-01-31T12:00:00Z",
            code=ErrorCode.INVALID_VALIDITY,
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())


def generate_operator_key(directory: Path, name: str) -> bytes:
    """Create ``<name>.key`` (0600) and ``<name>.pub`` in ``directory``; return the public key."""
    validate_name(name, "operator key name")
    directory = Path(directory).expanduser()
    sk = SigningKey.generate()
    keys.save_signing_key(sk, directory / f"{name}.key", directory / f"{name}.pub", overwrite=False)
    return bytes(sk.verify_key)


def issue_operator(
    root_dir: Path,
    public_key: bytes,
    *,
    roles: Iterable[str],
    not_after: int,
    devices: Iterable[str] = (),
    groups: Iterable[str] = (),
    name: str = "",
    issued_at: int | None = None,
) -> OperatorCertificate:
    """Sign an operator certificate with the root key in ``root_dir``."""
    root = FleetRoot.load(Path(root_dir).expanduser())
    cert = root.issue(
        public_key,
        roles=roles,
        devices=devices,
        groups=groups,
        not_after=not_after,
        name=name,
        issued_at=issued_at,
    )
    log.info(
        "issued operator certificate key_id=%s roles=%s not_after=%d",
        cert.key_id,
        ",".join(cert.roles),
        cert.not_after,
    )
    return cert


def write_certificate(path: Path, cert: OperatorCertificate, *, overwrite: bool = False) -> None:
    """Write a certificate token file (public; mode 0644, atomic)."""
    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise TrustError(
            f"{path} already exists", code=ErrorCode.KEY_EXISTS, details={"path": str(path)}
        )
    keys.write_public_file(path, (cert.to_token() + "\n").encode("ascii"))


def read_certificate(path: Path) -> OperatorCertificate:
    try:
        token = Path(path).expanduser().read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TrustError(
            f"cannot read certificate {path}: {exc}", code=ErrorCode.KEY_MISSING
        ) from None
    return OperatorCertificate.from_token(token)


def check_certificate(
    path: Path, root_dir: Path, *, now: float | None = None
) -> OperatorCertificate:
    """Read a certificate file and verify it against ``root_dir/root.pub``."""
    root_pub = keys.load_public_key(Path(root_dir).expanduser() / ROOT_PUB_FILE)
    return verify_certificate(
        read_certificate(path), [root_pub], now=time.time() if now is None else now
    )
