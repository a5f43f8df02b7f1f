"""Trustworthy time on a kiosk without a real-time clock (docs/enrollment.md "Time").

A kiosk board without a battery-backed clock boots with whatever time the system had last
saved (or its build date), and a mobile team may work a whole day without the network that
NTP needs. The kiosk's notion of "now" (:meth:`Clock.now`) is therefore built from:

* a **floor**: the latest time the kiosk has trusted, persisted in ``<state>/time.json``
  (0600, atomically replaced), never allowed to go down. "Now" is never below it;
* an **anchor**: a trusted wall time paired with the boot's monotonic clock
  (``CLOCK_BOOTTIME``, which keeps counting across suspend) and the kernel's boot id; within
  the same boot, "now" is the anchor's time plus the monotonic time elapsed since. A new boot
  invalidates the anchor (the monotonic clock restarts) and the floor becomes the anchor;
* the **sources** of trusted time, strongest first: the system clock while the system says it
  is synchronised by NTP (``ntp``; systemd-timesyncd's ``/run/systemd/timesync/synchronized``),
  or a time signed by the centre and bound to a request of this kiosk (``signed_centre``: a
  citizen-lookup answer, which repeats the request's fresh nonce, so it cannot be an old
  answer replayed). Signed times that are not bound to a request (a directory batch's
  ``issued_at``) may only raise the floor, never set the anchor;
* otherwise ``floor_monotonic``: the anchor carried forward by the monotonic clock. An
  unsynchronised system clock is never trusted: a clock set wrongly forward would otherwise
  push the floor up for good.

:meth:`Clock.stamp` is what goes into a package's manifest: the source, the floor, the anchor
and the system clock's own reading, so the centre can judge the time (and checks the shape:
:func:`check_time_source`).

Ground floor: no feature imports.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SOURCES = ("ntp", "signed_centre", "floor_monotonic")
TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
STATE_FILE = "time.json"
# The floor is written when it has moved this far since the last write (and at every stamp).
PERSIST_EVERY_S = 60.0
# A signed centre time is accepted as the anchor only when it arrived this soon after the
# request it answers went out (the round trip bounds its error).
MAX_ROUND_TRIP_S = 30.0


def boottime() -> float:
    """Seconds since boot, counting suspend (``CLOCK_BOOTTIME``; ``monotonic`` elsewhere)."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(clock) if clock is not None else time.monotonic()


def read_boot_id() -> str:
    try:
        return BOOT_ID.read_text(encoding="ascii").strip()
    except OSError:
        return "unknown"


def ntp_synchronised() -> bool:
    """systemd-timesyncd creates the flag file once it has synchronised the clock."""
    return TIMESYNC_FLAG.exists()


