"""Ed25519 key material on disk, device identity, and detached signatures.

Every private key the appliance or the fleet tools hold is a file of mode 0600 written
atomically (a temporary file in the same directory, fsync, rename, fsync of the directory), so
a power cut leaves either the old key or the new one, never half a key. A key file that group or
other users can read or write is refused on load: a key that leaked to another account is no
longer a secret, and silently using it would hide the leak.

Signatures are detached Ed25519 signatures over *exact bytes* with a domain-separation prefix
(``context || 0x00 || data``): the same admin key signs commands and configuration documents,
so a signature made for one kind of object must never verify as another kind.

File formats (text, one line, so an operator can inspect and copy them):

* private key: ``ed25519-seed:<base64 of the 32-byte seed>``
* public key: ``ed25519-pub:<base64 of the 32-byte key>``
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

from ..errors import TrustError
from ..protocol.codes import ErrorCode

log = logging.getLogger(__name__)

SEED_PREFIX = "ed25519-seed:"
PUB_PREFIX = "ed25519-pub:"

#: Domain-separation contexts: one per kind of signed object.
CTX_DEVICE_MESSAGE = b"appliance/device-message/v1"
CTX_CERTIFICATE = b"appliance/operator-certificate/v1"
CTX_COMMAND = b"appliance/command/v1"
CTX_CONFIG = b"appliance/config/v1"
CTX_ACK = b"appliance/sealed-ack/v1"

DEVICE_KEY_FILE = "device.key"
DEVICE_PUB_FILE = "device.pub"


# --- small codecs shared by the trust modules -------------------------------------------------


def b64encode(data: bytes) -> str:
    """Standard base64 (RFC 4648 section 4) with padding, as ASCII text."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: object, *, what: str, code: str = ErrorCode.MALFORMED_ENVELOPE) -> bytes:
    """Strict, canonical base64 decode; anything else raises :class:`TrustError` with ``code``."""
    if not isinstance(text, str):
        raise TrustError(f"{what} must be a base64 string", code=code, details={"field": what})
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise TrustError(
            f"{what} is not valid base64", code=code, details={"field": what}
        ) from None
    # Only the canonical encoding is accepted (padding bits zero): one value, one text, so a
    # flipped bit in a signature or certificate can never leave the message acceptable.
    if base64.b64encode(raw).decode("ascii") != text:
        raise TrustError(f"{what} is not canonical base64", code=code, details={"field": what})
    return raw


def load_json(data: bytes | str) -> Any:
    """``json.loads`` for untrusted input: a nesting deep enough to exhaust the parser's
    recursion (``[[[[...``) raises ``ValueError`` like any other bad JSON, not
    ``RecursionError``."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def key_id(public_key: bytes) -> str:
    """Stable short identifier of a public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def _signed_bytes(context: bytes, data: bytes) -> bytes:
    return context + b"\x00" + data


def sign_detached(key: SigningKey, context: bytes, data: bytes) -> bytes:
    """The 64-byte Ed25519 signature of ``context || 0x00 || data``."""
    return bytes(key.sign(_signed_bytes(context, data)).signature)


def verify_detached(public_key: bytes, context: bytes, data: bytes, signature: bytes) -> None:
    """Check a detached signature; raise ``TrustError(code="bad_signature")`` if it fails."""
    if len(public_key) != 32 or len(signature) != 64:
        raise TrustError(
            "signature or public key has the wrong length",
            code=ErrorCode.BAD_SIGNATURE,
            details={"public_key_len": len(public_key), "signature_len": len(signature)},
        )
    try:
        VerifyKey(public_key).verify(_signed_bytes(context, data), signature)
    except (BadSignatureError, CryptoError, ValueError):
        raise TrustError("signature does not verify", code=ErrorCode.BAD_SIGNATURE) from None


# --- files ------------------------------------------------------------------------------------


