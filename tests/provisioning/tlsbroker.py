"""A real mosquitto configured by provisioning/ (mutual TLS, ACLs keyed on the certificate CN)
with certificates from provisioning/issue-device-cert, for the provisioning and fleet-tool
tests. Readiness is a real CONNECT/CONNACK with the controller certificate, never a sleep."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from appliance.devtools.broker import free_port
from appliance.errors import ApplianceError
from appliance.fleet.conn import BrokerOptions, FleetMqtt

REPO = Path(__file__).resolve().parents[2]
PROVISIONING = REPO / "provisioning"


@dataclass
class TlsBroker:
    port: int
    ca_dir: Path
    certs: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def opts(self, identity: str = "controller") -> BrokerOptions:
        return BrokerOptions(
            host="localhost",
            port=self.port,
            ca_file=self.certs / "ca.crt",
            cert_file=self.certs / f"{identity}.crt",
            key_file=self.certs / f"{identity}.key",
        )

    def flags(self, identity: str = "controller") -> list[str]:
        o = self.opts(identity)
        return [
            "--host", "localhost", "--port", str(self.port), "--ca", str(o.ca_file),
            "--cert", str(o.cert_file), "--key", str(o.key_file),
        ]  # fmt: skip


def issue(ca: Path, out: Path, name: str, *extra: str) -> None:
    subprocess.run(
        [str(PROVISIONING / "issue-device-cert"), "--ca-dir", str(ca), "--out", str(out),
         *extra, name],
        check=True, capture_output=True,
    )  # fmt: skip


@contextlib.contextmanager
def tls_broker(base: Path) -> Iterator[TlsBroker]:
    ca, certs = base / "ca", base / "certs"
    issue(ca, certs, "localhost", "--kind", "server", "--san", "DNS:localhost,IP:127.0.0.1")
    issue(ca, certs, "controller", "--kind", "controller")
    issue(ca, certs, "claimant", "--kind", "claimant")
    (base / "persist").mkdir(parents=True, exist_ok=True)
    log = base / "mosquitto.log"
    for _attempt in range(3):
        port = free_port()
        subprocess.run(
            [str(PROVISIONING / "render-broker-config"), "--out", str(base / "conf"),
             "--ca", str(certs / "ca.crt"), "--cert", str(certs / "localhost.crt"),
             "--key", str(certs / "localhost.key"), "--port", str(port),
             "--bind", "127.0.0.1", "--persistence", str(base / "persist"), "--run-as-root"],
            check=True, capture_output=True,
        )  # fmt: skip
        with log.open("ab") as fh:
            proc = subprocess.Popen(
                ["mosquitto", "-c", str(base / "conf" / "mosquitto.conf")],
                stdout=fh, stderr=subprocess.STDOUT,
            )  # fmt: skip
        broker = TlsBroker(port, ca, certs, proc, log)
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                FleetMqtt(broker.opts()).connect(2).close()
            except ApplianceError:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.05)  # returns early only if the broker died
                continue
            try:
                yield broker
            finally:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            return
        proc.kill()
        proc.wait()
    raise AssertionError("mosquitto did not start:\n" + log.read_text())
