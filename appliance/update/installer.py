"""Side-by-side installation of a release bundle, the atomic switch, the trial's verdict and
the rollback (docs/updates.md).

The running version does the work up to the switch, without stopping: verify the bundle
(bundle.py), check the disk space, create ``releases/<version>`` as a new virtual environment
and install the bundle's wheels into it with ``pip --no-index`` (nothing is fetched). Then,
once no enrollment session is active, it flips ``current`` (guard.py) and restarts. The new
version's start is its trial: the guard (run by systemd before every start) journals it; the
daemon checks its health the way a configuration trial does (broker reachable, devices as
healthy as before) and runs its own ``selftest``; :meth:`Updater.verdict` then commits or rolls
back. Every step is journalled first (guard.py), so :meth:`Updater.resume` after a ``kill -9``
or power cut either redoes the interrupted step from scratch (before the switch: the running
version is untouched) or lets the guard finish it (from the switch on).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Busy
from ..protocol.codes import ErrorCode
from . import guard as g
from .bundle import Manifest, Target, UpdateError, verify_bundle

log = logging.getLogger(__name__)

#: Fault injection for the power-cut tests: the process stops (waits for SIGKILL) right after
#: journalling this state. Never set in production.
STOP_AT_ENV = "APPLIANCE_UPDATE_STOP_AT"

INSTALLED_MARK = ".installed"
#: Unpacked wheels take about 3.5 times their compressed size (this project's 32 wheels:
#: 152 MB -> 526 MB), plus the kept bundle and its extracted wheels while installing.
SPACE_FACTOR = 6
SPACE_MARGIN = 64 * 1024 * 1024

#: Codes of the installer (docs/protocol.md's error table), beside bundle.CODES.
CODES = (
    ErrorCode.UPDATE_NO_SPACE,  # not enough free disk for the new environment
    ErrorCode.UPDATE_INSTALL_FAILED,  # venv or pip failed; the running version is untouched
    ErrorCode.UPDATE_IN_PROGRESS,  # another update's journal is not final yet
    ErrorCode.UPDATE_NOT_READY,  # switch/verdict called in the wrong state
    ErrorCode.UPDATE_SELFTEST_FAILED,  # the new version's own selftest failed during its trial
)


def _checkpoint(state: str) -> None:
    if os.environ.get(STOP_AT_ENV) == state:
        log.warning("update: stopping at %s (%s set)", state, STOP_AT_ENV)
        while True:
            signal.pause()


@dataclass
class Updater:
    root: Path
    state_dir: Path
    roots: Sequence[bytes] = ()
    #: console script of the project inside an environment (``appliance``)
    entry: str = "appliance"
    selftest_args: Sequence[str] = ("selftest",)
    target: Target = field(default_factory=Target)
    python: str = sys.executable
    session_active: Callable[[], bool] = lambda: False
    min_free_bytes: int | None = None
    #: The installed release installs the next one with its own pip: give every new
    #: environment pip (ensurepip, offline) unless a bundle's wheels brought it.
    ensure_pip: bool = True

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.state_dir = Path(self.state_dir)

    # -- the journal ---------------------------------------------------------------------------

    @property
    def journal(self) -> dict[str, Any] | None:
        return g.read_journal(self.state_dir)

    def _set(self, j: dict[str, Any], state: str, **fields: Any) -> dict[str, Any]:
        j = g.set_state(self.state_dir, j, state, **fields)
        log.info("update %s -> %s: %s", j.get("from"), j.get("to"), state)
        _checkpoint(state)
        return j

    def running_version(self) -> str | None:
        cur = g.current_target(self.root)
        return Path(cur).name if cur else None

    # -- before the switch ---------------------------------------------------------------------

    def stage(self, bundle: Path, *, job: str | None = None) -> Manifest:
        """Verify ``bundle`` and install it beside the running version (``installed``);
        ``job``: the fleet job it belongs to (reported after the restart)."""
        j = self.journal
        if j is not None and j["state"] not in g.FINAL and j["state"] not in g.BEFORE_SWITCH:
            raise UpdateError(
                f"an update to {j.get('version')} is at {j['state']}",
                code=ErrorCode.UPDATE_IN_PROGRESS,
                details={"state": j["state"], "version": j.get("version")},
            )
        work = self.state_dir / g.JOURNAL_DIR
        work.mkdir(parents=True, exist_ok=True, mode=0o700)
        kept = work / "bundle.tar"
        if Path(bundle).resolve() != kept.resolve():
            if Path(bundle).resolve().parent == work.resolve():
                os.replace(bundle, kept)  # the download: no second copy
            else:
                shutil.copyfile(bundle, kept.with_suffix(".part"))
                kept.with_suffix(".part").replace(kept)
        cur = g.current_target(self.root)
        if job is None and j is not None and j["state"] in g.BEFORE_SWITCH:
            job = j.get("job")  # resuming the same update
        j = self._set({"from": cur, "bundle": str(kept), "reason": None, "job": job}, "verifying")
        try:
            manifest = verify_bundle(
                kept, self.roots, running=self.running_version(), target=self.target
            )
        except Exception as exc:
            self._fail(j, exc)
            raise
        j = self._set(
            j, "verifying", version=manifest.version, to=f"{g.RELEASES}/{manifest.version}"
        )
        try:
            self._check_space(manifest, kept)
            j = self._set(j, "installing")
            self._install(manifest, kept)
        except Exception as exc:
            self._fail(j, exc)
            raise
        self._set(j, "installed")
        return manifest

    def _fail(self, j: dict[str, Any], exc: Exception) -> None:
        code = getattr(exc, "code", ErrorCode.UPDATE_FAILED)
        msg = getattr(exc, "message", str(exc))
        g.set_state(self.state_dir, j, "failed", reason=f"{code}: {msg}", reported=False)

    def _check_space(self, manifest: Manifest, bundle: Path) -> None:
        need = sum(f.size for f in manifest.files.values()) * SPACE_FACTOR + SPACE_MARGIN
        if self.min_free_bytes is not None:
            need = self.min_free_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if free < need:
            raise UpdateError(
                f"{free} bytes free under {self.root}, release {manifest.version} needs {need}",
                code=ErrorCode.UPDATE_NO_SPACE,
                details={"free": free, "needed": need},
            )

    def _install(self, manifest: Manifest, bundle: Path) -> None:
        env = self.root / g.RELEASES / manifest.version
        if env.exists():
            if g.current_target(self.root) == f"{g.RELEASES}/{manifest.version}":
                raise UpdateError(
                    f"release {manifest.version} is the running one",
                    code=ErrorCode.UPDATE_NOT_READY,
                )
            shutil.rmtree(env)  # a half-made environment from an interrupted install
        env.parent.mkdir(parents=True, exist_ok=True)
        wheels = self.state_dir / g.JOURNAL_DIR / "wheels"
        shutil.rmtree(wheels, ignore_errors=True)
        wheels.mkdir(mode=0o700)
        verify_bundle(bundle, self.roots, extract_to=wheels)  # hashes checked again on extract
        venv = [self.python, "-m", "venv", "--without-pip"]
        if self._system_site_packages():
            venv.append("--system-site-packages")  # e.g. Debian's picamera2 on a Pi
        self._run([*venv, str(env)], "venv")
        _checkpoint("installing.venv")
        self._run(
            [
                self.python, "-m", "pip", "--disable-pip-version-check", "--isolated",
                "--python", str(env / "bin" / "python"), "install", "--no-index",
                "--no-cache-dir", "--find-links", str(wheels),
                f"{manifest.name}=={manifest.version}",
            ],
            "pip install",
        )  # fmt: skip
        python = str(env / "bin" / "python")
        has_pip = subprocess.run([python, "-c", "import pip"], capture_output=True, check=False)
        if self.ensure_pip and has_pip.returncode != 0:
            self._run([python, "-m", "ensurepip", "--default-pip"], "ensurepip")
        (env / INSTALLED_MARK).write_text(json.dumps(manifest.summary()))
        shutil.rmtree(wheels, ignore_errors=True)

    def _system_site_packages(self) -> bool:
        """Whether the running environment sees the system's packages: the new one must too."""
        try:
            cfg = (self.root / g.CURRENT / "pyvenv.cfg").read_text()
        except OSError:
            return False
        return any(
            line.replace(" ", "").lower() == "include-system-site-packages=true"
            for line in cfg.splitlines()
        )

    @staticmethod
    def _run(cmd: list[str], what: str) -> None:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise UpdateError(
                f"{what} failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}",
                code=ErrorCode.UPDATE_INSTALL_FAILED,
            )

    # -- the switch ----------------------------------------------------------------------------

    def switch(self, *, baseline: dict[str, str] | None = None) -> dict[str, Any]:
        """Flip ``current`` to the installed release (``switched``); the caller restarts the
        daemon. Refused (``busy``, retryable) while an enrollment session is active."""
        j = self.journal
        if j is None or j["state"] != "installed":
            raise UpdateError(
                "no installed release waits for its switch",
                code=ErrorCode.UPDATE_NOT_READY,
                details={"state": j and j["state"]},
            )
        if self.session_active():
            raise Busy("an enrollment session is active: the switch waits for its end")
        env = self.root / j["to"]
        if not (env / INSTALLED_MARK).exists():
            raise UpdateError(
                f"{env} is not a complete environment", code=ErrorCode.UPDATE_NOT_READY
            )
        self.install_guard()
        schema = g.snapshot_store(self.state_dir)
        j = self._set(j, "switching", baseline=baseline or {}, schema_before=schema)
        g.point_current(self.root, j["to"])
        return self._set(j, "switched", attempts=0)

    def install_guard(self) -> None:
        """Copy this version's guard.py to ``<root>/guard.py`` (what the unit runs)."""
        src = Path(g.__file__)
        dst = self.root / "guard.py"
        tmp = dst.with_suffix(".new")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)

    # -- the trial -----------------------------------------------------------------------------

    def in_trial(self) -> bool:
        j = self.journal
        return j is not None and j["state"] == "trial"

    def selftest(self) -> tuple[bool, str]:
        """The new version's own self-test, run from its environment (when the guard did not
        run it at the trial's start)."""
        return g.run_selftest(self.root, self.entry, list(self.selftest_args))

    def verdict(self, healthy: bool, reason: str) -> dict[str, Any]:
        """End of the trial: with the health checks passed, run the new version's selftest;
        then ``committed``, or roll back (``rolled_back``; the caller restarts)."""
        j = self.journal
        if j is None or j["state"] != "trial":
            raise UpdateError("no update is in its trial", code=ErrorCode.UPDATE_NOT_READY)
        if healthy and j.get("selftest"):  # the guard ran it before this daemon started
            j = self._set(j, "committed", reason=f"{reason}; {j['selftest']}", reported=False)
            (self.state_dir / g.JOURNAL_DIR / g.STORE_BEFORE).unlink(missing_ok=True)
            return j
        if healthy:
            ok, why = self.selftest()
            if ok:
                j = self._set(j, "committed", reason=f"{reason}; {why}", reported=False)
                (self.state_dir / g.JOURNAL_DIR / g.STORE_BEFORE).unlink(missing_ok=True)
                return j
            reason = why
        return g.rollback(self.root, self.state_dir, j, reason)

    # -- after a restart -----------------------------------------------------------------------

    def resume(self) -> dict[str, Any] | None:
        """Redo a step before the switch that a stop interrupted (``verifying``,
        ``installing``: from the kept bundle, from scratch). From the switch on the guard has
        already moved the journal at this start."""
        j = self.journal
        if j is None or j["state"] not in ("verifying", "installing"):
            return j
        bundle = Path(j["bundle"])
        if not bundle.exists():
            self._fail(
                j, UpdateError("the kept bundle is gone", code=ErrorCode.UPDATE_INSTALL_FAILED)
            )
            return self.journal
        log.warning("update: resuming the install of %s interrupted at %s", bundle, j["state"])
        with contextlib.suppress(UpdateError):  # journalled as failed
            self.stage(bundle)
        return self.journal


def main(argv: list[str] | None = None) -> int:
    """``python -m appliance.update.installer``: the kiosk-side steps by hand (and the
    subprocess the power-cut tests kill)."""
    from ..trust.keys import load_public_key

    p = argparse.ArgumentParser(prog="python -m appliance.update.installer")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--root-key", type=Path, action="append", default=[], help="fleet root.pub")
    p.add_argument("--entry", default="appliance")
    p.add_argument("--no-ensure-pip", action="store_true", help="no pip in the new environment")
    sub = p.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("stage")
    st.add_argument("bundle", type=Path)
    st.add_argument("--switch", action="store_true", help="also switch once installed")
    sub.add_parser("switch")
    sub.add_parser("resume")
    sub.add_parser("status")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    up = Updater(
        args.root,
        args.state_dir,
        roots=[load_public_key(k) for k in args.root_key],
        entry=args.entry,
        ensure_pip=not args.no_ensure_pip,
    )
    try:
        if args.cmd == "stage":
            up.stage(args.bundle)
            if args.switch:
                up.switch()
        elif args.cmd == "switch":
            up.switch()
        elif args.cmd == "resume":
            up.resume()
    except UpdateError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(up.journal, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