def atomic_write(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to ``path`` atomically with permission bits ``mode``.

    The temporary file gets ``mode`` before any byte is written (a secret is never readable by
    others, even for an instant) and lives in the same directory so the rename is atomic; the
    file and then the directory are fsynced so the rename survives a power cut.
    """
    path = Path(path)
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_private_file(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write a secret to ``path`` with mode 0600, atomically (directory created 0700).

    Without ``overwrite`` an existing file is an error (``key_exists``): replacing an identity
    key is a deliberate act.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists() and not overwrite:
        raise TrustError(
            f"{path} already exists; refusing to overwrite a key file",
            code=ErrorCode.KEY_EXISTS,
            details={"path": str(path)},
        )
    atomic_write(path, data, mode=0o600)


def write_public_file(path: Path, data: bytes) -> None:
    """Write a public file (mode 0644) atomically; public keys may be replaced freely."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data, mode=0o644)


def read_private_file(path: Path) -> bytes:
    """Read a secret file, refusing symlinks, non-regular files and group/other permissions."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise TrustError(
            f"key file {path} does not exist",
            code=ErrorCode.KEY_MISSING,
            details={"path": str(path)},
        ) from None
    except OSError as exc:
        raise TrustError(
            f"cannot open key file {path}: {exc.strerror}",
            code=ErrorCode.KEY_UNREADABLE,
            details={"path": str(path)},
        ) from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise TrustError(
                f"key file {path} is not a regular file",
                code=ErrorCode.KEY_UNREADABLE,
                details={"path": str(path)},
            )
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise TrustError(
                f"key file {path} has mode {mode:04o}; it must not be accessible by group or "
                f"others: run 'chmod 600 {path}' if the key is known not to have leaked, "
                "otherwise replace the key",
                code=ErrorCode.KEY_PERMISSIONS,
                details={"path": str(path), "mode": f"{mode:04o}"},
            )
        return fh.read()


def _parse_prefixed(text: bytes, prefix: str, path: Path) -> bytes:
    try:
        line = text.decode("ascii").strip()
    except UnicodeDecodeError:
        line = ""
    if not line.startswith(prefix):
        raise TrustError(
            f"{path} is not a {prefix.rstrip(':')} file",
            code=ErrorCode.KEY_MALFORMED,
            details={"path": str(path)},
        )
    raw = b64decode(line[len(prefix) :], what=str(path), code=ErrorCode.KEY_MALFORMED)
    if len(raw) != 32:
        raise TrustError(
            f"{path} holds {len(raw)} bytes, expected 32",
            code=ErrorCode.KEY_MALFORMED,
            details={"path": str(path)},
        )
    return raw


def encode_private_key(key: SigningKey) -> bytes:
    return f"{SEED_PREFIX}{b64encode(bytes(key))}\n".encode("ascii")


def encode_public_key(public_key: bytes) -> bytes:
    return f"{PUB_PREFIX}{b64encode(public_key)}\n".encode("ascii")


def save_signing_key(key: SigningKey, key_path: Path, pub_path: Path, *, overwrite: bool) -> None:
    """Write a key pair: the private seed (0600, atomic) and its public key (0644)."""
    write_private_file(key_path, encode_private_key(key), overwrite=overwrite)
    write_public_file(pub_path, encode_public_key(bytes(key.verify_key)))


def load_signing_key(path: Path) -> SigningKey:
    """Load a private key written by :func:`save_signing_key` (permissions checked)."""
    path = Path(path)
    return SigningKey(_parse_prefixed(read_private_file(path), SEED_PREFIX, path))


def load_public_key(path: Path) -> bytes:
    """Load a 32-byte Ed25519 public key from an ``ed25519-pub:`` file."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise TrustError(
            f"cannot read public key {path}: {exc.strerror}",
            code=ErrorCode.KEY_MISSING,
            details={"path": str(path)},
        ) from None
    return _parse_prefixed(text, PUB_PREFIX, path)


