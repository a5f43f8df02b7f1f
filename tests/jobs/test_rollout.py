"""Fleet jobs against a real broker and the fleet simulator: retained signed job documents,
per-kiosk states persisted in the JobStore, offline kiosks served when they return, a staged
rollout that aborts when its failure threshold is crossed. The rollout, cancel and command-line
tests run on both stores: the fleet tools' ``jobs.db`` and the fleet service's database
(``--db``, here on SQLite; PostgreSQL in tests/fleetsvc/test_jobs.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from appliance.devtools.broker import Mosquitto
from appliance.fleet.jobs import JobRunner, JobStorage, JobStore, Progress, Rollout, cancel_job
from appliance.fleet.sim import FleetConfig, FleetSim
from appliance.fleet.simjobs import SimJobs, always
from appliance.fleetsvc.db import FleetDB
from appliance.fleetsvc.jobstore import ServiceJobStore
from appliance.mqttclient import BrokerOptions, FleetMqtt
from appliance.trust.certs import FleetRoot, OperatorKey
from appliance.trust.keys import load_public_key
from appliance.update.jobdoc import verify_job
from tests.helpers import wait_for


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> tuple[OperatorKey, bytes]:
    home = tmp_path_factory.mktemp("jobs-root")
    root = FleetRoot.create(home)
    sk = SigningKey.generate()
    now = int(time.time())
    cert = root.issue(bytes(sk.verify_key), roles=("admin",), devices=("*",), not_after=now + 3600)
    return OperatorKey(sk, cert), load_public_key(home / "root.pub")


@pytest.fixture
def sims() -> Iterator[Callable[..., FleetSim]]:
    made: list[FleetSim] = []

    def make(broker: Mosquitto, jobs: SimJobs, **kw: Any) -> FleetSim:
        cfg = FleetConfig(
            host=broker.host,
            port=broker.port,
            reconnect_min_s=0.05,
            reconnect_max_s=1.0,
            connect_rate=2000,
            heartbeat_s=30.0,
            **kw,
        )
        sim = FleetSim(cfg)
        sim.extensions.append(jobs)
        made.append(sim.start())
        return sim

    yield make
    for s in made:
        s.stop()


def _wait(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    wait_for(cond, timeout, what)


def _prefix() -> str:
    import uuid

    return f"j{uuid.uuid4().hex[:6]}"


@pytest.fixture(params=["jobs.db", "service"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """``None``: the fleet tools' own ``jobs.db``; else the URL of a fleet service database."""
    if request.param == "jobs.db":
        return None
    url = f"sqlite:///{tmp_path / 'service.db'}"
    db = FleetDB(url)
    db.migrate()
    db.close()
    return url


def _store(tmp_path: Path, url: str | None) -> JobStorage:
    return JobStore(tmp_path / "fleet") if url is None else ServiceJobStore.open(url, actor="t")


def _runner(tmp_path: Path, broker: Mosquitto, admin: tuple[OperatorKey, bytes], prefix: str,
            url: str | None = None):  # type: ignore[no-untyped-def]  # fmt: skip
    mqtt = FleetMqtt(BrokerOptions(broker.host, broker.port, prefix)).connect()
    store = _store(tmp_path, url)
    # The simulator does not sign its reports: accepting them unverified is this test's switch.
    return store, mqtt, JobRunner(store, mqtt, admin[0], prefix=prefix, verify=None)


