"""The dashboard's sign-in, sessions, CSRF and roles, and the JSON API checked against its
committed OpenAPI document (docs/openapi-fleet.json, which must be current), on SQLite and
PostgreSQL. The command path over a real broker is in test_service.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest
from fastapi.testclient import TestClient

from appliance.fleetsvc.auth import issue_token
from appliance.fleetsvc.db import FleetDB
from appliance.fleetsvc.web import create_app, openapi_document
from tests.fleetsvc.conftest import PASSWORD
from tests.fleetsvc.openapi_check import check_response

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi-fleet.json"
DOC = json.loads(DOC_PATH.read_text())


def test_committed_openapi_document_is_current() -> None:
    assert DOC_PATH.read_text() == openapi_document(), (
        "docs/openapi-fleet.json is stale: python -m appliance.fleetsvc.web > "
        "docs/openapi-fleet.json"
    )


@pytest.fixture
def fleet(fleet_db: FleetDB, make_user: Any) -> Iterator[dict[str, Any]]:
    now = time.time()
    with fleet_db.tx() as conn:
        for i in range(12):
            fleet_db.upsert_device(
                conn,
                f"kiosk-{i:02d}",
                now,
                state="online" if i % 4 else "lost",
                version="1.0",
                site="Hue" if i < 6 else "Ha Noi",
                groups=",north,",
                health="ok",
                last_seen=now - i,
                outbox_depth=i,
                devices_json='{"camera": "ok"}',
            )
        fleet_db.insert_event(
            conn,
            event_id="e1",
            device_id="kiosk-01",
            seq=1,
            type="enrollment.finished",
            ts=now,
            data="{}",
            verified="ok",
        )
        fleet_db.add_sample(
            conn, device_id="kiosk-01", ts=now, state="online", health="ok", outbox_depth=1
        )
        fleet_db.raise_alarm(conn, "kiosk-00", "lost", "lost, last seen ...", now)
    secrets = {role: make_user(f"{role}-user", role) for role in ("viewer", "operator", "admin")}
    tokens = {role: issue_token(fleet_db, f"{role}-user") for role in secrets}
    app = create_app(fleet_db)
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as client:
        yield {"client": client, "secrets": secrets, "tokens": tokens, "db": fleet_db}


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _csrf(html: str) -> str:
    return html.split('name="csrf" value="')[1].split('"', maxsplit=1)[0]


def sign_in(client: TestClient, name: str, secret: str, *, code: str | None = None) -> Any:
    csrf = _csrf(client.get("/login").text)
    return client.post(
        "/login",
        data={
            "name": name,
            "password": PASSWORD,
            "csrf": csrf,
            "code": code or pyotp.TOTP(secret).now(),
        },
    )


def test_nothing_is_served_without_a_session(fleet: dict[str, Any]) -> None:
    c: TestClient = fleet["client"]
    for path in ("/", "/alarms", "/audit", "/devices/kiosk-01"):
        r = c.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/login", path
    for path in ("/api/v1/devices", "/api/v1/alarms", "/api/v1/devices/kiosk-01", "/metrics"):
        r = c.get(path)
        assert r.status_code == 401, path
        check_response(DOC, "get", path.replace("kiosk-01", "{device_id}"), r)
    assert c.get("/api/v1/devices", headers=_auth("fst_not-a-token")).status_code == 401
    assert c.get("/openapi.json").status_code == 404  # not FastAPI's unauthenticated default
    assert c.get("/docs").status_code == 404
    assert c.get("/api/v1/openapi.json").status_code == 401
    r = c.get("/api/v1/openapi.json", headers=_auth(fleet["tokens"]["viewer"]))
    assert r.json() == DOC
    assert c.get("/login").status_code == 200
    assert c.get("/static/app.js").status_code == 200


def test_sign_in_needs_password_second_factor_and_csrf(fleet: dict[str, Any]) -> None:
    c: TestClient = fleet["client"]
    secret = fleet["secrets"]["viewer"]
    wrong = pyotp.TOTP(pyotp.random_base32()).now()
    r = sign_in(c, "viewer-user", secret, code=wrong)
    assert r.status_code == 401 and "Sign-in failed" in r.text
    r = c.post(
        "/login",
        data={
            "name": "viewer-user",
            "password": PASSWORD,
            "csrf": "forged",
            "code": pyotp.TOTP(secret).now(),
        },
    )
    assert r.status_code == 403
    r = sign_in(c, "viewer-user", secret)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"].lower()
    assert "fleet_session=" in cookie
    assert "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie
    page = c.get("/?state=lost")
    assert page.status_code == 200 and "kiosk-04" in page.text and "kiosk-05" not in page.text
    assert "Server-Timing" in page.headers
    actions = [a["action"] for a in fleet["db"].audit_log()]
    assert "login.failed" in actions and "login" in actions


def test_viewer_cannot_send_or_acknowledge_operator_can(fleet: dict[str, Any]) -> None:
    c: TestClient = fleet["client"]
    sign_in(c, "viewer-user", fleet["secrets"]["viewer"])
    page = c.get("/devices/kiosk-01")
    assert page.status_code == 200 and 'id="command-form"' not in page.text
    csrf = _csrf(page.text)
    r = c.post("/devices/kiosk-01/command", data={"csrf": csrf, "cmd": "ping", "args": "{}"})
    assert r.status_code == 403
    alarm_id = fleet["db"].list_alarms()[0]["id"]
    assert c.post(f"/alarms/{alarm_id}/ack", data={"csrf": csrf}).status_code == 403
    assert c.get("/audit").status_code == 403
    c.post("/logout", data={"csrf": csrf})
    assert c.get("/").status_code == 303

    sign_in(c, "operator-user", fleet["secrets"]["operator"])
    page = c.get("/devices/kiosk-01")
    assert 'id="command-form"' in page.text
    csrf = _csrf(page.text)
    assert c.post(f"/alarms/{alarm_id}/ack", data={"csrf": "x"}).status_code == 403  # CSRF
    assert c.post(f"/alarms/{alarm_id}/ack", data={"csrf": csrf}).status_code == 303
    assert fleet["db"].list_alarms()[0]["acked_by"] == "operator-user"
    vi = c.get("/alarms?lang=vi")
    assert "Cảnh báo" in vi.text and "đã xác nhận bởi operator-user" in vi.text


def test_api_against_its_openapi_document(fleet: dict[str, Any]) -> None:
    c: TestClient = fleet["client"]
    viewer, operator, admin = (_auth(fleet["tokens"][r]) for r in ("viewer", "operator", "admin"))

    r = c.get("/api/v1/devices?site=Hue&sort=last_seen&desc=true&page_size=4", headers=viewer)
    check_response(DOC, "get", "/api/v1/devices", r)
    body = r.json()
    assert body["total"] == 6 and len(body["items"]) == 4
    assert body["items"][0]["device_id"] == "kiosk-00" and body["counts"]["lost"] == 3
    r = c.get("/api/v1/devices?page_size=0", headers=viewer)
    assert r.status_code == 422 and "page_size" in r.text
    check_response(DOC, "get", "/api/v1/devices", r)

    r = c.get("/api/v1/devices/kiosk-01", headers=viewer)
    check_response(DOC, "get", "/api/v1/devices/{device_id}", r)
    assert r.json()["enrollments_per_day"][0][1] == 1 and r.json()["events"][0]["event_id"] == "e1"
    r = c.get("/api/v1/devices/nope", headers=viewer)
    assert r.status_code == 404
    check_response(DOC, "get", "/api/v1/devices/{device_id}", r)

    r = c.get("/api/v1/alarms", headers=viewer)
    check_response(DOC, "get", "/api/v1/alarms", r)
    alarm_id = r.json()[0]["id"]
    r = c.post(f"/api/v1/alarms/{alarm_id}/ack", headers=viewer)
    assert r.status_code == 403
    check_response(DOC, "post", "/api/v1/alarms/{alarm_id}/ack", r)
    r = c.post(f"/api/v1/alarms/{alarm_id}/ack", headers=operator)  # a token needs no CSRF
    check_response(DOC, "post", "/api/v1/alarms/{alarm_id}/ack", r)
    assert r.json()["acked_by"] == "operator-user" and r.json()["open"] is True

    r = c.post("/api/v1/devices/kiosk-01/commands", json={"cmd": "ping"}, headers=viewer)
    assert r.status_code == 403
    check_response(DOC, "post", "/api/v1/devices/{device_id}/commands", r)
    r = c.post("/api/v1/devices/kiosk-01/commands", json={"cmd": "Bad Name"}, headers=operator)
    assert r.status_code == 422 and "cmd" in r.text
    r = c.post("/api/v1/devices/kiosk-01/commands", json={"cmd": "ping"}, headers=operator)
    assert r.status_code == 503  # this app has no broker connection (test_service.py has)
    check_response(DOC, "post", "/api/v1/devices/{device_id}/commands", r)

    assert c.get("/api/v1/audit", headers=operator).status_code == 403
    r = c.get("/api/v1/audit", headers=admin)
    check_response(DOC, "get", "/api/v1/audit", r)
    assert any(a["action"] == "alarm.ack" for a in r.json())

    r = c.get("/metrics", headers=viewer)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'fleet_devices{state="lost"} 3.0' in r.text
    assert 'fleet_alarms_open{kind="lost"} 1.0' in r.text
