"""An update job end to end over a real broker: the fleet's JobRunner publishes the signed job
document and serves the bundle in chunks; the kiosk's JobAgent downloads (resumably), installs
beside the running version, switches, and after the restart judges the trial and reports.
Good release -> succeeded; a release failing its selftest or crashing on start -> rolled back
by the kiosk itself, reported as rolled_back."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from appliance.devtools.broker import Mosquitto
from appliance.devtools.fleetkit import FleetKit
from appliance.fleet.jobs import JobRunner, JobStore, Progress, Rollout
from appliance.fleet.jobs_bundles import sha256_file
from appliance.mqttclient import BrokerOptions, FleetMqtt
from appliance.trust.certs import FleetRoot, OperatorKey
from appliance.update.agent import CHUNK, JobAgent

from .conftest import ReleaseKeys
from .kiosk import Kiosk
from .test_install import bundles, make_kiosk  # noqa: F401 - the session fixture

DEVICE = "k1"


class KioskLink:
    """The kiosk's MQTT connection as the daemon's agent gives it to the JobAgent: messages
    routed from a queue on a worker thread, publishes that do not block the caller."""

    def __init__(self, broker: Mosquitto, prefix: str) -> None:
        self.mqtt = FleetMqtt(BrokerOptions(broker.host, broker.port, prefix)).connect()
        self.agent: JobAgent | None = None
        self.queue: queue.Queue = queue.Queue()  # type: ignore[type-arg]
        self.outgoing: queue.Queue = queue.Queue()  # type: ignore[type-arg]
        self.restart = threading.Event()
        self.chunks = 0
        self.sent: list[tuple[str, bytes]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._route, daemon=True),
            threading.Thread(target=self._send, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def attach(self, agent: JobAgent) -> None:
        self.agent = agent
        for t in agent.subscriptions():
            q = self.mqtt.collector(t)
            threading.Thread(target=self._forward, args=(q,), daemon=True).start()
        self.mqtt.subscribe(agent.subscriptions())

    def _forward(self, q: queue.Queue) -> None:  # type: ignore[type-arg]
        while not self._stop.is_set():
            try:
                self.queue.put(q.get(timeout=0.2))
            except queue.Empty:
                continue

    def _route(self) -> None:
        while not self._stop.is_set():
            try:
                m = self.queue.get(timeout=0.05)
            except queue.Empty:
                if self.agent is not None and not self.restart.is_set():
                    self.agent.tick()  # the daemon's main loop
                continue
            if self.agent is not None:
                if m.topic.endswith("/update/data"):
                    self.chunks += 1
                self.agent.on_message(m.topic, m.payload)

    def _send(self) -> None:
        while not self._stop.is_set():
            try:
                topic, body, retain = self.outgoing.get(timeout=0.2)
            except queue.Empty:
                continue
            self.mqtt.publish(topic, body, retain=retain)

    def publish(self, topic: str, body: bytes, retain: bool) -> bool:
        self.sent.append((topic, body))
        self.outgoing.put((topic, body, retain))
        return True

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
        self.mqtt.close()


@pytest.fixture(scope="module")
def admin(release_keys: ReleaseKeys) -> OperatorKey:
    root = FleetRoot.load(release_keys.home)
    sk = SigningKey.generate()
    now = int(time.time())
    cert = root.issue(bytes(sk.verify_key), roles=("admin",), devices=("*",), not_after=now + 3600)
    return OperatorKey(sk, cert)


@pytest.fixture
def kiosk(tmp_path: Path, release_keys: ReleaseKeys, bundles: dict[str, Path]) -> Iterator[Kiosk]:  # noqa: F811
    k = make_kiosk(tmp_path, release_keys, bundles)
    yield k
    k.stop()


def _agent(k: Kiosk, link: KioskLink, keys: ReleaseKeys, prefix: str) -> JobAgent:
    return JobAgent(
        device=DEVICE,
        prefix=prefix,
        roots=[keys.root_pub],
        updater=k.up,
        publish=link.publish,
        session_active=lambda: False,
        request_restart=lambda _reason: link.restart.set(),
    )


@pytest.mark.parametrize(
    ("version", "final"),
    [("0.2.0", "succeeded"), ("0.4.0", "rolled_back"), ("0.3.0", "rolled_back")],
)
def test_update_job_end_to_end(
    tmp_path: Path,
    broker: Mosquitto,
    kiosk: Kiosk,
    bundles: dict[str, Path],  # noqa: F811
    release_keys: ReleaseKeys,
    admin: OperatorKey,
    version: str,
    final: str,
) -> None:
    prefix = f"u{uuid.uuid4().hex[:6]}"
    bundle = bundles[version]
    fleet = FleetMqtt(BrokerOptions(broker.host, broker.port, prefix)).connect()
    store = JobStore(tmp_path / "fleet")
    runner = JobRunner(store, fleet, admin, prefix=prefix, verify=None)  # the link does not sign
    spec = {"version": version, "sha256": sha256_file(bundle), "size": bundle.stat().st_size,
            "bundle": str(bundle)}  # fmt: skip
    job = store.create(
        "update", spec, {"devices": [DEVICE]}, [DEVICE], Rollout(), int(time.time()) + 600
    )
    result: list[Progress] = []
    driver = threading.Thread(target=lambda: result.append(runner.run(job.id, timeout=90)))
    link = KioskLink(broker, prefix)
    try:
        link.attach(_agent(kiosk, link, release_keys, prefix))
        driver.start()
        assert link.restart.wait(60), "the kiosk never switched"
        assert link.chunks >= bundle.stat().st_size // CHUNK
        assert kiosk.current() == f"releases/{version}"
        # The daemon exits 75; systemd starts it again through the guard.
        kiosk.stop()
        link.restart.clear()
        started = kiosk.run_until_up()
        agent = _agent(kiosk, link, release_keys, prefix)
        link.agent = agent
        agent.after_start()
        if started == version:  # the trial: health checks pass, then the selftest decides
            agent.trial_tick(connected=True, health={})
            if final == "rolled_back":
                assert link.restart.is_set()
                kiosk.stop()
                assert kiosk.start() == "0.1.0"
        else:
            assert started == "0.1.0"  # the guard rolled the crashing release back
        driver.join(60)
        assert result and result[0].state == "completed", result
        assert result[0].counts == {final: 1}
        detail = store.devices(job.id)[0]["detail"]
        if version == "0.4.0":
            assert "selftest of the new version failed" in detail
        if version == "0.3.0":
            assert "before a verdict" in detail
        assert kiosk.current() == ("releases/0.2.0" if final == "succeeded" else "releases/0.1.0")
    finally:
        if driver.is_alive():
            driver.join(90)
        link.close()
        fleet.close()
        store.close()


def test_tampered_bundle_sent_as_a_job_is_refused_and_reported(
    tmp_path: Path,
    broker: Mosquitto,
    kiosk: Kiosk,
    bundles: dict[str, Path],  # noqa: F811
    release_keys: ReleaseKeys,
    admin: OperatorKey,
) -> None:
    """The job's hash is of the file served, so the download completes; the bundle's own
    signed manifest then refuses the swapped wheel before anything is installed."""
    import io
    import tarfile

    from .wheels import make_wheel

    bad = tmp_path / "tampered.bundle"
    evil = make_wheel(tmp_path / "evil", "0.2.0", "crash").read_bytes()
    with tarfile.open(bundles["0.2.0"]) as tin, tarfile.open(bad, "w") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read()  # type: ignore[union-attr]
            if m.name.endswith(".whl"):
                data = evil
            info = tarfile.TarInfo(m.name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
    prefix = f"u{uuid.uuid4().hex[:6]}"
    fleet = FleetMqtt(BrokerOptions(broker.host, broker.port, prefix)).connect()
    store = JobStore(tmp_path / "fleet")
    runner = JobRunner(store, fleet, admin, prefix=prefix, verify=None)
    spec = {"version": "0.2.0", "sha256": sha256_file(bad), "size": bad.stat().st_size,
            "bundle": str(bad)}  # fmt: skip
    job = store.create("update", spec, {}, [DEVICE], Rollout(), int(time.time()) + 600)
    link = KioskLink(broker, prefix)
    try:
        link.attach(_agent(kiosk, link, release_keys, prefix))
        p = runner.run(job.id, timeout=60)
        assert p.state == "completed" and p.counts == {"failed": 1}, p
        assert store.devices(job.id)[0]["detail"].startswith("release_tampered:")
        assert kiosk.current() == "releases/0.1.0"
        assert not (kiosk.root / "releases" / "0.2.0").exists()
        assert not link.restart.is_set()
    finally:
        link.close()
        fleet.close()
        store.close()


def test_interrupted_download_resumes_at_its_offset(
    tmp_path: Path,
    broker: Mosquitto,
    kiosk: Kiosk,
    bundles: dict[str, Path],  # noqa: F811
    release_keys: ReleaseKeys,
    admin: OperatorKey,
) -> None:
    """A daemon restarted mid-download (power cut) gets the retained job again and asks for
    the rest only."""
    import json

    from appliance.update import guard as g

    bundle = bundles["0.2.0"]
    prefix = f"u{uuid.uuid4().hex[:6]}"
    fleet = FleetMqtt(BrokerOptions(broker.host, broker.port, prefix)).connect()
    store = JobStore(tmp_path / "fleet")
    runner = JobRunner(store, fleet, admin, prefix=prefix, verify=None)
    sha, size = sha256_file(bundle), bundle.stat().st_size
    spec = {"version": "0.2.0", "sha256": sha, "size": size, "bundle": str(bundle)}
    job = store.create("update", spec, {}, [DEVICE], Rollout(), int(time.time()) + 600)
    # What the previous run left: the journal at downloading and the first 1,000 bytes.
    left = {"state": "downloading", "job": job.id, "version": "0.2.0", "sha256": sha,
            "size": size, "from": "releases/0.1.0"}  # fmt: skip
    g.write_journal(kiosk.state, left)
    (kiosk.state / "update" / "download.part").write_bytes(bundle.read_bytes()[:1000])
    driver = threading.Thread(target=lambda: runner.run(job.id, timeout=60))
    link = KioskLink(broker, prefix)
    try:
        link.attach(_agent(kiosk, link, release_keys, prefix))
        driver.start()
        assert link.restart.wait(60), "the kiosk never switched"
        asks = [json.loads(b) for t, b in link.sent if t.endswith("/update/get")]
        assert asks[0]["offset"] == 1000 and asks[0]["length"] == size - 1000
        assert kiosk.current() == "releases/0.2.0"
    finally:
        store.finish(job.id, "canceled", "test over", now=time.time())
        driver.join(60)
        link.close()
        fleet.close()
        store.close()


def test_bundle_from_the_jobs_https_url_resumed_with_a_range(
    tmp_path: Path,
    broker: Mosquitto,
    kiosk: Kiosk,
    bundles: dict[str, Path],  # noqa: F811
    release_keys: ReleaseKeys,
    admin: OperatorKey,
    fleet_kit: FleetKit,
) -> None:
    """A job naming an https:// address: the kiosk downloads from it (here a server with the
    kit's localhost certificate), resuming at its file's length with a Range request; the
    fleet serves no chunks for this job."""
    import http.server
    import json
    import ssl

    from appliance.update import guard as g

    bundle = bundles["0.2.0"]
    data = bundle.read_bytes()
    ranges: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ranges.append(self.headers.get("Range", ""))
            start = int(self.headers.get("Range", "bytes=0-")[6:].rstrip("-") or 0)
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:])

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tls = fleet_kit.broker_tls()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://localhost:{server.server_address[1]}/kioskdemo-0.2.0.bundle"

    prefix = f"u{uuid.uuid4().hex[:6]}"
    fleet = FleetMqtt(BrokerOptions(broker.host, broker.port, prefix)).connect()
    store = JobStore(tmp_path / "fleet")
    runner = JobRunner(store, fleet, admin, prefix=prefix, verify=None)
    sha = sha256_file(bundle)
    spec = {"version": "0.2.0", "sha256": sha, "size": len(data), "url": url}  # no chunks
    job = store.create("update", spec, {}, [DEVICE], Rollout(), int(time.time()) + 600)
    left = {"state": "downloading", "job": job.id, "version": "0.2.0", "sha256": sha,
            "size": len(data), "from": "releases/0.1.0"}  # fmt: skip
    g.write_journal(kiosk.state, left)
    (kiosk.state / "update" / "download.part").write_bytes(data[:1000])
    driver = threading.Thread(target=lambda: runner.run(job.id, timeout=60))
    link = KioskLink(broker, prefix)
    try:
        agent = _agent(kiosk, link, release_keys, prefix)
        agent.url_ca_file = fleet_kit.ca_file
        link.attach(agent)
        driver.start()
        assert link.restart.wait(60), "the kiosk never switched"
        assert ranges == ["bytes=1000-"]
        assert not [t for t, _b in link.sent if t.endswith("/update/get")]
        assert kiosk.current() == "releases/0.2.0"
        assert any(url in json.loads(b)["detail"] for t, b in link.sent if "jobs/reported" in t)
    finally:
        store.finish(job.id, "canceled", "test over", now=time.time())
        driver.join(60)
        server.shutdown()
        server.server_close()
        link.close()
        fleet.close()
        store.close()
