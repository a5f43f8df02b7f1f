"""Build and sign release bundles (``appliance fleet release build``; format in
appliance/update/bundle.py, procedure in docs/updates.md).

The bundle is built for the interpreter and machine that run the build: pip resolves every
dependency to wheels for this platform, architecture and Python version, and the manifest says
so. To release for aarch64 kiosks, build on an aarch64 machine (a Pi or an arm64 CI runner).
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ApplianceError
from ..protocol.codes import ErrorCode
from ..store import MIGRATIONS
from ..trust.certs import OperatorKey
from ..update.bundle import (
    MANIFEST,
    WHEELS_DIR,
    Manifest,
    Target,
    UpdateError,
    manifest_from_body,
    parse_version,
    sign_manifest,
)

log = logging.getLogger(__name__)

_WHEEL_NAME = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[^-]+)-.+\.whl$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _pip(args: Sequence[str]) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    log.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ApplianceError(
            f"pip failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}",
            code=ErrorCode.RELEASE_BUILD_FAILED,
            details={"command": cmd},
        )


def build_wheels(
    project: Path,
    wheel_dir: Path,
    *,
    with_deps: bool = True,
    find_links: Sequence[Path] = (),
    no_index: bool = False,
    build_isolation: bool = True,
) -> Path:
    """``pip wheel`` the project (and its dependencies) into ``wheel_dir``; return the
    project's own wheel. With ``build_isolation=False`` the build uses this environment's
    build backend (an offline build machine)."""
    before = {p.name for p in wheel_dir.glob("*.whl")}
    args = ["wheel", "--wheel-dir", str(wheel_dir)]
    if not build_isolation:
        args.append("--no-build-isolation")
    if not with_deps:
        args.append("--no-deps")
    if no_index:
        args.append("--no-index")
    for d in find_links:
        args += ["--find-links", str(d)]
    # setuptools builds in the checkout (build/, *.egg-info): leave it as it was found.
    leftovers = [project / "build", *project.glob("*.egg-info")]
    existed = {p for p in leftovers if p.exists()}
    try:
        _pip([*args, str(project)])
    finally:
        for p in [project / "build", *project.glob("*.egg-info")]:
            if p not in existed and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
    name = _project_name(project)
    built = [
        p
        for p in wheel_dir.glob("*.whl")
        if (m := _WHEEL_NAME.match(p.name)) and _norm(m["name"]) == _norm(name)
    ]
    if len(built) != 1:
        raise ApplianceError(
            f"expected one wheel of {name} in {wheel_dir}, found {[p.name for p in built]} "
            f"(before: {sorted(before)})",
            code=ErrorCode.RELEASE_BUILD_FAILED,
        )
    return built[0]


def _project_name(project: Path) -> str:
    import tomllib

    try:
        data = tomllib.loads((project / "pyproject.toml").read_text())
        name = data["project"]["name"]
    except (OSError, ValueError, KeyError) as exc:
        raise ApplianceError(
            f"{project}/pyproject.toml names no [project] name: {exc}", code=ErrorCode.USAGE
        ) from None
    if not isinstance(name, str):
        raise ApplianceError(
            f"{project}/pyproject.toml: project.name is not text", code=ErrorCode.USAGE
        )
    return name


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bundle(
    out: Path,
    key: OperatorKey,
    wheels: Sequence[Path],
    project_wheel: Path,
    *,
    min_from: str,
    target: Target | None = None,
    schema: int | None = None,
    migrations: Sequence[str] = (),
    rollback: bool = False,
    url: str | None = None,
    issued_at: int | None = None,
) -> Manifest:
    """Hash the wheels, sign the manifest with ``key`` (release role) and write the tar."""
    m = _WHEEL_NAME.match(project_wheel.name)
    if m is None:
        raise ApplianceError(f"{project_wheel.name} is not a wheel file name", code=ErrorCode.USAGE)
    version = m["version"]
    parse_version(version, "version")
    parse_version(min_from, "min_from")
    tgt = target or Target()
    files = {
        f"{WHEELS_DIR}/{w.name}": {"sha256": _sha256(w), "size": w.stat().st_size}
        for w in sorted(wheels, key=lambda p: p.name)
    }
    body: dict[str, Any] = {
        "name": m["name"],
        "version": version,
        "min_from": min_from,
        "platform": tgt.platform,
        "arch": tgt.arch,
        "python": tgt.python,
        "schema": len(MIGRATIONS) if schema is None else schema,
        "migrations": list(migrations),
        "rollback": rollback,
        "project": f"{WHEELS_DIR}/{project_wheel.name}",
        "files": files,
        "issued_at": int(time.time()) if issued_at is None else issued_at,
    }
    if url:
        body["url"] = url
    manifest_from_body({**body, "issuer": key.key_id}, key.key_id)  # same checks as a kiosk
    signed = sign_manifest(key, body)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mtime, info.mode = len(signed), body["issued_at"], 0o644
        tar.addfile(info, io.BytesIO(signed))
        for w in sorted(wheels, key=lambda p: p.name):
            ti = tar.gettarinfo(str(w), arcname=f"{WHEELS_DIR}/{w.name}")
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            ti.mode = 0o644
            with open(w, "rb") as fh:
                tar.addfile(ti, fh)
    tmp.replace(out)
    return manifest_from_body({**body, "issuer": key.key_id}, key.key_id)


def build_release(
    project: Path,
    out: Path,
    key: OperatorKey,
    *,
    min_from: str,
    with_deps: bool = True,
    find_links: Sequence[Path] = (),
    no_index: bool = False,
    build_isolation: bool = True,
    extra_wheels: Sequence[Path] = (),
    schema: int | None = None,
    migrations: Sequence[str] = (),
    rollback: bool = False,
    url: str | None = None,
) -> Manifest:
    """Build the project's wheels in a temporary directory and write the signed bundle."""
    with tempfile.TemporaryDirectory(prefix="appliance-release-") as tmp:
        wd = Path(tmp)
        project_wheel = build_wheels(
            Path(project),
            wd,
            with_deps=with_deps,
            find_links=find_links,
            no_index=no_index,
            build_isolation=build_isolation,
        )
        for w in extra_wheels:
            (wd / w.name).write_bytes(w.read_bytes())
        wheels = sorted(wd.glob("*.whl"))
        if not wheels:
            raise UpdateError("no wheels were built", code=ErrorCode.RELEASE_BUILD_FAILED)
        return write_bundle(
            out,
            key,
            wheels,
            project_wheel,
            min_from=min_from,
            schema=schema,
            migrations=migrations,
            rollback=rollback,
            url=url,
        )