def test_job_reaches_offline_kiosks_when_they_return(
    tmp_path: Path,
    broker: Mosquitto,
    admin: tuple[OperatorKey, bytes],
    sims: Callable[..., FleetSim],
) -> None:
    prefix = _prefix()
    jobs = SimJobs()
    online = sims(broker, jobs, devices=40, topic_prefix=prefix)
    _wait(lambda: online.connected_count() == 40, "40 kiosks online")
    devices = [f"sim-{i:05d}" for i in range(50)]  # 10 have never connected yet
    store, mqtt, runner = _runner(tmp_path, broker, admin, prefix)
    try:
        job = store.create(
            "command", {"cmd": "ping", "args": {}}, {"devices": devices}, devices,
            Rollout(), int(time.time()) + 3600,
        )  # fmt: skip
        lines: list[str] = []
        # Step the job until the 40 online kiosks are final (bounded); the 10 away never answer.
        deadline = time.monotonic() + 20
        while True:
            p = runner.run(job.id, timeout=0.5, on_progress=lambda p: lines.append(p.line()))
            if p.counts.get("succeeded") == 40 or time.monotonic() > deadline:
                break
        assert p.state == "running"  # 10 kiosks have not answered yet
        assert p.counts == {"succeeded": 40, "queued": 10}
        assert any("40/50 final" in line for line in lines)
        # The 10 come back: the retained documents are waiting for them.
        late = sims(broker, jobs, devices=10, first_index=40, topic_prefix=prefix)
        _wait(lambda: late.connected_count() == 10, "10 late kiosks online")
        p = runner.run(job.id, timeout=20)
        assert p.state == "completed" and p.counts == {"succeeded": 50}
        # Persisted: a second store on the same file sees the same states.
        again = JobStore(tmp_path / "fleet")
        assert again.get(job.id).counts == {"succeeded": 50}  # type: ignore[union-attr]
        assert again.get(job.id).state == "completed"  # type: ignore[union-attr]
        again.close()
        assert jobs.received == 50  # each kiosk ran the job once
    finally:
        mqtt.close()
        store.close()


def test_job_document_is_signed_retained_and_verifiable(
    tmp_path: Path, broker: Mosquitto, admin: tuple[OperatorKey, bytes]
) -> None:
    prefix = _prefix()
    store, mqtt, runner = _runner(tmp_path, broker, admin, prefix)
    try:
        job = store.create(
            "command", {"cmd": "ping", "args": {}}, {"devices": ["k1"]}, ["k1"], Rollout(),
            int(time.time()) + 60,
        )  # fmt: skip
        runner.step(job.id)
        late = FleetMqtt(BrokerOptions(broker.host, broker.port, prefix)).connect()
        q = late.collector(f"{prefix}/k1/jobs/desired")
        late.subscribe([f"{prefix}/k1/jobs/desired"])
        msg = q.get(timeout=10)
        late.close()
        got = verify_job(msg.payload, [admin[1]], device="k1")
        assert got.job == job.id and got.kind == "command" and got.spec["cmd"] == "ping"
        with pytest.raises(Exception) as exc:
            verify_job(msg.payload, [admin[1]], device="k2")
        assert getattr(exc.value, "code", "") == "wrong_target"
        with pytest.raises(Exception) as exc:
            verify_job(msg.payload, [admin[1]], device="k1", now=time.time() + 120)
        assert getattr(exc.value, "code", "") == "job_expired"
    finally:
        mqtt.close()
        store.close()


def test_staged_rollout_aborts_when_the_threshold_is_crossed(
    tmp_path: Path,
    broker: Mosquitto,
    admin: tuple[OperatorKey, bytes],
    sims: Callable[..., FleetSim],
    store_url: str | None,
) -> None:
    prefix = _prefix()
    # Every kiosk of this release rolls back (a bad release): the canary shows it.
    jobs = SimJobs(always("rolled_back"))
    sim = sims(broker, jobs, devices=40, topic_prefix=prefix)
    _wait(lambda: sim.connected_count() == 40, "40 kiosks online")
    devices = [f"sim-{i:05d}" for i in range(40)]
    store, mqtt, runner = _runner(tmp_path, broker, admin, prefix, store_url)
    try:
        rollout = Rollout(
            # abort_min 4: the whole canary reported before the verdict (with 2, a canary kiosk
            # whose report is still on its way when two rolled back is canceled: a race)
            canary=0.1,
            wave_size=10,
            wave_interval_s=0.0,
            abort_ratio=0.25,
            abort_min=4,
        )
        job = store.create(
            "update", {"version": "0.2.0", "sha256": "0" * 64, "size": 1}, {"devices": devices},
            devices, rollout, int(time.time()) + 3600,
        )  # fmt: skip
        seen: list[Progress] = []
        p = runner.run(job.id, timeout=30, on_progress=seen.append)
        assert p.state == "aborted"
        rec = store.get(job.id)
        assert rec is not None and "abort threshold crossed" in (rec.reason or "")
        assert rec.counts == {"rolled_back": 4, "canceled": 36}  # only the canary ran
        assert jobs.received == 4
        assert max(s.wave for s in seen) == 1
        # The cleared documents: a kiosk that comes back later finds nothing to run.
        assert all(d["wave"] is None for d in store.devices(job.id, state="canceled"))
    finally:
        mqtt.close()
        store.close()


