"""Release bundles: the signed unit of a software update (docs/updates.md).

A bundle is one uncompressed POSIX tar file (the wheels inside are already compressed) holding

* ``manifest.json``: a signed envelope (the shape every fleet document shares, see
  ``appliance/trust/signeddoc.py``) of type :data:`RELEASE_TYPE`, signed under the context
  :data:`CTX_RELEASE` by a certificate with the ``release`` role;
* ``wheels/*.whl``: the project's wheel and every dependency wheel, so that a kiosk installs
  with ``pip install --no-index`` and never needs the network.

Manifest body (JSON object):

================  ============================================================================
``name``          distribution name of the project wheel (``appliance``)
``version``       the release's version (``MAJOR.MINOR.PATCH``, digits only)
``min_from``      the oldest running version this release upgrades from
``platform``      ``sys.platform`` of the kiosks it is for (``linux``)
``arch``          ``platform.machine()`` of the kiosks it is for (``x86_64``, ``aarch64``)
``python``        ``MAJOR.MINOR`` of the interpreter the wheels were resolved for
``schema``        store schema version the release brings (``PRAGMA user_version``)
``migrations``    human labels of the schema migrations it brings (informational)
``rollback``      ``true``: signed as a rollback, so it may be older than what runs
``project``       member name of the project's own wheel
``files``         member name -> ``{"sha256": hex, "size": bytes}``, every wheel in the tar
``url``           optional: where a kiosk may download the same bundle file over HTTPS
``issued_at``     Unix seconds; ``issuer``: key id of the signing certificate
================  ============================================================================

Verification order (each failure a clear code, nothing installed): the tar's shape, the
manifest's signature and certificate chain (:func:`verify_manifest`), the target (platform,
architecture, interpreter), the version against the running one, then every file's size and
SHA-256 and that the tar holds nothing else.
"""

from __future__ import annotations

import hashlib
import json
import platform as _platform
import re
import shutil
import sys
import tarfile
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import ApplianceError, TrustError
from ..protocol.codes import ErrorCode
from ..trust.certs import OperatorCertificate, OperatorKey, verify_certificate
from ..trust.keys import b64decode, b64encode, load_json, sign_detached, verify_detached

RELEASE_TYPE = "appliance.release.v1"
#: Domain-separation context of release manifests (one per kind of signed object, like
#: appliance/trust/keys.py's CTX_* constants).
CTX_RELEASE = b"appliance/release/v1"
RELEASE_ROLE = "release"

MANIFEST = "manifest.json"
WHEELS_DIR = "wheels"
MAX_MANIFEST_BYTES = 1024 * 1024

_VERSION_RE = re.compile(r"^\d{1,6}(\.\d{1,6}){0,3}$")
_MEMBER_RE = re.compile(r"^wheels/[A-Za-z0-9][A-Za-z0-9_.+-]{0,200}\.whl$")

#: The codes a refused bundle is reported with (docs/protocol.md's error table).
CODES = (
    ErrorCode.RELEASE_MALFORMED,  # not a tar, no manifest, a manifest field missing or mistyped
    ErrorCode.RELEASE_UNSIGNED,  # the manifest carries no signature
    ErrorCode.RELEASE_TAMPERED,  # a file's hash or size differs, a file is missing or one is added
    ErrorCode.RELEASE_WRONG_PLATFORM,  # another platform, architecture or interpreter
    ErrorCode.RELEASE_DOWNGRADE,  # older than (or the same as) the running version, not a rollback
    ErrorCode.RELEASE_BASE_TOO_OLD,  # the running version is older than the release's min_from
)


class UpdateError(ApplianceError):
    """A software update step failed; ``code`` is one of :data:`CODES` or the installer's."""

    code = ErrorCode.UPDATE_FAILED


def _refuse(code: str, message: str, **details: Any) -> UpdateError:
    return UpdateError(message, code=code, details=details)


