"""The fleet home's records: claim tokens and approved devices.

Layout under the fleet home (``appliance fleet keys init`` made ``root.key``/``root.pub``)::

    claims/tokens.json     one-time claim tokens (mode 0600: holds their secrets)
    claims/.lock           flock: approvals are serialised (a token is used exactly once
                           even when two administrators approve at the same moment)
    devices/<id>.json      an approved device: its Ed25519 public key (verifies its replies
                           and events), key id, site, groups, claim, approval time
    enrollment.pub         (optional) the central enrollment service's x25519 public key,
                           handed to every kiosk in its trust bundle
    seen.json              device id -> the last contact a ``fleet watch`` saw (a message
                           whose signature did not fail), so ``fleet devices`` can say when a
                           lost kiosk was last seen after its Last Will went stale

Writes are atomic (temporary file, fsync, rename).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import TrustError
from ..protocol.codes import ErrorCode
from ..trust.certs import NAME_RE, validate_name
from ..trust.keys import atomic_write, key_id, parse_public_key

log = logging.getLogger(__name__)

TOKENS = "claims/tokens.json"
SEEN = "seen.json"
LOCK = "claims/.lock"
DEVICES = "devices"


@dataclass
class TokenRecord:
    token_id: str
    secret: str
    device: str | None
    groups: list[str]
    site: str
    created_at: int
    expires_at: int
    used_by: str | None = None  # claim id
    used_key: str | None = None  # device key id of the claim that used it
    used_at: int | None = None


@dataclass
class DeviceRecord:
    device_id: str
    public_key: str  # ed25519-pub:...
    key_id: str
    site: str = ""
    groups: list[str] = field(default_factory=list)
    claim_token: str = ""
    approved_at: int = 0
    approved_by: str = ""

    @property
    def public_key_bytes(self) -> bytes:
        return parse_public_key(self.public_key)


class FleetRegistry:
    """Tokens and devices of one fleet home. Methods that change state take the lock."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home).expanduser()

    # -- locking and files -----------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        path = self.home / LOCK
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with path.open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _tokens(self) -> dict[str, TokenRecord]:
        path = self.home / TOKENS
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise TrustError(
                f"{path} is unreadable: {exc}", code=ErrorCode.REGISTRY_CORRUPT
            ) from None
        return {k: TokenRecord(**v) for k, v in raw.items()}

    def _save_tokens(self, tokens: dict[str, TokenRecord]) -> None:
        path = self.home / TOKENS
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = json.dumps({k: asdict(v) for k, v in tokens.items()}, indent=1).encode()
        atomic_write(path, data, mode=0o600)

    # -- tokens ----------------------------------------------------------------------------

    def create_token(
        self,
        *,
        device: str | None,
        ttl_s: int,
        groups: list[str] | None = None,
        site: str = "",
        now: float | None = None,
    ) -> tuple[TokenRecord, str]:
        """A new one-time token; returns the record and the token text to hand over."""
        from ..provisioning.claim import new_token

        if device is not None:
            validate_name(device, "device")
        for g in groups or []:
            validate_name(g, "group")
        if ttl_s <= 0:
            raise TrustError("the token lifetime must be positive", code=ErrorCode.INVALID_VALIDITY)
        t = int(time.time() if now is None else now)
        token_id, secret = new_token()
        rec = TokenRecord(
            token_id=token_id,
            secret=secret,
            device=device,
            groups=list(groups or []),
            site=site,
            created_at=t,
            expires_at=t + ttl_s,
        )
        with self.locked():
            tokens = self._tokens()
            tokens[token_id] = rec
            self._save_tokens(tokens)
        return rec, f"{token_id}.{secret}"

    def token(self, token_id: str) -> TokenRecord | None:
        return self._tokens().get(token_id)

    def tokens(self) -> list[TokenRecord]:
        return sorted(self._tokens().values(), key=lambda r: r.created_at)

    def use_token(self, token_id: str, claim_id: str, device_key_id: str, now: int) -> None:
        """Mark a token used by ``claim_id`` (call under :meth:`locked`)."""
        tokens = self._tokens()
        rec = tokens[token_id]
        rec.used_by, rec.used_key, rec.used_at = claim_id, device_key_id, now
        self._save_tokens(tokens)

    # -- devices ---------------------------------------------------------------------------

    def device(self, device_id: str) -> DeviceRecord | None:
        if not NAME_RE.match(device_id):
            return None
        path = self.home / DEVICES / f"{device_id}.json"
        try:
            return DeviceRecord(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            raise TrustError(
                f"{path} is unreadable: {exc}", code=ErrorCode.REGISTRY_CORRUPT
            ) from None

    def devices(self) -> list[DeviceRecord]:
        out = []
        for p in sorted((self.home / DEVICES).glob("*.json")):
            rec = self.device(p.stem)
            if rec is not None:
                out.append(rec)
        return out

    def save_device(self, rec: DeviceRecord) -> None:
        validate_name(rec.device_id, "device")
        if key_id(rec.public_key_bytes) != rec.key_id:
            raise TrustError("device key id does not match its key", code=ErrorCode.KEY_MALFORMED)
        d = self.home / DEVICES
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(
            d / f"{rec.device_id}.json", json.dumps(asdict(rec), indent=1).encode(), mode=0o644
        )

    def device_keys(self) -> dict[str, bytes]:
        """device id -> Ed25519 public key, for verifying replies and events."""
        return {r.device_id: r.public_key_bytes for r in self.devices()}

    # -- last contact ------------------------------------------------------------------------

    def last_seen(self) -> dict[str, float]:
        """device id -> Unix time of the last contact recorded by a watcher ({} if none; an
        unreadable file is reported and treated as empty: it is a cache, not a record)."""
        path = self.home / SEEN
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("%s is unreadable (%s); ignoring it", path, exc)
            return {}
        if not isinstance(raw, dict):
            return {}
        return {
            str(k): float(v)
            for k, v in raw.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }

    def record_seen(self, seen: dict[str, float]) -> None:
        """Merge ``seen`` into the record, keeping the later time per device."""
        if not seen:
            return
        with self.locked():
            merged = self.last_seen()
            for dev, ts in seen.items():
                if NAME_RE.match(dev) and ts > merged.get(dev, 0.0):
                    merged[dev] = ts
            atomic_write(
                self.home / SEEN, json.dumps(merged, indent=1, sort_keys=True).encode(), mode=0o644
            )

    def members(self, group: str) -> list[str]:
        return [r.device_id for r in self.devices() if group in r.groups]


def load_home_enrollment_key(home: Path) -> str | None:
    """The ``x25519-pub:...`` text of ``<home>/enrollment.pub`` if the fleet has one."""
    from ..trust.sealed import ENROLLMENT_PUB_FILE, parse_enrollment_public_key

    path = Path(home) / ENROLLMENT_PUB_FILE
    if not path.exists():
        return None
    text = path.read_text(encoding="ascii").strip()
    parse_enrollment_public_key(text)  # refuses a malformed key now, not on the kiosk
    return text