class Clock:
    """The kiosk's time. Thread-safe; every method is cheap except the (rare) persisting."""

    def __init__(
        self,
        state_dir: Path,
        *,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = boottime,
        boot_id: Callable[[], str] = read_boot_id,
        synced: Callable[[], bool] = ntp_synchronised,
    ) -> None:
        self.path = Path(state_dir) / STATE_FILE
        self._wall = wall
        self._mono = mono
        self._synced = synced
        self._boot = boot_id()
        self._lock = threading.Lock()
        self._persisted = -math.inf
        self.floor = 0.0
        self.anchor: dict[str, Any] = {}
        self._load()

    # -- state -----------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raw = {}
        except (OSError, ValueError) as exc:
            log.error("time state %s unreadable (%s): starting afresh", self.path, exc)
            raw = {}
        floor = raw.get("floor") if isinstance(raw, dict) else None
        self.floor = float(floor) if isinstance(floor, (int, float)) and floor > 0 else 0.0
        self._persisted = self.floor
        anchor = raw.get("anchor") if isinstance(raw, dict) else None
        if (
            isinstance(anchor, dict)
            and anchor.get("boot_id") == self._boot
            and isinstance(anchor.get("wall"), (int, float))
            and isinstance(anchor.get("monotonic"), (int, float))
            and anchor.get("source") in SOURCES
        ):
            self.anchor = dict(anchor)  # same boot (the daemon restarted): still valid
        else:
            # A new boot: the monotonic clock restarted. The floor, at the boot's start, is
            # the only trusted time left (an underestimate: the time since it was written
            # and before the boot is not counted).
            self.anchor = {
                "source": "floor_monotonic",
                "wall": self.floor,
                "monotonic": 0.0,
                "boot_id": self._boot,
            }

    def _save(self) -> None:
        data = json.dumps({"floor": self.floor, "anchor": self.anchor}, separators=(",", ":"))
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            self._persisted = self.floor
        except OSError as exc:
            log.error("time floor not persisted to %s: %s", self.path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _derived(self) -> float:
        return float(self.anchor["wall"]) + max(0.0, self._mono() - float(self.anchor["monotonic"]))

    def _tick(self) -> tuple[float, str]:
        """(now, source) with the lock held; raises the floor, persists it now and then."""
        if self._synced():
            t = self._wall()
            if t >= self.floor:
                self.anchor = {
                    "source": "ntp",
                    "wall": t,
                    "monotonic": self._mono(),
                    "boot_id": self._boot,
                }
                source = "ntp"
            else:  # synchronised below what we already trusted: keep the floor
                t, source = max(self.floor, self._derived()), "floor_monotonic"
        else:
            t = max(self.floor, self._derived())
            source = (
                "signed_centre" if self.anchor["source"] == "signed_centre" else ("floor_monotonic")
            )
        self.floor = max(self.floor, t)
        if self.floor - self._persisted >= PERSIST_EVERY_S:
            self._save()
        return t, source

    # -- the kiosk's API ---------------------------------------------------------------------

    def now(self) -> float:
        """The kiosk's time (seconds since the epoch): never below the floor."""
        with self._lock:
            return self._tick()[0]

    def source(self) -> str:
        with self._lock:
            return self._tick()[1]

    def stamp(self) -> dict[str, Any]:
        """What a package's manifest records (and persists the floor first): ``at`` (the
        time), ``time_source`` (one of :data:`SOURCES`), ``time_floor`` and ``time_anchor``
        (``{source, wall, monotonic, boot_id}``), and ``system_clock`` (the unjudged system
        time, for the centre's information)."""
        with self._lock:
            t, source = self._tick()
            self._save()
            return {
                "at": t,
                "time_source": source,
                "time_floor": self.floor,
                "time_anchor": dict(self.anchor),
                "system_clock": self._wall(),
            }

    def observe_signed(self, t: float, *, bound: bool, round_trip_s: float = 0.0) -> bool:
        """A time the centre signed. ``bound``: it answers this kiosk's own fresh request
        (a lookup answer carrying the request's nonce) and arrived within ``round_trip_s``
        of it; then it becomes the anchor (unless NTP is in charge, or it is more than the
        round-trip bound below the floor). Otherwise it may only raise the floor. Returns True
        when it moved the kiosk's time forward."""
        if not math.isfinite(t) or t <= 0:
            return False
        with self._lock:
            before = max(self.floor, self._derived())
            moved = t > before
            # A bound answer anchors even when it does not move "now" (its whole seconds may
            # equal the floor a batch just set), unless it lies far below what was already
            # trusted: "now" never goes below the floor either way.
            fresh = t >= self.floor - MAX_ROUND_TRIP_S - 1.0
            changed = False
            if bound and round_trip_s <= MAX_ROUND_TRIP_S and not self._synced() and fresh:
                self.anchor = {
                    "source": "signed_centre",
                    "wall": t,
                    "monotonic": self._mono(),
                    "boot_id": self._boot,
                }
                changed = True
            if t > self.floor:
                self.floor = t
                changed = True
            if changed:  # a daemon restart in this boot finds the anchor (and the floor)
                self._save()
            return moved


# --- the centre's check -------------------------------------------------------------------------


def check_time_source(manifest: dict[str, Any]) -> list[str]:
    """Problems with a manifest's time fields (empty: well formed). A manifest without
    ``time_source`` (a kiosk from before this field) has none to check."""
    if "time_source" not in manifest:
        return []
    problems: list[str] = []
    source = manifest.get("time_source")
    if source not in SOURCES:
        problems.append(f"time_source: {source!r} is not one of {', '.join(SOURCES)}")
    floor = manifest.get("time_floor")
    if not _number(floor):
        problems.append("time_floor: a positive number of seconds is required")
    anchor = manifest.get("time_anchor")
    if not isinstance(anchor, dict):
        problems.append("time_anchor: an object {source, wall, monotonic, boot_id} is required")
    else:
        if anchor.get("source") not in SOURCES:
            problems.append(f"time_anchor.source: {anchor.get('source')!r} is not a source")
        for k in ("wall", "monotonic"):
            if not _number(anchor.get(k), zero=True):
                problems.append(f"time_anchor.{k}: a number >= 0 is required")
        if not isinstance(anchor.get("boot_id"), str) or not anchor.get("boot_id"):
            problems.append("time_anchor.boot_id: a string is required")
    finished = manifest.get("finished_at")
    if _number(floor) and _number(finished) and float(finished) < float(floor):  # type: ignore[arg-type]
        problems.append("finished_at: earlier than the time floor it was stamped with")
    return problems


def _number(v: object, *, zero: bool = False) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return False
    return v >= 0 if zero else v > 0
