"""A private mosquitto on loopback for the demo, tests and benchmarks.

Settings follow ../shared/specs/mqtt-systemd-notes.md: ``set_tcp_nodelay true`` (else every round
trip costs ~88 ms), ``max_inflight_messages 0`` and no queue caps (QoS 1 bursts lose nothing),
``user root`` only when running as root (so the persistence file stays writable), logs to stderr
(stdout is block-buffered), and readiness proven by a CONNECT/CONNACK, never by sleeping.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ApplianceError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def mqtt_connack(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a broker answers a minimal MQTT 3.1.1 CONNECT with a successful CONNACK."""
    client_id = b"probe"
    var = b"\x00\x04MQTT\x04\x02\x00\x05"  # protocol name, level 4, clean session, keepalive 5
    payload = len(client_id).to_bytes(2, "big") + client_id
    body = var + payload
    packet = bytes([0x10, len(body)]) + body
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(packet)
            resp = s.recv(4)
            s.sendall(b"\xe0\x00")  # DISCONNECT
    except OSError:
        return False
    return len(resp) == 4 and resp[0] == 0x20 and resp[3] == 0


@dataclass
class Mosquitto:
    workdir: Path
    port: int = 0
    host: str = "127.0.0.1"
    persistence: bool = True
    extra_conf: str = ""
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        self.log_path = self.workdir / "mosquitto.log"

    @property
    def conf_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    def write_conf(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "set_tcp_nodelay true",
            "max_inflight_messages 0",
            "max_queued_messages 0",
            "max_queued_bytes 0",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/"]
        if os.geteuid() == 0:
            lines.append("user root")
        self.conf_path.write_text("\n".join(lines) + "\n" + self.extra_conf)

    def start(self, timeout: float = 10.0) -> Mosquitto:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise ApplianceError(
                "mosquitto is not installed (apt-get install mosquitto)", code="missing_broker"
            )
        self.write_conf()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [exe, "-c", str(self.conf_path)], stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not mqtt_connack(self.host, self.port):
            if self.proc.poll() is not None:
                raise ApplianceError(
                    f"mosquitto exited with {self.proc.returncode}: "
                    f"{self.log_path.read_text(errors='replace')[-2000:]}",
                    code="broker_failed",
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ApplianceError(
                    "mosquitto did not accept connections in time", code="broker_failed"
                )
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
