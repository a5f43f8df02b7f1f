"""``appliance fleet serve``'s administration options and ``appliance fleet devices --db``
reading the service's database (SQLite and PostgreSQL)."""

from __future__ import annotations

import time

import pytest

from appliance.cli import main as appliance_main
from appliance.fleetsvc.db import MIGRATIONS, FleetDB


def test_serve_admin_options_and_devices_from_the_database(
    fleet_db: FleetDB, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = fleet_db.url
    assert appliance_main(["fleet", "serve", "--db", url, "--migrate"]) == 0
    assert f"schema version {MIGRATIONS[-1][0]}" in capsys.readouterr().out
    monkeypatch.setenv("APPLIANCE_FLEET_PASSWORD", "short")
    assert appliance_main(["fleet", "serve", "--db", url, "--add-user", "al", "--role",
                           "admin"]) == 2  # fmt: skip
    assert "password: at least 12 characters" in capsys.readouterr().err
    monkeypatch.setenv("APPLIANCE_FLEET_PASSWORD", "a long enough password")
    assert appliance_main(["fleet", "serve", "--db", url, "--add-user", "al", "--role",
                           "admin"]) == 0  # fmt: skip
    assert "TOTP secret:" in capsys.readouterr().out
    assert appliance_main(["fleet", "serve", "--db", url, "--issue-token", "al"]) == 0
    assert capsys.readouterr().out.startswith("fst_")
    assert appliance_main(["fleet", "serve", "--db", url, "--issue-token", "nobody"]) == 2
    assert [a["action"] for a in fleet_db.audit_log()] == ["token.issue", "user.add"]

    now = time.time()
    with fleet_db.tx() as conn:
        fleet_db.upsert_device(conn, "kiosk-hn-0042", now, state="lost", version="1.2.0",
                               health="-", last_seen=now - 3600, site="Ha Noi 1",
                               signature="ok")  # fmt: skip
    assert appliance_main(["fleet", "devices", "--db", url]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("kiosk-hn-0042"))
    assert line.split()[:3] == ["kiosk-hn-0042", "lost", "1.2.0"] and "60m ago" in line
    assert "1 device(s), 0 online" in out