def parse_version(text: object, what: str = "version") -> tuple[int, ...]:
    """``"1.2.3"`` -> ``(1, 2, 3)``; anything but dot-separated digits is refused."""
    if not isinstance(text, str) or not _VERSION_RE.match(text):
        raise _refuse(
            ErrorCode.RELEASE_MALFORMED,
            f"{what} must be dot-separated digits like 1.2.3, got {text!r}",
            field=what,
        )
    parts = tuple(int(p) for p in text.split("."))
    return parts + (0,) * (4 - len(parts))


@dataclass(frozen=True)
class Target:
    """What a kiosk is: the release must be built for it."""

    platform: str = sys.platform
    arch: str = _platform.machine()
    python: str = f"{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    min_from: str
    platform: str
    arch: str
    python: str
    schema: int
    project: str
    files: dict[str, FileEntry]
    rollback: bool = False
    migrations: tuple[str, ...] = ()
    url: str | None = None
    issued_at: int = 0
    issuer: str = "unsigned"
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def wheels(self) -> list[str]:
        return sorted(self.files)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "min_from": self.min_from,
            "platform": self.platform,
            "arch": self.arch,
            "python": self.python,
            "schema": self.schema,
            "migrations": list(self.migrations),
            "rollback": self.rollback,
            "project": self.project,
            "files": len(self.files),
            "bytes": sum(f.size for f in self.files.values()),
            "url": self.url,
            "issued_at": self.issued_at,
            "issuer": self.issuer,
        }


def _field(body: dict[str, Any], name: str, kind: type, *, optional: bool = False) -> Any:
    value = body.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _refuse(
            ErrorCode.RELEASE_MALFORMED,
            f"manifest field {name!r} must be a {kind.__name__}",
            field=name,
        )
    return value


def manifest_from_body(body: dict[str, Any], issuer: str) -> Manifest:
    """Validate the manifest body's fields (each error names the field)."""
    files_raw = _field(body, "files", dict)
    files: dict[str, FileEntry] = {}
    for member, entry in files_raw.items():
        if not isinstance(member, str) or not _MEMBER_RE.match(member):
            raise _refuse(
                ErrorCode.RELEASE_MALFORMED,
                f"manifest file name {member!r} is not wheels/<name>.whl",
            )
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
            or not isinstance(entry.get("size"), int)
            or entry["size"] < 0
        ):
            raise _refuse(
                ErrorCode.RELEASE_MALFORMED,
                f"manifest files[{member!r}] needs sha256 (64 hex) and size (bytes)",
                field=f"files.{member}",
            )
        files[member] = FileEntry(entry["sha256"], entry["size"])
    project = _field(body, "project", str)
    if project not in files:
        raise _refuse(ErrorCode.RELEASE_MALFORMED, "manifest field 'project' names no listed file")
    version = _field(body, "version", str)
    min_from = _field(body, "min_from", str)
    parse_version(version, "version")
    parse_version(min_from, "min_from")
    migrations = body.get("migrations", [])
    if not isinstance(migrations, list) or not all(isinstance(m, str) for m in migrations):
        raise _refuse(
            ErrorCode.RELEASE_MALFORMED, "manifest field 'migrations' must be a list of strings"
        )
    rollback = body.get("rollback", False)
    if not isinstance(rollback, bool):
        raise _refuse(
            ErrorCode.RELEASE_MALFORMED, "manifest field 'rollback' must be true or false"
        )
    url = _field(body, "url", str, optional=True)
    if url is not None and not url.startswith("https://"):
        raise _refuse(ErrorCode.RELEASE_MALFORMED, "manifest field 'url' must be an https:// URL")
    return Manifest(
        name=_field(body, "name", str),
        version=version,
        min_from=min_from,
        platform=_field(body, "platform", str),
        arch=_field(body, "arch", str),
        python=_field(body, "python", str),
        schema=_field(body, "schema", int),
        project=project,
        files=files,
        rollback=rollback,
        migrations=tuple(migrations),
        url=url,
        issued_at=_field(body, "issued_at", int),
        issuer=issuer,
        raw=body,
    )


