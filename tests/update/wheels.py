"""Tiny real wheels and projects for the update tests: a ``kioskdemo`` distribution whose
console script ``kioskdemo`` behaves as a daemon of a given version would (serve, crash on
start, fail its self-test), so installs, switches and trials run real ``pip`` and real
processes without the cost of the appliance's own dependency tree."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

#: The daemon stand-in: ``kioskdemo run STATE`` writes STATE/ready-<version> and waits to be
#: stopped; ``kioskdemo selftest`` exits 0 unless the release is built to fail it.
MODULE = """
import os, sys, signal, time
VERSION = {version!r}
BEHAVIOUR = {behaviour!r}

def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else "run"
    if cmd == "--version":
        print(VERSION)
        return 0
    if cmd == "selftest":
        return 1 if BEHAVIOUR == "selftest_fails" else 0
    if BEHAVIOUR == "crash":
        sys.exit("kioskdemo: crashed on start")
    state = sys.argv[2]
    with open(os.path.join(state, "ready-" + VERSION), "w") as fh:
        fh.write(str(os.getpid()))
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    while True:
        signal.pause()
"""


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def make_wheel(
    directory: Path, version: str, behaviour: str = "ok", name: str = "kioskdemo"
) -> Path:
    """A pure-Python wheel ``kioskdemo-<version>-py3-none-any.whl`` (PEP 427)."""
    directory.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": MODULE.format(version=version, behaviour=behaviour).encode(),
        f"{dist}/METADATA": (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n").encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
        f"{dist}/entry_points.txt": f"[console_scripts]\n{name} = {name}:main\n".encode(),
    }
    record = [_record_line(n, d) for n, d in files.items()] + [f"{dist}/RECORD,,"]
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in files.items():
            z.writestr(n, d)
    return path


def make_project(directory: Path, version: str, name: str = "kioskdemo") -> Path:
    """A source checkout of the same distribution, for ``fleet release build``."""
    (directory / name).mkdir(parents=True, exist_ok=True)
    (directory / name / "__init__.py").write_text(MODULE.format(version=version, behaviour="ok"))
    (directory / "pyproject.toml").write_text(
        "[build-system]\nrequires = ['setuptools>=61']\nbuild-backend = 'setuptools.build_meta'\n"
        f"[project]\nname = '{name}'\nversion = '{version}'\n"
        f"[project.scripts]\n{name} = '{name}:main'\n"
        "[tool.setuptools]\npackages = ['kioskdemo']\n"
    )
    return directory
