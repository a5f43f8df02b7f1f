"""Start-up time to READY=1 and idle RSS of the daemon on the simulated kit (issue targets:
READY <= 1.5 s, idle RSS <= 45 MB), against a bare Python process that imports paho, connects
to the same broker and sends READY=1, measured in the same run.

    .venv/bin/python bench/core_startup.py [--runs 5] [--kit sim|none]

`--kit sim` runs the simulated devices (camera scene, fingerprint emulator on a pty, card
stack where available); `--kit none` disables every device (the core alone).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import daemon_config, emit, start_daemon, stop

from appliance.devtools.broker import Mosquitto

BARE = r"""
import os, socket, sys
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bare")
c.connect("127.0.0.1", int(sys.argv[1])); c.loop_start()
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
import time
while True: time.sleep(1)
"""


def rss_kb(pid: int) -> int:
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total = int(line.split()[1])
    return total


def wait_ready(sock: socket.socket) -> None:
    while b"READY=1" not in sock.recv(4096):
        pass


def one(cmd_start: callable, sock: socket.socket) -> tuple[float, int]:  # type: ignore[valid-type]
    t0 = time.perf_counter()
    p = cmd_start()
    wait_ready(sock)
    ready = time.perf_counter() - t0
    time.sleep(3.0)  # ok: idle period before reading RSS
    rss = rss_kb(p.pid)
    stop(p)
    return ready, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--kit", choices=["sim", "none"], default="sim")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker").start()
        sock_path = str(work / "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(sock_path)
        sock.settimeout(60)
        env = {"NOTIFY_SOCKET": sock_path}
        cfg = daemon_config(work / "d", broker.port, "bench-start", sim=args.kit == "sim")
        bare_r, bare_m, d_r, d_m = [], [], [], []
        state = work / "d" / "state"
        try:
            # Warm-up boot: creates the store (first boots also run the schema migrations,
            # which load sqlite-utils); the measured boots are ordinary ones.
            one(lambda: start_daemon(cfg, state, env), sock)
            for _ in range(args.runs):
                r, m = one(
                    lambda: subprocess.Popen(
                        [sys.executable, "-c", BARE, str(broker.port)], env={**os.environ, **env}
                    ),
                    sock,
                )
                bare_r.append(r)
                bare_m.append(m)
                r, m = one(lambda: start_daemon(cfg, state, env), sock)
                d_r.append(r)
                d_m.append(m)
        finally:
            sock.close()
            broker.stop()
    med = statistics.median
    emit(
        f"core_startup_{args.kit}",
        {
            "kit": args.kit,
            "runs": args.runs,
            "bare_ready_s": round(med(bare_r), 3),
            "bare_rss_mb": round(med(bare_m) / 1024, 1),
            "daemon_ready_s": round(med(d_r), 3),
            "daemon_rss_mb": round(med(d_m) / 1024, 1),
            "ratio_ready": round(med(d_r) / med(bare_r), 2),
            "ratio_rss": round(med(d_m) / med(bare_m), 2),
            "target": "READY <= 1.5 s, idle RSS <= 45 MB",
            "met": med(d_r) <= 1.5 and med(d_m) / 1024 <= 45,
        },
    )


if __name__ == "__main__":
    main()
