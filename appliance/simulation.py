"""Emulators the simulated kit starts for the daemon (``[simulation]`` in the config).

The production drivers are not told they are simulated:

* the fingerprint emulator runs as a child process (``appliance sim fingerprint``) on a pty
  whose stable symlink ``<state>/sim/fingerprint.tty`` becomes the serial driver's port;
* the card emulator runs as a child process (``appliance sim card``) behind a private
  pcscd + vpcd stack, and the PC/SC driver talks to that pcscd as usual
  (``PCSCLITE_CSOCK_NAME`` is exported before the first pyscard call). Without a configured
  trust bundle a throw-away test CSCA/DS pair is made in ``<state>/sim/pki`` (never a real key:
  the simulated kit is for development and demos only). Killing the emulator process is the
  card leaving the reader (its vpcd connection ends); the kit then inserts the next citizen's
  card: a new emulator, a new *blank* card, :data:`CARD_REINSERT_S` later.

Children are separate processes, as the real devices are, so the daemon's own memory and
threads are what a real kiosk would see; they die with the daemon even on ``kill -9``.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .config import AppConfig
from .devtools.procs import die_with_parent
from .errors import DeviceError

log = logging.getLogger(__name__)

# How long after the card left the reader the simulated citizen inserts the next, blank one:
# long enough for the driver's monitor to report the removal first (it waits 0.5 s per poll).
CARD_REINSERT_S = 1.0
# `appliance sim card` exit codes that a new card would not cure (1: vpcd unreachable, 2: bad
# options or profile): the slot stays empty and the log says why.
_CARD_FATAL = (1, 2)


def _spawn(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "appliance", "sim", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            # Started from the main thread, or from the card slot's watcher thread, which
            # outlives its children (PR_SET_PDEATHSIG follows the starting thread).
            preexec_fn=die_with_parent,  # noqa: PLW1509
        )


def _stop(proc: subprocess.Popen[bytes]) -> Callable[[], None]:
    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    return stop


def start(config: AppConfig, state_dir: Path) -> tuple[AppConfig, list[Callable[[], None]]]:
    """Start the configured emulators; returns the configuration pointing at them and the
    clean-up functions (in start order)."""
    cleanups: list[Callable[[], None]] = []
    cfg = config.model_copy(deep=True)
    simdir = state_dir / "sim"
    simdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        if config.simulation.fingerprint:
            cfg.hardware.fingerprint.port = _start_fingerprint(cfg, simdir, cleanups)
        if config.simulation.card:
            _start_card(cfg, simdir, cleanups)
    except BaseException:
        for fn in reversed(cleanups):
            fn()
        raise
    return cfg, cleanups


def _start_fingerprint(cfg: AppConfig, simdir: Path, cleanups: list[Callable[[], None]]) -> str:
    fp = cfg.hardware.fingerprint
    link = simdir / "fingerprint.tty"
    link.unlink(missing_ok=True)
    proc = _spawn(
        [
            "fingerprint",
            "--link",
            str(link),
            "--seed",
            str(cfg.simulation.seed),
            "--baud",
            str(fp.baud),
            "--profile",
            fp.model,
            # The module keeps its negotiated rate (and templates) in flash across restarts.
            "--flash",
            str(simdir / "fingerprint-flash.json"),
            # A real UART paces every byte; tests may skip the wait (simulation.line_rate).
            *([] if cfg.simulation.line_rate else ["--no-pace"]),
        ],
        simdir / "fingerprint-emulator.log",
    )
    cleanups.append(_stop(proc))
    deadline = time.monotonic() + 15
    while not link.exists():
        if proc.poll() is not None:
            raise DeviceError(
                f"fingerprint emulator exited with {proc.returncode}; see "
                f"{simdir / 'fingerprint-emulator.log'}",
                device="fingerprint",
            )
        if time.monotonic() > deadline:
            raise DeviceError("fingerprint emulator did not create its pty", device="fingerprint")
        time.sleep(0.01)
    log.info("simulation: fingerprint emulator (pid %d) on %s", proc.pid, link)
    return str(link)


def _start_card(cfg: AppConfig, simdir: Path, cleanups: list[Callable[[], None]]) -> None:
    from .drivers.card.teststack import PcscTestStack

    for stale in simdir.glob("pcscstack-*"):  # left by a daemon that was killed
        shutil.rmtree(stale, ignore_errors=True)
    stack = PcscTestStack(workdir=simdir, die_with_parent=True).start()
    cleanups.append(stack.stop)
    stack.export_env()  # before this process's first pyscard call
    slot = _CardSlot(
        [
            "card",
            "--port",
            str(stack.vpcd_port),
            "--reconnect",
            "--profile",
            cfg.hardware.card.card_profile,
            "--log-level",
            "WARNING",
        ],
        simdir / "card-emulator.log",
    )
    pid = slot.start()
    cleanups.append(slot.stop)
    if cfg.hardware.card.trust_bundle is None:
        cfg.hardware.card.trust_bundle = sim_pki(simdir / "pki")
    log.info(
        "simulation: pcscd + vpcd on port %d, card emulator pid %d, CSCA %s",
        stack.vpcd_port,
        pid,
        cfg.hardware.card.trust_bundle,
    )


class _CardSlot:
    """The simulated kit's card slot: one emulator process at a time.

    ``--reconnect`` re-inserts the *same* card after a protocol-level pull (its memory lives in
    the process). When the process itself ends (killed: the card was taken out), a real kiosk
    would next see the citizen's new blank card; without this the simulated reader stayed empty
    until the daemon restarted and every ``card.encode`` failed with ``no_card``.

    The watcher thread starts the replacement emulators, so ``die_with_parent`` (which follows
    the starting *thread*) holds for them as long as the watcher lives, i.e. until :meth:`stop`
    or the daemon's death.
    """

    def __init__(self, args: list[str], log_path: Path) -> None:
        self._args = args
        self._log_path = log_path
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        self._proc = _spawn(self._args, self._log_path)
        self._thread = threading.Thread(target=self._watch, name="sim-card-slot", daemon=True)
        self._thread.start()
        return self._proc.pid

    def _watch(self) -> None:
        while True:
            proc = self._proc
            assert proc is not None
            rc = proc.wait()
            if self._stopping.is_set():
                return
            if rc in _CARD_FATAL:
                log.error(
                    "simulation: card emulator pid %d exited with %d; no new card (see %s)",
                    proc.pid,
                    rc,
                    self._log_path,
                )
                return
            log.warning(
                "simulation: card emulator pid %d ended (%d): the card left the reader; "
                "a new blank card goes in after %.1f s",
                proc.pid,
                rc,
                CARD_REINSERT_S,
            )
            if self._stopping.wait(CARD_REINSERT_S):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self._proc = _spawn(self._args, self._log_path)
            log.info("simulation: card emulator pid %d (a new blank card)", self._proc.pid)

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            proc = self._proc
        if proc is not None:
            _stop(proc)()
        t, self._thread = self._thread, None
        if t is not None and t is not threading.current_thread():
            t.join(timeout=10)


def sim_pki(directory: Path) -> Path:
    """The simulated kit's test CSCA (made once per state directory). The DS key beside it is
    what `appliance fleet issue` uses against a simulated kiosk."""
    csca = directory / "csca.pem"
    if csca.exists():
        return csca
    from .lds.testpki import make_test_pki, write_test_pki

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return write_test_pki(make_test_pki("SIMULATED CSCA VN"), directory)["csca_cert"]
