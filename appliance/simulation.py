"""Emulators the simulated kit starts inside the daemon (``[simulation]`` in the config).

The production drivers are not told they are simulated: the fingerprint emulator gets a real
pty and the serial driver opens its path; the card emulator sits behind a private pcscd + vpcd
stack and the PC/SC driver talks to pcscd as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from .config import AppConfig

log = logging.getLogger(__name__)


def start(config: AppConfig, state_dir: Path) -> tuple[AppConfig, list[Callable[[], None]]]:
    cleanups: list[Callable[[], None]] = []
    cfg = config.model_copy(deep=True)
    if config.simulation.fingerprint:
        try:
            from .drivers.fingerprint.emulator import FingerprintEmulator
        except ImportError as exc:
            log.error("fingerprint emulator unavailable: %s", exc)
        else:
            emu = FingerprintEmulator(
                seed=config.simulation.seed, baud=config.hardware.fingerprint.baud
            )
            path = emu.start_pty()
            cfg.hardware.fingerprint.port = path
            cleanups.append(emu.stop)
            log.info("simulation: fingerprint emulator on %s", path)
    if config.simulation.card:
        log.warning("simulation: card emulator not wired yet")
    return cfg, cleanups
