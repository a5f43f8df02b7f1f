"""A private mosquitto on loopback for the demo, tests and benchmarks.

Two modes. Plain (development, ``tls=None``): an anonymous listener on loopback. Production
(``tls=BrokerTls(...)``): the shipped configuration, rendered from provisioning/'s templates by
provisioning/render-broker-config (mutual TLS, identity from the certificate CN, the shipped
ACL), started the way a fleet starts it.

Settings follow mosquitto.conf(5) and what was measured on this project's machines:
``set_tcp_nodelay true`` (else every round trip costs ~88 ms), ``max_inflight_messages 0`` and
no queue caps (QoS 1 bursts lose nothing), ``user root`` only when running as root (so the
persistence file stays writable), logs to stderr (stdout is block-buffered), and readiness proven
by a CONNECT/CONNACK, never by sleeping.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ApplianceError
from ..protocol.codes import ErrorCode


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


PROVISIONING = Path(__file__).resolve().parents[2] / "provisioning"


def mqtt_connack(
    host: str, port: int, timeout: float = 0.5, *, tls: ssl.SSLContext | None = None
) -> bool:
    """True if a broker answers a minimal MQTT 3.1.1 CONNECT with a successful CONNACK
    (over TLS with ``tls``, a context holding the CA and a client certificate)."""
    client_id = b"probe"
    var = b"\x00\x04MQTT\x04\x02\x00\x05"  # protocol name, level 4, clean session, keepalive 5
    payload = len(client_id).to_bytes(2, "big") + client_id
    body = var + payload
    packet = bytes([0x10, len(body)]) + body
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            if tls is None:
                resp = _exchange(raw, packet)
            else:
                with tls.wrap_socket(raw, server_hostname=host) as s:
                    resp = _exchange(s, packet)
    except (OSError, ssl.SSLError):
        return False
    return len(resp) == 4 and resp[0] == 0x20 and resp[3] == 0


def _exchange(s: socket.socket, packet: bytes) -> bytes:
    s.sendall(packet)
    resp = s.recv(4)
    s.sendall(b"\xe0\x00")  # DISCONNECT
    return resp


@dataclass(frozen=True)
class BrokerTls:
    """The production broker's files: the fleet CA, the broker's server certificate and key,
    and a client certificate (any fleet identity) used only to prove readiness."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    probe_cert: Path
    probe_key: Path

    def probe_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(self.probe_cert), str(self.probe_key))
        return ctx


def _reachable_by(user: pwd.struct_passwd, path: Path) -> bool:
    """Whether ``user`` can traverse every directory above ``path``."""
    for parent in path.resolve().parents:
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            continue
        if not st.st_mode & 0o001:
            return False
    return True


@dataclass
class Mosquitto:
    workdir: Path
    port: int = 0
    host: str = "127.0.0.1"
    persistence: bool = True
    extra_conf: str = ""
    tls: BrokerTls | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        self.log_path = self.workdir / "mosquitto.log"

    @property
    def conf_path(self) -> Path:
        if self.tls is not None:
            return self.workdir / "conf" / "mosquitto.conf"
        return self.workdir / "mosquitto.conf"

    @property
    def run_as(self) -> str | None:
        """The user mosquitto runs as when started by root: ``mosquitto`` (it drops to that
        user by default) when that user can reach the work directory, else ``root``."""
        if os.geteuid() != 0:
            return None
        try:
            user = pwd.getpwnam("mosquitto")
        except KeyError:
            return "root"
        return "mosquitto" if _reachable_by(user, self.workdir) else "root"

    def write_conf(self) -> None:
        if self.tls is not None:
            self._write_tls_conf(self.tls)
            return
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

    def _write_tls_conf(self, tls: BrokerTls) -> None:
        """The shipped configuration (provisioning/mosquitto.conf.template and acl.template)
        through provisioning/render-broker-config, for this port on loopback. Started as root,
        mosquitto drops to the ``mosquitto`` user, so its copies of the CA, server certificate
        and key, the rendered files and the persistence directory are given to that user."""
        files = self.workdir / "tls"
        files.mkdir(mode=0o700, exist_ok=True)
        copies = []
        for src, name, mode in (
            (tls.ca_file, "ca.crt", 0o644),
            (tls.cert_file, "server.crt", 0o644),
            (tls.key_file, "server.key", 0o600),
        ):
            dest = files / name
            dest.unlink(missing_ok=True)
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(Path(src).read_bytes())
            copies.append(dest)
        persist = self.workdir / "persist"
        persist.mkdir(exist_ok=True)
        run_as = self.run_as
        cmd = [
            str(PROVISIONING / "render-broker-config"),
            "--out", str(self.workdir / "conf"),
            "--ca", str(copies[0]), "--cert", str(copies[1]), "--key", str(copies[2]),
            "--port", str(self.port), "--bind", self.host,
            "--persistence", str(persist),
        ]  # fmt: skip
        if run_as == "root":
            cmd.append("--run-as-root")  # the mosquitto user cannot reach this directory
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ApplianceError(
                f"render-broker-config failed: {proc.stderr.strip()}", code=ErrorCode.BROKER_FAILED
            )
        if self.extra_conf:
            with self.conf_path.open("a") as fh:
                fh.write(self.extra_conf)
        if run_as == "mosquitto":
            user = pwd.getpwnam("mosquitto")
            for path in [self.workdir, files, *copies, persist, *(self.workdir / "conf").iterdir()]:
                os.chown(path, user.pw_uid, user.pw_gid)
            os.chown(self.workdir / "conf", user.pw_uid, user.pw_gid)

    def ready(self) -> bool:
        ctx = self.tls.probe_context() if self.tls is not None else None
        return mqtt_connack(self.host, self.port, tls=ctx)

    def start(self, timeout: float = 10.0) -> Mosquitto:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise ApplianceError(
                "mosquitto is not installed (apt-get install mosquitto)",
                code=ErrorCode.MISSING_BROKER,
            )
        self.write_conf()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [exe, "-c", str(self.conf_path)], stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc.poll() is not None:
                raise ApplianceError(
                    f"mosquitto exited with {self.proc.returncode}: "
                    f"{self.log_path.read_text(errors='replace')[-2000:]}",
                    code=ErrorCode.BROKER_FAILED,
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ApplianceError(
                    "mosquitto did not accept connections in time", code=ErrorCode.BROKER_FAILED
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
