"""Heartbeat metrics: uptime, load, memory, disk, SoC temperature (cheap reads of /proc, /sys)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

_START = time.monotonic()


def uptime_s() -> float:
    return round(time.monotonic() - _START, 3)


def rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def soc_temperature_c(root: Path = Path("/sys/class/thermal")) -> float | None:
    """The first thermal zone's temperature (millidegrees in sysfs), if the board has one."""
    try:
        zones = sorted(root.glob("thermal_zone*/temp"))
    except OSError:
        return None
    for z in zones:
        try:
            return int(z.read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
    return None


def snapshot(state_dir: Path) -> dict[str, Any]:
    mem = meminfo()
    try:
        disk = shutil.disk_usage(state_dir)
        disk_free: int | None = disk.free
    except OSError:
        disk_free = None
    load = os.getloadavg()
    return {
        "uptime_s": uptime_s(),
        "load": [round(x, 2) for x in load],
        "mem_total": mem.get("MemTotal"),
        "mem_available": mem.get("MemAvailable"),
        "rss": rss_bytes(),
        "disk_free": disk_free,
        "soc_temp_c": soc_temperature_c(),
    }
