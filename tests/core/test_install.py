"""A wheel install (``pip install .``, as docs/deployment.md does) finds the hardware kit
profiles: they travel as data files under ``<venv>/share/appliance/firmware_profiles``
(pyproject.toml ``[tool.setuptools.data-files]``, appliance/resources.py). Before, the daemon
looked only beside the source tree and a non-editable install could not load any profile.

The wheel is built from a copy of the project (pip's build isolation fetches the build backend
from PyPI or the local wheel cache), installed without dependencies into a fresh venv, and run
with this project's venv on PYTHONPATH for the dependencies only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from tests.helpers import ROOT


def test_a_wheel_install_carries_and_finds_the_kit_profiles(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("appliance", "firmware_profiles"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(src)], check=True)
    (wheel,) = (tmp_path / "dist").glob("appliance-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for profile in (
        "sim.toml",
        "rpi-r307-pcsc.toml",
        "cards/cccd-applet.toml",
        "sensors/r307.toml",
    ):
        assert any(
            n.endswith(f".data/data/share/appliance/firmware_profiles/{profile}") for n in names
        )

    own = sorted(Path(sysconfig.get_paths()["purelib"]).glob("*appliance*"))  # this venv's install
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # --ignore-installed: without it pip first uninstalls the running venv's own (editable)
    # appliance, although the target is another prefix.
    install = [*pip, "install", "--no-deps", "--ignore-installed", "--prefix", str(venv)]
    subprocess.run([*install, str(wheel)], check=True)
    assert sorted(Path(sysconfig.get_paths()["purelib"]).glob("*appliance*")) == own
    env = {
        **os.environ,
        "PYTHONPATH": sysconfig.get_paths()["purelib"],  # the dependencies, not this checkout
    }
    env.pop("APPLIANCE_PROFILES_DIR", None)
    probe = (
        "import appliance, appliance.resources as r\n"
        "from appliance.drivers.fingerprint.profiles import load_profile\n"
        "from appliance.drivers.card.profile import load_profile as card_profile\n"
        "load_profile('r307'); card_profile('cccd-applet')\n"
        "print(appliance.__file__); print(r.profiles_dir())\n"
    )
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    ).stdout.split("\n")  # fmt: skip
    assert out[0].startswith(str(venv)), out  # the installed copy, not the checkout
    assert out[1] == str(venv / "share" / "appliance" / "firmware_profiles"), out
    config = tmp_path / "kiosk.toml"
    config.write_text('[device]\nid = "kiosk-wheel"\nprofile = "rpi-r307-pcsc"\n')
    check = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "appliance", "config", "check", str(config)],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