def sign_manifest(key: OperatorKey, body: dict[str, Any]) -> bytes:
    """Fleet side: the signed ``manifest.json`` for ``body`` (``issuer`` is filled in)."""
    if RELEASE_ROLE not in key.certificate.roles:
        raise TrustError(
            f"release bundles are signed by a certificate with the {RELEASE_ROLE!r} role; "
            f"{key.key_id} has {list(key.certificate.roles)}",
            code=ErrorCode.FORBIDDEN_ROLE,
        )
    obj = {**body, "issuer": key.key_id}
    raw = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")
    env = {
        "typ": RELEASE_TYPE,
        "cert": key.certificate.to_token(),
        "body": b64encode(raw),
        "sig": b64encode(sign_detached(key.signing_key, CTX_RELEASE, raw)),
    }
    return json.dumps(env, separators=(",", ":")).encode("utf-8")


def verify_manifest(
    data: bytes,
    roots: Sequence[bytes],
    *,
    now: float | None = None,
    revoked: Collection[str] = (),
) -> Manifest:
    """Check the manifest's envelope, certificate chain, signature and role; parse the body.

    Raises ``UpdateError`` (``release_malformed``, ``release_unsigned``) or ``TrustError``
    (``untrusted_issuer``, ``cert_expired``, ``cert_revoked``, ``bad_signature``,
    ``forbidden_role``). A kiosk has no development switch for releases: an unsigned bundle is
    always refused.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise _refuse(ErrorCode.RELEASE_MALFORMED, "manifest.json is too large")
    try:
        env = load_json(data)
    except (UnicodeDecodeError, ValueError):
        raise _refuse(ErrorCode.RELEASE_MALFORMED, "manifest.json is not JSON") from None
    if not isinstance(env, dict) or env.get("typ") != RELEASE_TYPE:
        raise _refuse(ErrorCode.RELEASE_MALFORMED, f"manifest.json typ must be {RELEASE_TYPE!r}")
    if not env.get("sig") or not env.get("cert"):
        raise _refuse(ErrorCode.RELEASE_UNSIGNED, "the release manifest carries no signature")
    try:
        cert = OperatorCertificate.from_token(env.get("cert"))
    except TrustError as exc:
        raise _refuse(ErrorCode.RELEASE_MALFORMED, f"manifest certificate: {exc.message}") from None
    verify_certificate(
        cert,
        roots,
        now=time.time() if now is None else now,
        check_not_before=False,
        revoked=revoked,
    )
    body_bytes = b64decode(env.get("body"), what="body")
    verify_detached(cert.public_key, CTX_RELEASE, body_bytes, b64decode(env["sig"], what="sig"))
    if RELEASE_ROLE not in cert.roles:
        raise TrustError(
            f"release manifests need the {RELEASE_ROLE!r} role", code=ErrorCode.FORBIDDEN_ROLE
        )
    try:
        body = load_json(body_bytes)
    except (UnicodeDecodeError, ValueError):
        raise _refuse(ErrorCode.RELEASE_MALFORMED, "manifest body is not JSON") from None
    if not isinstance(body, dict) or body.get("issuer") != cert.key_id:
        raise _refuse(ErrorCode.RELEASE_MALFORMED, "manifest body/issuer invalid")
    return manifest_from_body(body, cert.key_id)


def check_target(manifest: Manifest, target: Target) -> None:
    for fld in ("platform", "arch", "python"):
        want, have = getattr(manifest, fld), getattr(target, fld)
        if want != have:
            raise _refuse(
                ErrorCode.RELEASE_WRONG_PLATFORM,
                f"release {manifest.version} is for {fld} {want!r}, this kiosk is {have!r}",
                field=fld,
                release=want,
                kiosk=have,
            )


def check_version(manifest: Manifest, running: str) -> None:
    """No downgrade (nor re-install of the same version) unless signed as a rollback; the
    running version must be at least the release's ``min_from``."""
    new, cur = parse_version(manifest.version), parse_version(running, "running version")
    if new <= cur and not manifest.rollback:
        raise _refuse(
            ErrorCode.RELEASE_DOWNGRADE,
            f"release {manifest.version} is not newer than the running {running} and is not "
            "signed as a rollback",
            release=manifest.version,
            running=running,
        )
    if cur < parse_version(manifest.min_from) and not manifest.rollback:
        raise _refuse(
            ErrorCode.RELEASE_BASE_TOO_OLD,
            f"release {manifest.version} upgrades from {manifest.min_from} or later; this "
            f"kiosk runs {running}: install an intermediate release first",
            min_from=manifest.min_from,
            running=running,
        )


