"""A private RabbitMQ node with the MQTT plugin, on loopback, without systemd.

Debian's ``rabbitmq-server`` package is meant for a system service; here the node runs from
``/usr/lib/rabbitmq/bin/rabbitmq-server`` with everything private to one directory: its Mnesia
database and logs, its enabled-plugins file (``rabbitmq_mqtt`` enabled offline), its Erlang
cookie (``HOME``), its own epmd port, node name and listener ports. Readiness is an MQTT
CONNECT/CONNACK, never a sleep. ``stop()`` ends the node and then the epmd it started (the
node leaves epmd running, as Debian 12's RabbitMQ 3.10 does).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.devtools.broker import BrokerTls, free_port, mqtt_connack
from appliance.errors import ApplianceError
from tests.helpers import wait_for

SBIN = Path("/usr/lib/rabbitmq/bin")


def available() -> bool:
    return (SBIN / "rabbitmq-server").exists() and shutil.which("epmd") is not None


@dataclass
class RabbitMQ:
    workdir: Path
    host: str = "127.0.0.1"
    port: int = 0  # MQTT
    amqp_port: int = 0
    dist_port: int = 0
    epmd_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    node: str = field(default_factory=lambda: f"appl{uuid.uuid4().hex[:8]}@localhost")
    # Cluster members share one Erlang cookie (written into the private HOME) and one epmd.
    cookie: str | None = None
    extra_conf: str = ""
    # Mutual TLS for the kiosks: a second MQTT listener (``tls_port``) that demands a client
    # certificate signed by the fleet CA and logs the client in as its certificate's CN
    # (``mqtt.ssl_cert_login``), which must be one of ``users``. The plain listener stays on
    # loopback for the fleet's own tools (the ingest has no TLS option), as with
    # ``appliance fleet sim --ingest-port``.
    tls: BrokerTls | None = None
    users: list[str] = field(default_factory=list)
    tls_port: int = 0

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in ("port", "amqp_port", "dist_port", "epmd_port", "tls_port"):
            if not getattr(self, name):
                setattr(self, name, free_port(self.host))
        self.log_path = self.workdir / "server.out"

    @property
    def env(self) -> dict[str, str]:
        w = self.workdir
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(w),  # the Erlang cookie lives here: private to this node
            "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_MNESIA_BASE": str(w / "mnesia"),
            "RABBITMQ_LOG_BASE": str(w / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(w / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(w / "rabbitmq"),  # .conf is appended
            "RABBITMQ_CONF_ENV_FILE": str(w / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(w / "rabbit.pid"),
            "RABBITMQ_NODE_IP_ADDRESS": self.host,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": self.host,
        }

    def _configure(self) -> None:
        w = self.workdir
        (w / "rabbitmq-env.conf").write_text("")
        (w / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {self.host}:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.default = {self.host}:{self.port}\n"
            "mqtt.allow_anonymous = true\n"
            "mqtt.default_user = guest\n"
            "mqtt.default_pass = guest\n"
            "mqtt.vhost = /\n"
            "mqtt.exchange = amq.topic\n"
            "loopback_users = none\n"
            # Nagle off, as on mosquitto (specs: ~88 ms per round trip otherwise).
            "mqtt.tcp_listen_options.nodelay = true\n"
            "tcp_listen_options.nodelay = true\n"
            "log.console = false\n"
            "log.file.level = warning\n" + self.extra_conf + self._tls_conf()
        )
        if self.cookie is not None:
            cookie = w / ".erlang.cookie"
            if cookie.exists():
                cookie.chmod(0o600)
            cookie.write_text(self.cookie)
            cookie.chmod(0o400)  # epmd/erl refuse a cookie file others can read
        if not (w / "enabled_plugins").exists():
            out = subprocess.run(
                [str(SBIN / "rabbitmq-plugins"), "--offline", "enable", "rabbitmq_mqtt"],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if out.returncode != 0:
                raise ApplianceError(
                    f"rabbitmq-plugins failed: {out.stdout[-1000:]} {out.stderr[-1000:]}",
                    code="broker_failed",
                )

    def _tls_conf(self) -> str:
        if self.tls is None:
            return ""
        t = self.tls
        # RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password)).
        salt = os.urandom(4)
        guest = base64.b64encode(salt + hashlib.sha256(salt + b"guest").digest()).decode()
        defs = {
            "vhosts": [{"name": "/"}],
            "users": [
                # the certificate users have no password: they log in only with their certificate
                {"name": u, "password_hash": guest if u == "guest" else "", "tags": "",
                 "hashing_algorithm": "rabbit_password_hashing_sha256"}
                for u in ["guest", *self.users]
            ],
            "permissions": [
                {"user": u, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
                for u in ["guest", *self.users]
            ],
        }  # fmt: skip
        (self.workdir / "definitions.json").write_text(json.dumps(defs))
        return (
            f"mqtt.listeners.ssl.default = {self.host}:{self.tls_port}\n"
            f"ssl_options.cacertfile = {t.ca_file}\n"
            f"ssl_options.certfile = {t.cert_file}\n"
            f"ssl_options.keyfile = {t.key_file}\n"
            "ssl_options.verify = verify_peer\n"
            "ssl_options.fail_if_no_peer_cert = true\n"
            "ssl_options.versions.1 = tlsv1.3\n"
            "ssl_options.versions.2 = tlsv1.2\n"
            "mqtt.ssl_cert_login = true\n"
            "ssl_cert_login_from = common_name\n"
            f"load_definitions = {self.workdir / 'definitions.json'}\n"
        )

    def start(self, timeout: float = 60.0) -> RabbitMQ:
        if not available():
            raise ApplianceError(
                "rabbitmq-server is not installed (apt-get install rabbitmq-server)",
                code="missing_broker",
            )
        self._configure()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(SBIN / "rabbitmq-server")],
            env=self.env,
            stdout=log,
            stderr=log,
            start_new_session=True,
            cwd=self.workdir,
        )
        log.close()

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise ApplianceError(
                    f"rabbitmq-server exited with {self.proc.returncode}: "
                    f"{self.log_path.read_text(errors='replace')[-2000:]}",
                    code="broker_failed",
                )
            if not mqtt_connack(self.host, self.port):
                return False
            return self.tls is None or mqtt_connack(
                self.host, self.tls_port, tls=self.tls.probe_context()
            )

        try:
            wait_for(ready, timeout, "RabbitMQ's MQTT listener")
        except AssertionError:
            self.stop()
            raise
        return self

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        """Stop the node (SIGTERM to its process group: the shell wrapper and beam.smp)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self._signal_group(signal.SIGTERM)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    self.proc.wait(10)
            # beam may outlive the wrapper shell for a moment: wait for the group to be gone.
            self._wait_group_gone(self.proc.pid, 30)
            self.proc = None

    def kill(self) -> None:
        """``kill -9`` of the whole node: no clean shutdown, the Will of every client fires."""
        if self.proc is not None:
            self._signal_group(signal.SIGKILL)
            self.proc.wait(10)
            self._wait_group_gone(self.proc.pid, 10)
            self.proc = None

    @staticmethod
    def _wait_group_gone(pgid: int, timeout: float) -> None:
        def gone() -> bool:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return True
            return False

        try:
            wait_for(gone, timeout, "the node's processes to exit")
        except AssertionError:
            os.killpg(pgid, signal.SIGKILL)

    def stop_epmd(self) -> None:
        """Stop the epmd our node started on its private port."""
        subprocess.run(
            ["epmd", "-port", str(self.epmd_port), "-kill"],
            env=self.env,
            capture_output=True,
            timeout=10,
            check=False,
        )

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """``rabbitmqctl -n <node> ARGS`` with this node's environment (cookie, epmd port)."""
        out = subprocess.run(
            [str(SBIN / "rabbitmqctl"), "-n", self.node, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if out.returncode != 0:
            raise ApplianceError(
                f"rabbitmqctl {' '.join(args)} failed: {out.stdout[-1000:]} {out.stderr[-1000:]}",
                code="broker_failed",
            )
        return out.stdout

    @property
    def beam_pid(self) -> int | None:
        """The node's Erlang VM (``beam.smp``), the process a ``kill -9`` of the node hits."""
        pid_file = self.workdir / "rabbit.pid"
        try:
            return int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return None


@dataclass
class RabbitCluster:
    """Three (``size``) RabbitMQ nodes on this machine joined into one cluster with
    ``rabbitmqctl join_cluster``: distinct node names, ports and Mnesia directories, one
    Erlang cookie and one epmd. MQTT persistent sessions are quorum queues
    (``mqtt.durable_queue_type = quorum``, replicated on every node), so a session outlives
    the node it was made on: with classic queues a kiosk whose session queue lived on a dead
    node could not subscribe again on the others until that node came back."""

    workdir: Path
    size: int = 3
    host: str = "127.0.0.1"
    tls: BrokerTls | None = None  # each node's mutual-TLS listener (RabbitMQ.tls)
    users: list[str] = field(default_factory=list)  # certificate CNs allowed in
    nodes: list[RabbitMQ] = field(default_factory=list)

    def __post_init__(self) -> None:
        cookie = uuid.uuid4().hex.upper()
        tag = uuid.uuid4().hex[:6]
        epmd_port = free_port(self.host)
        self.nodes = [
            RabbitMQ(
                self.workdir / f"node{i}",
                host=self.host,
                epmd_port=epmd_port,
                node=f"appl{tag}n{i}@localhost",
                cookie=cookie,
                extra_conf="mqtt.durable_queue_type = quorum\n",
                tls=self.tls,
                users=self.users,
            )
            for i in range(self.size)
        ]

    @property
    def endpoints(self) -> list[str]:
        """``host:port`` of every node's MQTT listener for the kiosks (``mqtt.brokers``): the
        mutual-TLS one when the cluster has TLS."""
        return [f"{n.host}:{n.tls_port if self.tls else n.port}" for n in self.nodes]

    def start(self, timeout: float = 120.0) -> RabbitCluster:
        first, *others = self.nodes
        # One epmd for the three nodes, started here (``-daemon`` leaves our process group):
        # a node's kill -9 (its whole process group) must not take the others' name server.
        subprocess.run(
            ["epmd", "-daemon", "-port", str(first.epmd_port), "-address", self.host],
            env=first.env,
            capture_output=True,
            timeout=10,
            check=True,
        )
        # The nodes boot side by side, then the others join the first one, one at a time
        # (two joining at once can fail in Mnesia: "{badmatch, {error, {normal, {mnesia_app,
        # start ...}}}}" from start_app, seen here).
        errors: list[BaseException] = []

        def run(fn: Callable[[], object]) -> None:
            try:
                fn()
            except BaseException as exc:  # re-raised in the caller's thread
                errors.append(exc)

        def join(n: RabbitMQ) -> None:
            n.ctl("stop_app")
            n.ctl("join_cluster", first.node)
            n.ctl("start_app")
            wait_for(lambda: mqtt_connack(n.host, n.port), timeout, f"{n.node} MQTT")

        try:
            threads = [
                threading.Thread(target=run, args=(lambda n=n: n.start(timeout),))
                for n in self.nodes
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
            for n in others:
                join(n)
        except BaseException:
            self.stop()
            raise
        return self

    def running_nodes(self) -> list[str]:
        """The cluster's running members as one surviving node sees them."""
        alive = next(n for n in self.nodes if n.proc is not None)
        out = alive.ctl("cluster_status", "--formatter", "json")
        return list(json.loads(out).get("running_nodes", []))

    def stop(self) -> None:
        for n in reversed(self.nodes):
            n.stop()
        self.nodes[0].stop_epmd()