def test_staged_rollout_completes_in_waves(
    tmp_path: Path,
    broker: Mosquitto,
    admin: tuple[OperatorKey, bytes],
    sims: Callable[..., FleetSim],
    store_url: str | None,
) -> None:
    prefix = _prefix()
    jobs = SimJobs(lambda dev, _b: "failed" if dev == "sim-00007" else "succeeded")
    sim = sims(broker, jobs, devices=30, topic_prefix=prefix)
    _wait(lambda: sim.connected_count() == 30, "30 kiosks online")
    devices = [f"sim-{i:05d}" for i in range(30)]
    store, mqtt, runner = _runner(tmp_path, broker, admin, prefix, store_url)
    try:
        rollout = Rollout(canary=0.1, wave_size=9, abort_ratio=0.2, abort_min=5)
        job = store.create(
            "command", {"cmd": "ping", "args": {}}, {"devices": devices}, devices, rollout,
            int(time.time()) + 3600,
        )  # fmt: skip
        p = runner.run(job.id, timeout=30)
        assert p.state == "completed" and p.counts == {"succeeded": 29, "failed": 1}
        waves = {d["device"]: d["wave"] for d in store.devices(job.id)}
        assert sorted(set(waves.values())) == [1, 2, 3, 4]  # canary of 3, then 9 + 9 + 9
        assert sum(1 for w in waves.values() if w == 1) == 3
    finally:
        mqtt.close()
        store.close()


def test_cancel_clears_documents_of_kiosks_that_did_not_start(
    tmp_path: Path,
    broker: Mosquitto,
    admin: tuple[OperatorKey, bytes],
    store_url: str | None,
) -> None:
    prefix = _prefix()
    store, mqtt, runner = _runner(tmp_path, broker, admin, prefix, store_url)
    try:
        job = store.create(
            "command", {"cmd": "ping", "args": {}}, {"devices": ["a", "b"]}, ["a", "b"],
            Rollout(), int(time.time()) + 3600,
        )  # fmt: skip
        runner.step(job.id)
        assert _retained_jobs(broker, prefix) == ["a", "b"]
        runner.abort(job.id, "canceled", "canceled by the administrator")
        rec = store.get(job.id)
        assert rec is not None and rec.state == "canceled" and rec.counts == {"canceled": 2}
        assert _retained_jobs(broker, prefix) == []
    finally:
        mqtt.close()
        store.close()


def _retained_jobs(broker: Mosquitto, prefix: str) -> list[str]:
    """Devices with a retained job document: retained messages are delivered right after the
    SUBACK, before a marker published afterwards."""
    probe = FleetMqtt(BrokerOptions(broker.host, broker.port, prefix)).connect()
    try:
        q = probe.collector(f"{prefix}/#")
        probe.subscribe([f"{prefix}/+/jobs/desired", f"{prefix}/marker"])
        probe.publish(f"{prefix}/marker", b"x")
        found = []
        while True:
            m = q.get(timeout=10)
            if m.topic == f"{prefix}/marker":
                return sorted(found)
            if m.payload:
                found.append(m.topic.split("/")[1])
    finally:
        probe.close()