def _open(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r:")
    except (OSError, tarfile.TarError) as exc:
        raise _refuse(
            ErrorCode.RELEASE_MALFORMED, f"{path} is not a release bundle (tar): {exc}"
        ) from None


def _members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    out: dict[str, tarfile.TarInfo] = {}
    for m in tar.getmembers():
        if m.isdir() and m.name.rstrip("/") == WHEELS_DIR:
            continue
        if not m.isfile() or m.name in out:
            raise _refuse(
                ErrorCode.RELEASE_TAMPERED,
                f"bundle member {m.name!r} is not a plain file",
                member=m.name,
            )
        out[m.name] = m
    return out


def _sha256(fh: IO[bytes]) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def read_manifest_bytes(path: Path) -> bytes:
    with _open(path) as tar:
        members = _members(tar)
        info = members.get(MANIFEST)
        if info is None or info.size > MAX_MANIFEST_BYTES:
            raise _refuse(ErrorCode.RELEASE_MALFORMED, f"{path} holds no {MANIFEST}")
        fh = tar.extractfile(info)
        assert fh is not None  # a regular file, checked by _members
        return fh.read()


def check_files(path: Path, manifest: Manifest, extract_to: Path | None = None) -> None:
    """Every listed file present with its size and hash, nothing else; optionally extract the
    wheels (each file is written only after its hash matched)."""
    with _open(path) as tar:
        members = _members(tar)
        extra = sorted(set(members) - set(manifest.files) - {MANIFEST})
        if extra:
            raise _refuse(
                ErrorCode.RELEASE_TAMPERED, f"bundle holds unlisted files {extra}", files=extra
            )
        for name, entry in sorted(manifest.files.items()):
            info = members.get(name)
            if info is None:
                raise _refuse(ErrorCode.RELEASE_TAMPERED, f"bundle lacks {name}", member=name)
            fh = tar.extractfile(info)
            assert fh is not None
            digest, size = _sha256(fh)
            if digest != entry.sha256 or size != entry.size:
                raise _refuse(
                    ErrorCode.RELEASE_TAMPERED,
                    f"{name}: hash or size differs from the signed manifest",
                    member=name,
                )
            if extract_to is not None:
                dest = extract_to / Path(name).name
                tmp = dest.with_suffix(".part")
                fh = tar.extractfile(info)
                assert fh is not None
                with open(tmp, "wb") as out:
                    shutil.copyfileobj(fh, out, 1 << 20)
                tmp.replace(dest)


def verify_bundle(
    path: Path,
    roots: Sequence[bytes],
    *,
    running: str | None = None,
    target: Target | None = None,
    now: float | None = None,
    revoked: Collection[str] = (),
    extract_to: Path | None = None,
) -> Manifest:
    """The kiosk's whole check of a bundle file (module docstring, verification order).
    ``running=None`` skips the version check (``fleet release verify`` on a workstation)."""
    path = Path(path)
    manifest = verify_manifest(read_manifest_bytes(path), roots, now=now, revoked=revoked)
    if target is not None:
        check_target(manifest, target)
    if running is not None:
        check_version(manifest, running)
    check_files(path, manifest, extract_to=extract_to)
    return manifest


def iter_wheels(directory: Path) -> Iterator[Path]:
    yield from sorted(Path(directory).glob("*.whl"))
