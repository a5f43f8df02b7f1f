"""Fleet jobs in the fleet service's database, on SQLite and PostgreSQL: the store the job
runner and ``fleet jobs`` use when the service is configured (the same semantics as the fleet
tools' own ``jobs.db``), and the jobs pages and API (checked against the committed OpenAPI
document) with their roles. Reports arriving over the broker and a cancel that clears the
retained documents are in test_service.py; the live progress in a browser in test_browser.py;
the runner on this store in tests/jobs/test_rollout.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from appliance.errors import StoreError
from appliance.fleet.conn import BrokerOptions
from appliance.fleet.jobs import Rollout
from appliance.fleetsvc.auth import issue_token
from appliance.fleetsvc.db import FleetDB
from appliance.fleetsvc.ingest import ServiceIngest
from appliance.fleetsvc.jobstore import ServiceJobStore
from appliance.fleetsvc.web import create_app
from tests.fleetsvc.openapi_check import check_response
from tests.fleetsvc.test_api import DOC, _auth, _csrf, sign_in

CMD = {"cmd": "ping", "args": {}}


def test_store_semantics(fleet_db: FleetDB) -> None:
    store = ServiceJobStore(fleet_db, actor="olga")
    now = time.time()
    devs = [f"k{i}" for i in range(5)]
    job = store.create("command", CMD, {"devices": devs}, devs, Rollout(canary=0.4), int(now) + 60)
    assert job.state == "running" and job.counts == {"pending": 5}
    assert store.created_by(job.id) == "olga"
    assert fleet_db.audit_log()[0]["action"] == "job.create"
    assert store.waves_released(job.id) == 0 and store.last_released_at(job.id) is None

    store.release(job.id, ["k0", "k1"], 1, now=now)
    assert store.waves_released(job.id) == 1 and store.last_released_at(job.id) == now
    # A report of a device not released yet changes nothing; a state the fleet sets is dropped.
    assert not store.report(job.id, "k4", "succeeded", "", now=now)
    assert not store.report(job.id, "k0", "canceled", "", now=now)
    assert store.report_many(job.id, [("k0", "in_progress", ""), ("k1", "failed", "no")], now=now)
    assert store.wave_unfinished(job.id, 1) == 1
    assert store.report(job.id, "k0", "succeeded", "done", now=now)
    assert not store.report(job.id, "k0", "in_progress", "late", now=now)  # final stays final
    assert store.wave_unfinished(job.id, 1) == 0
    assert store.counts(job.id) == {"succeeded": 1, "failed": 1, "pending": 3}

    moved = store.set_devices(job.id, ("pending",), "canceled", "stop", now=now)
    assert sorted(moved) == ["k2", "k3", "k4"]
    store.finish(job.id, "canceled", "stop", now=now)
    store.finish(job.id, "completed", None, now=now)  # only a running job finishes
    rec = store.get(job.id)
    assert rec is not None and rec.state == "canceled" and rec.reason == "stop"
    assert [d["device"] for d in store.devices(job.id, state="canceled")] == ["k2", "k3", "k4"]
    assert store.devices(job.id, limit=2, offset=1)[0]["device"] == "k1"

    second = store.create("update", {"version": "2"}, {}, ["k0"], Rollout(), int(now) + 60)
    assert [j.id for j in store.jobs()] == [job.id, second.id]
    assert [j.id for j in store.jobs(state="running")] == [second.id]
    assert [j.id for j in store.jobs(limit=1)] == [second.id]
    mine = store.jobs_of_device("k0")
    assert [(m["job_id"], m["state"], m["job_state"]) for m in mine] == [
        (second.id, "pending", "running"),
        (job.id, "succeeded", "canceled"),
    ]
    assert store.job_counts() == {"running": 1, "completed": 0, "aborted": 0, "canceled": 1}


def test_ingest_records_a_batch_of_reports(fleet_db: FleetDB) -> None:
    """The ingest's writer stores the (verified) reports of one batch in one statement, in
    their order, and completes a job whose kiosks are all final."""
    store = ServiceJobStore(fleet_db)
    now = time.time()
    job = store.create("command", CMD, {}, ["k0", "k1"], Rollout(), int(now) + 60)
    store.release(job.id, ["k0", "k1"], 1, now=now)
    ingest = ServiceIngest(fleet_db, BrokerOptions("127.0.0.1", 1, "kiosk"), {})
    items = [
        (now, "job", (job.id, "k0", "in_progress", "")),
        (now, "job", (job.id, "k1", "in_progress", "")),
        (now, "job", (job.id, "k0", "succeeded", "pong")),
        (now, "job", (job.id, "k0", "in_progress", "late")),  # a final state stays
    ]
    ingest.write(items)
    rec = store.get(job.id)
    assert rec is not None and rec.counts == {"succeeded": 1, "in_progress": 1}
    assert rec.state == "running"
    ingest.write([(now, "job", (job.id, "k1", "failed", "no"))])
    rec = store.get(job.id)
    assert rec is not None and rec.state == "completed"
    assert rec.counts == {"succeeded": 1, "failed": 1}
    assert ingest.counters.job_reports == 5
    # An update rolled back on a kiosk raises its alarm once (not for a re-delivered report);
    # a configuration job's roll-back has its own alarm from the configuration report.
    upd = store.create("update", {"version": "2"}, {}, ["k0"], Rollout(), int(now) + 60)
    cfg = store.create("config", {"version": 3}, {}, ["k1"], Rollout(), int(now) + 60)
    store.release(upd.id, ["k0"], 1, now=now)
    store.release(cfg.id, ["k1"], 1, now=now)
    back = [(now, "job", (upd.id, "k0", "in_progress", "")),
            (now, "job", (upd.id, "k0", "rolled_back", "self-test failed")),
            (now, "job", (cfg.id, "k1", "rolled_back", "broker unreachable"))]  # fmt: skip
    ingest.write(back)
    ingest.write(back[1:2])
    alarms = [(a["device_id"], a["kind"], a["detail"]) for a in fleet_db.list_alarms()]
    assert alarms == [("k0", "update_rolled_back", f"job {upd.id}: self-test failed")]
    assert (store.get(upd.id) or upd).state == "completed"


def test_a_command_line_tool_never_migrates_a_shared_database(db_url: str) -> None:
    with pytest.raises(StoreError) as exc:
        ServiceJobStore.open(db_url, actor="cli")
    assert "fleet serve --migrate" in exc.value.message
    db = FleetDB(db_url)
    db.migrate()
    db.close()
    ServiceJobStore.open(db_url, actor="cli").close()


@pytest.fixture
def fleet(fleet_db: FleetDB, make_user: Any) -> Iterator[dict[str, Any]]:
    store = ServiceJobStore(fleet_db, actor="cli:olga")
    now = time.time()
    devs = [f"kiosk-{i:02d}" for i in range(4)]
    with fleet_db.tx() as conn:
        for d in devs:
            fleet_db.upsert_device(conn, d, now, state="online", last_seen=now)
    running = store.create("command", CMD, {"devices": devs}, devs, Rollout(), int(now) + 600)
    store.release(running.id, devs[:3], 1, now=now)
    store.report_many(
        running.id, [("kiosk-00", "succeeded", "pong"), ("kiosk-01", "in_progress", "")], now=now
    )
    done = store.create("config", {"content": "c2VjcmV0", "version": 3}, {}, devs[:1], Rollout(),
                        int(now) + 600)  # fmt: skip
    store.release(done.id, devs[:1], 1, now=now)
    store.report(done.id, "kiosk-00", "succeeded", "applied", now=now)
    store.finish(done.id, "completed", None, now=now)
    secrets = {r: make_user(f"{r}-user", r) for r in ("viewer", "operator")}
    tokens = {r: issue_token(fleet_db, f"{r}-user") for r in secrets}
    app = create_app(fleet_db)
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as client:
        yield {"client": client, "secrets": secrets, "tokens": tokens, "db": fleet_db,
               "running": running.id, "done": done.id}  # fmt: skip


def test_jobs_api_against_its_openapi_document(fleet: dict[str, Any]) -> None:
    c: TestClient = fleet["client"]
    viewer, operator = _auth(fleet["tokens"]["viewer"]), _auth(fleet["tokens"]["operator"])
    assert c.get("/api/v1/jobs").status_code == 401

    r = c.get("/api/v1/jobs", headers=viewer)
    check_response(DOC, "get", "/api/v1/jobs", r)
    jobs = {j["id"]: j for j in r.json()}
    assert list(jobs) == [fleet["done"], fleet["running"]]  # newest first
    run = jobs[fleet["running"]]
    assert run["counts"] == {"succeeded": 1, "in_progress": 1, "queued": 1, "pending": 1}
    assert (run["done"], run["total"], run["percent"]) == (1, 4, 25.0)
    assert jobs[fleet["done"]]["spec"] == {"version": 3}  # not the configuration's content
    r = c.get("/api/v1/jobs?state=completed", headers=viewer)
    assert [j["id"] for j in r.json()] == [fleet["done"]]

    r = c.get(f"/api/v1/jobs/{fleet['running']}?state=queued", headers=viewer)
    check_response(DOC, "get", "/api/v1/jobs/{job_id}", r)
    body = r.json()
    assert body["created_by"] == "cli:olga" and body["devices_total"] == 1
    assert [d["device"] for d in body["devices"]] == ["kiosk-02"]
    r = c.get(f"/api/v1/jobs/{fleet['running']}?page_size=2&page=2", headers=viewer)
    assert [d["device"] for d in r.json()["devices"]] == ["kiosk-02", "kiosk-03"]
    r = c.get(f"/api/v1/jobs/{fleet['running']}?state=nonsense", headers=viewer)
    assert r.status_code == 422 and "state" in r.text
    r = c.get("/api/v1/jobs/j-nope", headers=viewer)
    assert r.status_code == 404
    check_response(DOC, "get", "/api/v1/jobs/{job_id}", r)

    r = c.get("/api/v1/devices/kiosk-00", headers=viewer)
    check_response(DOC, "get", "/api/v1/devices/{device_id}", r)
    assert {(j["job_id"], j["state"]) for j in r.json()["jobs"]} == {
        (fleet["running"], "succeeded"),
        (fleet["done"], "succeeded"),
    }

    cancel = f"/api/v1/jobs/{fleet['running']}/cancel"
    r = c.post(cancel, headers=viewer)
    assert r.status_code == 403
    check_response(DOC, "post", "/api/v1/jobs/{job_id}/cancel", r)
    r = c.post(f"/api/v1/jobs/{fleet['done']}/cancel", headers=operator)
    assert r.status_code == 409
    check_response(DOC, "post", "/api/v1/jobs/{job_id}/cancel", r)
    r = c.post(cancel, headers=operator)
    assert r.status_code == 503  # no broker to clear the documents (test_service.py has one)
    check_response(DOC, "post", "/api/v1/jobs/{job_id}/cancel", r)
    assert fleet["db"].audit_log()[0]["action"] != "job.cancel"

    r = c.get("/metrics", headers=viewer)
    assert 'fleet_jobs{state="running"} 1.0' in r.text
    assert 'fleet_jobs{state="completed"} 1.0' in r.text


def test_jobs_pages_and_roles(fleet: dict[str, Any]) -> None:
    c: TestClient = fleet["client"]
    for path in ("/jobs", f"/jobs/{fleet['running']}"):
        assert c.get(path).status_code == 303
    sign_in(c, "viewer-user", fleet["secrets"]["viewer"])
    page = c.get("/jobs")
    assert page.status_code == 200
    assert f'data-job="{fleet["running"]}"' in page.text and "25.0 %" in page.text
    part = c.get("/jobs?partial=1")
    assert part.status_code == 200 and "<html" not in part.text and "25.0 %" in part.text
    page = c.get(f"/jobs/{fleet['running']}")
    assert page.status_code == 200 and 'id="cancel-form"' not in page.text
    assert 'data-device="kiosk-03"' in page.text and "cli:olga" in page.text
    csrf = _csrf(page.text)
    r = c.post(f"/jobs/{fleet['running']}/cancel", data={"csrf": csrf})
    assert r.status_code == 403
    assert c.get("/jobs/j-nope").status_code == 404
    vi = c.get("/devices/kiosk-00?lang=vi")
    assert "Tác vụ" in vi.text and f'data-job="{fleet["running"]}"' in vi.text
    assert "thành công" in vi.text
    c.post("/logout", data={"csrf": csrf})

    sign_in(c, "operator-user", fleet["secrets"]["operator"])
    page = c.get(f"/jobs/{fleet['running']}")
    assert 'id="cancel-form"' in page.text
    r = c.post(f"/jobs/{fleet['running']}/cancel", data={"csrf": "forged"})
    assert r.status_code == 403  # a cross-site form does not know the session's token
    done = c.get(f"/jobs/{fleet['done']}")
    assert 'id="cancel-form"' not in done.text  # only a running job can be canceled
