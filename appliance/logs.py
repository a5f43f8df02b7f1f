"""Logging set-up: journald with structured fields when the daemon runs under it, else stderr.

systemd-python's ``JournalHandler`` drops messages silently when journald is absent
(systemd-python 235 on a machine whose PID 1 is not systemd), so "auto" uses it only when
``JOURNAL_STREAM`` names our stderr (systemd.exec(5): set when stderr is connected to the
journal) and the journal socket exists. Everything else goes to stderr, one line per record.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")


def journald_available() -> bool:
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream or not JOURNAL_SOCKET.exists():
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
        dev, ino = (int(x) for x in stream.split(":"))
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def setup(level: str = "INFO", target: str = "auto") -> str:
    """Configure the root logger; returns the target actually used."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(level)
    used = "stderr"
    handler: logging.Handler | None = None
    if target in ("auto", "journal") and journald_available():
        try:
            from systemd.journal import JournalHandler

            # SYSLOG_IDENTIFIER lets `journalctl -t appliance` find us; logger name, thread and
            # code location are added as fields by JournalHandler itself.
            handler = JournalHandler(SYSLOG_IDENTIFIER="appliance")
            used = "journal"
        except ImportError:
            handler = None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    if target == "journal" and used != "journal":
        logging.getLogger(__name__).warning(
            "logging.target=journal but journald is not reachable; logging to stderr"
        )
    # paho logs nothing useful at INFO; keep third parties quiet unless debugging.
    for noisy in ("paho", "PIL", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return used