def test_cli_create_show_list(
    tmp_path: Path,
    broker: Mosquitto,
    admin: tuple[OperatorKey, bytes],
    sims: Callable[..., FleetSim],
    capsys: pytest.CaptureFixture[str],
    store_url: str | None,
) -> None:
    from appliance.fleet import jobscli
    from appliance.trust.keys import encode_private_key

    prefix = _prefix()
    sim = sims(broker, SimJobs(), devices=5, topic_prefix=prefix)
    _wait(lambda: sim.connected_count() == 5, "5 kiosks online")
    home = tmp_path / "home"
    home.mkdir()
    (home / "admin.key").write_bytes(encode_private_key(admin[0].signing_key))
    (home / "admin.key").chmod(0o600)
    (home / "admin.cert").write_text(admin[0].certificate.to_token())
    flags = ["--host", broker.host, "--port", str(broker.port), "--prefix", prefix]
    top = ["--home", str(home)] + (["--db", store_url] if store_url else [])
    rc = jobscli.main(
        [*top, "create", "command", "--cmd", "ping", "--where", "profile=sim",
         "--canary", "0.2", "--accept-unsigned-reports", "--timeout", "30", *flags]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "command for 5 kiosk(s)" in out and "5/5 final (5 succeeded)" in out
    job_id = out.split()[1].rstrip(":")
    assert jobscli.main([*top, "list"]) == 0
    assert f"{job_id}  command  completed" in capsys.readouterr().out
    assert jobscli.main([*top, "show", job_id]) == 0
    assert "sim-00004" in capsys.readouterr().out
    # Without the switch the simulator's unsigned reports are not believed: nothing final.
    rc = jobscli.main(
        [*top, "create", "command", "--cmd", "ping", "--device", "sim-00000",
         "--timeout", "2", *flags]
    )  # fmt: skip
    assert rc == 4
    assert "2 report(s) with a bad device signature ignored" in capsys.readouterr().out
    # A job for a kiosk that is away, published without waiting, then canceled: its retained
    # document is cleared, so it never runs it.
    rc = jobscli.main(
        [*top, "create", "command", "--cmd", "ping", "--device", "away-1",
         "--no-wait", *flags]
    )  # fmt: skip
    job_id = capsys.readouterr().out.split()[1].rstrip(":")
    assert rc == 0 and "away-1" in _retained_jobs(broker, prefix)
    assert jobscli.main([*top, "cancel", job_id, *flags]) == 0
    assert "canceled" in capsys.readouterr().out
    assert "away-1" not in _retained_jobs(broker, prefix)
    assert jobscli.main([*top, "show", job_id]) == 0
    assert "canceled by the administrator" in capsys.readouterr().out
    assert jobscli.main([*top, "cancel", job_id, *flags]) == 1  # already canceled
    assert f"job {job_id} is already canceled" in capsys.readouterr().out
    if store_url:  # the service's database: its audit log names who did what
        db = FleetDB(store_url)
        actions = [(a["action"], a["target"]) for a in db.audit_log()]
        db.close()
        assert ("job.cancel", job_id) in actions and ("job.create", job_id) in actions
    else:  # nothing in the service's sense: no database file appeared
        assert not (tmp_path / "service.db").exists()


def test_kiosks_not_final_at_expiry_are_timed_out(
    tmp_path: Path, broker: Mosquitto, admin: tuple[OperatorKey, bytes]
) -> None:
    """A kiosk that never came back by the job's expiry is timed_out, its document cleared,
    and a timed-out kiosk counts against the abort threshold like a failure."""
    prefix = _prefix()
    now = [time.time()]
    mqtt = FleetMqtt(BrokerOptions(broker.host, broker.port, prefix)).connect()
    store = JobStore(tmp_path / "fleet")
    runner = JobRunner(store, mqtt, admin[0], prefix=prefix, verify=None, clock=lambda: now[0])
    try:
        job = store.create(
            "command", {"cmd": "ping", "args": {}}, {}, ["gone-1", "gone-2"],
            Rollout(canary=0.5), int(now[0]) + 60,
        )  # fmt: skip
        assert runner.step(job.id).counts == {"queued": 1, "pending": 1}
        now[0] += 61
        p = runner.step(job.id)
        assert p.state == "completed" and p.counts == {"timed_out": 1, "canceled": 1}, p
        assert _retained_jobs(broker, prefix) == []
    finally:
        mqtt.close()
        store.close()


def test_a_cancel_between_release_and_publish_leaves_no_document(
    tmp_path: Path,
    broker: Mosquitto,
    admin: tuple[OperatorKey, bytes],
    store_url: str | None,
) -> None:
    """Another administrator (or the fleet service's dashboard) cancels the job right after the
    runner marked a wave queued and before it published the wave's documents: the cancel found
    no document to clear, so the runner clears the ones it just published."""
    prefix = _prefix()
    store, mqtt, runner = _runner(tmp_path, broker, admin, prefix, store_url)
    release = store.release

    def release_then_cancel(job_id: str, devices: Any, wave: int, *, now: float) -> None:
        release(job_id, devices, wave, now=now)
        cancel_job(store, lambda _d: None, job_id, "canceled", "by another admin", now=now)

    try:
        job = store.create(
            "command", {"cmd": "ping", "args": {}}, {}, ["a", "b"], Rollout(),
            int(time.time()) + 3600,
        )  # fmt: skip
        store.release = release_then_cancel  # type: ignore[method-assign]
        runner.step(job.id)
        rec = store.get(job.id)
        assert rec is not None and rec.state == "canceled" and rec.counts == {"canceled": 2}
        assert _retained_jobs(broker, prefix) == []
    finally:
        mqtt.close()
        store.close()
