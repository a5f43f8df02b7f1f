"""The fleet service end to end on the production path: mosquitto with the shipped
configuration (mutual TLS, the shipped ACL), the service connected with the ``controller``
certificate through a shared subscription, kiosks with their own certificates signing every
message with their device keys; SQLite and PostgreSQL (``db_url``)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import pyotp
import pytest
from fastapi.testclient import TestClient
from nacl.signing import SigningKey

from appliance.devtools.broker import Mosquitto
from appliance.devtools.fleetkit import FleetKit
from appliance.fleet.conn import FleetMqtt
from appliance.fleet.jobs import JobRunner, Rollout
from appliance.fleetsvc.db import FleetDB
from appliance.fleetsvc.jobstore import ServiceJobStore
from appliance.fleetsvc.servecli import FleetService
from appliance.trust.configdoc import sign_config
from appliance.trust.envelope import CommandVerifier, ensure_replay_schema
from appliance.trust.keys import DeviceIdentity, load_public_key
from tests.fleetsvc.conftest import PASSWORD
from tests.fleetsvc.kiosk import SignedKiosk
from tests.fleetsvc.openapi_check import check_response
from tests.fleetsvc.test_api import DOC
from tests.helpers import wait_for

LOST_AFTER = 3.0


@pytest.fixture
def service(
    fleet_kit: FleetKit, tls_broker: Mosquitto, fleet_db: FleetDB, request: pytest.FixtureRequest
) -> Iterator[tuple[FleetService, SignedKiosk]]:
    name = f"svc-{request.node.callspec.id}-{int(time.time() * 1000) % 10**8}"
    kiosk = SignedKiosk(fleet_kit, tls_broker.port, name)
    svc = FleetService(
        fleet_db,
        fleet_kit.options(tls_broker.port),
        {name: kiosk.public_key},
        share_group=f"t{int(time.time() * 1000)}",
        lost_after_s=LOST_AFTER,
        alarm_interval_s=0.2,
        signer=fleet_kit.signer("operator"),
    ).start()
    yield svc, kiosk
    kiosk.close()
    svc.stop()


def _sign_in(client: TestClient, name: str, secret: str) -> str:
    page = client.get("/login")
    csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
    r = client.post(
        "/login",
        data={"name": name, "password": PASSWORD, "code": pyotp.TOTP(secret).now(), "csrf": csrf},
    )
    assert r.status_code == 303, r.text
    home = client.get("/")
    assert home.status_code == 200, (home.status_code, home.headers, home.text[:500])
    return home.text.split('name="csrf" value="')[1].split('"')[0]


def test_ingest_alarms_and_a_signed_command(
    service: tuple[FleetService, SignedKiosk],
    fleet_db: FleetDB,
    fleet_kit: FleetKit,
    make_user: Any,
) -> None:
    svc, kiosk = service
    dev = kiosk.device
    kiosk.birth(groups=["hanoi", "north"])
    row = wait_for(
        lambda: (d := fleet_db.device(dev)) and d["state"] == "online" and d, 10, "the birth stored"
    )
    assert (row["version"], row["site"], row["signature"], row["health"]) == (
        "1.2.0",
        "Ha Noi 1",
        "ok",
        "ok",
    )
    kiosk.heartbeat(outbox=7, devices={"camera": "ok", "fingerprint": "error"})
    wait_for(lambda: (fleet_db.device(dev) or {}).get("outbox_depth") == 7, 10, "heartbeat")
    kiosk.event("enrollment.finished", {"session": 1})
    kiosk.event("enrollment.rejected", {"package_id": "p-1", "reason": "bad seal"})
    kiosk.publish(
        "config/reported",
        {
            "status": "rolled_back",
            "version": 5,
            "applied_version": 4,
            "reason": "broker unreachable",
        },
        retain=True,
    )
    kinds = lambda: {a["kind"] for a in fleet_db.list_alarms() if a["device_id"] == dev}  # noqa: E731
    wait_for(
        lambda: {"unhealthy", "package_rejected", "config_rolled_back"} <= kinds(),
        10,
        "the unhealthy, package and roll-back alarms",
    )
    assert sum(n for _d, n in fleet_db.enrollments_per_day(dev)) == 1
    assert (fleet_db.device(dev) or {})["config_applied"] == 4
    assert (fleet_db.device(dev) or {})["groups"] == ["hanoi", "north"]
    # The administrators' desired configuration (retained, signed by an admin key): its version.
    doc = sign_config(
        b"[telemetry]\nheartbeat_s = 30\n",
        key=fleet_kit.signer("admin"),
        version=5,
        target=dev,
        fmt="toml",
    )
    with FleetMqtt(fleet_kit.options(tls_broker_port(svc))) as ctl:
        ctl.publish(f"kiosk/{dev}/config/desired", doc, retain=True)
    wait_for(lambda: (fleet_db.device(dev) or {}).get("config_desired") == 5, 10, "desired v5")

    # A status signed by another key is no contact: state and last seen stay as they were.
    before = fleet_db.device(dev) or {}
    forger = DeviceIdentity(SigningKey.generate())
    kiosk.publish(
        "status",
        {"online": False, "device": dev, "reason": "shutdown", "ts": time.time() + 60},
        retain=True,
        key=forger,
    )
    wait_for(lambda: (fleet_db.device(dev) or {}).get("signature") == "bad", 10, "forged")
    after = fleet_db.device(dev) or {}
    assert after["state"] == "online" and after["last_seen"] == before["last_seen"]
    kiosk.birth()  # the kiosk speaks again, signed

    # An operator sends a command from the API: signed with the service's operator key, the
    # kiosk's own verifier accepts it.
    secret = make_user("olga", "operator")
    # https: the session cookie is Secure (a browser also sends it to http://127.0.0.1)
    with TestClient(svc.app, base_url="https://testserver", follow_redirects=False) as http:
        csrf = _sign_in(http, "olga", secret)
        r = http.post(f"/api/v1/devices/{dev}/commands", json={"cmd": "ping"})
        assert r.status_code == 403 and "CSRF" in r.json()["detail"]
        r = http.post(
            f"/api/v1/devices/{dev}/commands", json={"cmd": "ping"}, headers={"x-csrf-token": csrf}
        )
        assert r.status_code == 202, r.text
        cid = r.json()["id"]
    msg = kiosk.cmds.get(timeout=10)
    conn, lock = sqlite3.connect(":memory:", check_same_thread=False), threading.Lock()
    ensure_replay_schema(conn, lock)
    verifier = CommandVerifier(
        roots=[load_public_key(fleet_kit.root_pub)],
        device_id=dev,
        role_table={"ping": "operator"},
        conn=conn,
        lock=lock,
    )
    decision = verifier.check(msg.payload)
    assert decision.accepted and decision.command == "ping", decision.reason
    conn.close()
    assert any(a["action"] == "command" and a["actor"] == "olga" for a in fleet_db.audit_log())

    # The kiosk's reply on its reply topic (the one the ACL lets it write): a forged one is
    # recorded as its verdict and changes nothing; the signed one is the command's outcome,
    # in the API and on the kiosk's page.
    assert (fleet_db.command(cid) or {}).get("status") == "sent"
    kiosk.publish(
        "reply",
        {"id": cid, "cmd": "ping", "ok": False, "error": {"code": "unknown_command"}},
        key=forger,
    )
    wait_for(lambda: (fleet_db.command(cid) or {}).get("verified") == "bad", 10, "forged reply")
    assert (fleet_db.command(cid) or {})["status"] == "sent"
    kiosk.publish("reply", {"id": cid, "cmd": "ping", "ok": True, "result": {"pong": True}})
    wait_for(lambda: (fleet_db.command(cid) or {}).get("status") == "ok", 10, "the reply")
    with TestClient(svc.app, base_url="https://testserver", follow_redirects=False) as http:
        _sign_in(http, "olga", secret)
        r = http.get(f"/api/v1/commands/{cid}")
        check_response(DOC, "get", "/api/v1/commands/{command_id}", r)
        got = r.json()
        assert (got["status"], got["verified"], got["outcome"], got["sent_by"]) == (
            "ok",
            "ok",
            {"pong": True},
            "olga",
        )
        detail = http.get(f"/api/v1/devices/{dev}").json()
        assert [c["command_id"] for c in detail["commands"]] == [cid]
        page = http.get(f"/devices/{dev}").text
        assert f'<tr data-command="{cid}" class="cmd-ok">' in page
        assert "succeeded" in page and '<code>{"pong": true}</code>' in page
        r = http.get("/api/v1/commands/fleetsvc-nope")
        assert r.status_code == 404
        check_response(DOC, "get", "/api/v1/commands/{command_id}", r)

    # Killed: the broker sends the signed Last Will; lost, and the alarm within the delay.
    killed_at = time.time()
    kiosk.kill()
    wait_for(lambda: (fleet_db.device(dev) or {}).get("state") == "lost", 15, "lost")
    wait_for(lambda: "lost" in kinds(), LOST_AFTER + 5, "the lost alarm")
    alarm = next(a for a in fleet_db.list_alarms() if a["kind"] == "lost" and a["device_id"] == dev)
    assert alarm["raised_at"] - killed_at <= LOST_AFTER + 5  # the issue: the delay + 5 s
    assert "last seen" in alarm["detail"]


def test_a_kiosk_lost_before_the_service_started_is_known(
    fleet_kit: FleetKit, tls_broker: Mosquitto, fleet_db: FleetDB
) -> None:
    """Retained messages never reach a shared subscription (MQTT 5.0 section 4.8.2): the
    service reads them once at start, unshared."""
    name = f"early-{int(time.time() * 1000) % 10**8}"
    kiosk = SignedKiosk(fleet_kit, tls_broker.port, name)
    kiosk.birth()
    kiosk.publish("config/reported", {"status": "applied", "version": 7}, retain=True)
    kiosk.kill()
    svc = FleetService(
        fleet_db,
        fleet_kit.options(tls_broker.port),
        {name: kiosk.public_key},
        share_group=f"t{int(time.time() * 1000)}",
        lost_after_s=LOST_AFTER,
    )
    # The Will is published when the broker notices the dropped connection: wait for it.
    with FleetMqtt(fleet_kit.options(tls_broker.port)) as probe:
        q = probe.collector(f"kiosk/{name}/status")
        probe.subscribe([f"kiosk/{name}/status"])
        wait_for(lambda: b'"lost"' in q.get(timeout=10).payload, 15, "the Last Will")
    svc.start()
    try:
        row = wait_for(
            lambda: (d := fleet_db.device(name)) and d["state"] == "lost" and d,
            10,
            "the retained Last Will stored",
        )
        assert row["signature"] == "ok" and row["config_applied"] == 7
        assert row["last_seen"] is not None  # the will's connect time
    finally:
        svc.stop()


def tls_broker_port(svc: FleetService) -> int:
    return svc.opts.port


def test_a_web_instance_serves_without_ingesting(
    fleet_kit: FleetKit, tls_broker: Mosquitto, fleet_db: FleetDB, make_user: Any
) -> None:
    """``serve --no-ingest``: dashboard, API and alarms from the database, no subscription."""
    with fleet_db.tx() as conn:
        fleet_db.upsert_device(conn, "kiosk-x", time.time(), state="online", last_seen=time.time())
    svc = FleetService(fleet_db, fleet_kit.options(tls_broker.port), {}, ingesting=False).start()
    try:
        assert svc.ingest is None
        secret = make_user("vera", "viewer")
        with TestClient(svc.app, base_url="https://testserver", follow_redirects=False) as http:
            _sign_in(http, "vera", secret)
            assert 'data-device="kiosk-x"' in http.get("/").text
    finally:
        svc.stop()


def _retained_job_documents(svc: FleetService, devices: list[str], marker_device: str) -> list[str]:
    """Devices of ``devices`` with a retained job document. The broker sends a subscription's
    retained messages right after its SUBACK and in order on one connection, so a second
    subscription to a topic known to be retained (``marker_device``'s status) marks the end."""
    with FleetMqtt(svc.opts) as probe:
        q = probe.collector("kiosk/#")
        probe.subscribe([f"kiosk/{d}/jobs/desired" for d in devices])
        probe.subscribe([f"kiosk/{marker_device}/status"])
        found = []
        while True:
            m = q.get(timeout=10)
            if m.topic.endswith("/status"):
                return sorted(found)
            if m.payload:
                found.append(m.topic.split("/")[1])


def test_job_reports_recorded_and_a_job_canceled(
    service: tuple[FleetService, SignedKiosk],
    fleet_db: FleetDB,
    fleet_kit: FleetKit,
    make_user: Any,
) -> None:
    """The service records a kiosk's signed reports of a job (never a forged one) without the
    job's runner reading them, completes a job whose kiosks are all final, and an operator's
    cancel (API, session with its CSRF token) clears the retained document of a kiosk that did
    not start: it never gets the job."""
    svc, kiosk = service
    dev = kiosk.device
    away = f"{dev}-away"
    kiosk.birth()
    wait_for(lambda: (fleet_db.device(dev) or {}).get("state") == "online", 10, "birth")
    store = ServiceJobStore(fleet_db, actor="cli:olga")
    with FleetMqtt(svc.opts) as mqtt:
        runner = JobRunner(store, mqtt, fleet_kit.signer("admin"), prefix="kiosk")
        job = store.create("command", {"cmd": "ping", "args": {}}, {}, [dev, away], Rollout(),
                           int(time.time()) + 600)  # fmt: skip
        single = store.create("command", {"cmd": "ping", "args": {}}, {}, [dev], Rollout(),
                              int(time.time()) + 600)  # fmt: skip
        runner.step(job.id)
        runner.step(single.id)
    assert _retained_job_documents(svc, [dev, away], dev) == sorted([dev, away])

    def state_of(job_id: str) -> str:
        return next(d["state"] for d in store.devices(job_id) if d["device"] == dev)

    report = {"job": job.id, "device": dev, "detail": "", "ts": time.time()}
    kiosk.publish("jobs/reported", {**report, "state": "in_progress"}, retain=True)
    wait_for(lambda: state_of(job.id) == "in_progress", 10, "the signed report recorded")
    assert svc.ingest is not None
    forged_before = svc.ingest.counters.forged
    forger = DeviceIdentity(SigningKey.generate())
    kiosk.publish("jobs/reported", {**report, "state": "succeeded"}, retain=True, key=forger)
    wait_for(lambda: svc.ingest.counters.forged > forged_before, 10, "the forged report seen")  # type: ignore[union-attr]
    assert state_of(job.id) == "in_progress"
    kiosk.publish("jobs/reported", {**report, "state": "succeeded", "detail": "pong"}, retain=True)
    wait_for(lambda: state_of(job.id) == "succeeded", 10, "the final report recorded")
    # The single-kiosk job: its kiosk final, the service completes it (no runner step).
    kiosk.publish("jobs/reported", {**report, "job": single.id, "state": "succeeded"}, retain=True)
    wait_for(lambda: (store.get(single.id) or job).state == "completed", 10, "job completed")

    op = make_user("op-jobs", "operator")
    with TestClient(svc.app, base_url="https://testserver", follow_redirects=False) as c:
        csrf = _sign_in(c, "op-jobs", op)
        r = c.post(f"/api/v1/jobs/{job.id}/cancel")
        assert r.status_code == 403  # a session without its CSRF token
        r = c.post(f"/api/v1/jobs/{job.id}/cancel", headers={"x-csrf-token": csrf})
        assert r.status_code == 200, r.text
        check_response(DOC, "post", "/api/v1/jobs/{job_id}/cancel", r)
        assert r.json()["state"] == "canceled"
        assert r.json()["counts"] == {"succeeded": 1, "canceled": 1}
    assert _retained_job_documents(svc, [away], dev) == []
    audit = fleet_db.audit_log()
    assert any(a["action"] == "job.cancel" and a["actor"] == "op-jobs" for a in audit)