def parse_public_key(text: str) -> bytes:
    """Parse ``ed25519-pub:<base64>`` (or bare base64) into 32 raw bytes."""
    body = text.strip()
    if body.startswith(PUB_PREFIX):
        body = body[len(PUB_PREFIX) :]
    raw = b64decode(body, what="public key", code=ErrorCode.KEY_MALFORMED)
    if len(raw) != 32:
        raise TrustError("public key must be 32 bytes", code=ErrorCode.KEY_MALFORMED)
    return raw


# --- device identity --------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceSignature:
    """A detached signature of a device reply or event, as carried next to the exact bytes."""

    key_id: str
    signature: bytes

    def to_header(self) -> str:
        """Compact text form for an MQTT 5 user property: ``ed25519;<key id>;<base64 sig>``."""
        return f"ed25519;{self.key_id};{b64encode(self.signature)}"

    @classmethod
    def from_header(cls, text: str) -> DeviceSignature:
        parts = text.split(";") if isinstance(text, str) else []
        if len(parts) != 3 or parts[0] != "ed25519" or not parts[1]:
            raise TrustError("malformed device signature header", code=ErrorCode.UNSIGNED)
        sig = b64decode(parts[2], what="signature", code=ErrorCode.BAD_SIGNATURE)
        return cls(key_id=parts[1], signature=sig)


class DeviceIdentity:
    """The kiosk's Ed25519 identity: created once at provisioning, kept in the state dir."""

    def __init__(self, signing_key: SigningKey) -> None:
        self._key = signing_key
        self.public_key: bytes = bytes(signing_key.verify_key)
        self.key_id: str = key_id(self.public_key)

    def __repr__(self) -> str:  # never show key material
        return f"DeviceIdentity(key_id={self.key_id!r})"

    @classmethod
    def create(cls, directory: Path, *, overwrite: bool = False) -> DeviceIdentity:
        """Generate a key pair into ``directory`` (``device.key`` 0600, ``device.pub``)."""
        directory = Path(directory)
        key = SigningKey.generate()
        save_signing_key(
            key, directory / DEVICE_KEY_FILE, directory / DEVICE_PUB_FILE, overwrite=overwrite
        )
        ident = cls(key)
        log.info("created device identity key_id=%s in %s", ident.key_id, directory)
        return ident

    @classmethod
    def load(cls, directory: Path) -> DeviceIdentity:
        """Load the identity; raises ``TrustError`` (``key_missing``, ``key_permissions`` ...)."""
        directory = Path(directory)
        ident = cls(load_signing_key(directory / DEVICE_KEY_FILE))
        pub_path = directory / DEVICE_PUB_FILE
        if pub_path.exists() and load_public_key(pub_path) != ident.public_key:
            raise TrustError(
                f"{pub_path} does not match {directory / DEVICE_KEY_FILE}",
                code=ErrorCode.KEY_MALFORMED,
                details={"path": str(pub_path)},
            )
        return ident

    @classmethod
    def load_or_create(cls, directory: Path) -> DeviceIdentity:
        """Idempotent provisioning step: load the key if present, else create it."""
        if (Path(directory) / DEVICE_KEY_FILE).exists():
            return cls.load(directory)
        return cls.create(directory)

    def sign(self, data: bytes) -> DeviceSignature:
        """Sign the exact bytes of a reply or event payload."""
        return DeviceSignature(self.key_id, sign_detached(self._key, CTX_DEVICE_MESSAGE, data))


def verify_device_message(public_key: bytes, data: bytes, signature: DeviceSignature) -> None:
    """Controller side: check that ``data`` was signed by the device owning ``public_key``.

    Raises ``TrustError`` with ``untrusted_issuer`` when the key id names another key, and
    ``bad_signature`` when the signature does not match the bytes.
    """
    if signature.key_id != key_id(public_key):
        raise TrustError(
            "message signed by another key",
            code=ErrorCode.UNTRUSTED_ISSUER,
            details={"key_id": signature.key_id, "expected": key_id(public_key)},
        )
    verify_detached(public_key, CTX_DEVICE_MESSAGE, data, signature.signature)
