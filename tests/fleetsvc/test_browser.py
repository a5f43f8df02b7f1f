"""The dashboard in a real browser (Playwright driving Debian's /usr/bin/chromium): 500
simulated kiosks appear, a filter narrows them, a killed kiosk shows lost with its last-seen
time and raises an alarm within the configured delay, a viewer cannot send a command (no
button, and the POST is refused), an operator can, and sees the kiosk's verified reply as the
command's outcome; a job's progress moves on its page (no reload) while simulated kiosks run it
and the service records their signed reports, a viewer has no cancel button and its cancel POST
is refused, as is a cancel without the session's CSRF token, and an operator cancels a job.
Screenshots go to $FLEETSVC_SCREENSHOTS (default: the test's temporary
directory); they are not committed.

The production path: mosquitto with the shipped configuration (mutual TLS, the shipped ACL), of
its own for this module (the session's TLS broker keeps other tests' retained statuses); every
simulated kiosk presents its own certificate issued by the fleet CA and signs what it publishes
with its own device key (appliance/fleet/simidentity.py), and the service approves those keys."""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest

from appliance.devtools.broker import free_port
from appliance.devtools.fleetkit import FleetKit
from appliance.fleet.conn import FleetMqtt
from appliance.fleet.jobs import JobRunner, Rollout
from appliance.fleet.sim import FleetConfig, FleetSim
from appliance.fleet.simidentity import SimIdentities
from appliance.fleet.simjobs import SimJobs
from appliance.fleet.tools import verify_from
from appliance.fleetsvc.auth import add_user
from appliance.fleetsvc.db import FleetDB
from appliance.fleetsvc.jobstore import ServiceJobStore
from appliance.fleetsvc.servecli import FleetService, WebServer
from appliance.trust.keys import load_public_key
from tests.fleetsvc.conftest import PASSWORD
from tests.helpers import wait_for

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
KIOSKS = 500
LOST_AFTER = 4.0
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")


@pytest.fixture(scope="module")
def stack(
    fleet_kit: FleetKit, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    broker = fleet_kit.broker(tmp_path_factory.mktemp("browser-broker")).start()
    ids = SimIdentities.issue(
        fleet_kit.ca_dir,
        tmp_path_factory.mktemp("sim-identities"),
        [f"sim-{i:05d}" for i in range(KIOSKS)],
        command_roots=[load_public_key(fleet_kit.root_pub)],
    )
    db = FleetDB(f"sqlite:///{tmp_path_factory.mktemp('svc') / 'fleet.db'}")
    svc = FleetService(
        db,
        fleet_kit.options(broker.port),
        ids.public_keys(),
        share_group=f"g{uuid.uuid4().hex[:6]}",
        lost_after_s=LOST_AFTER,
        alarm_interval_s=0.5,
        signer=fleet_kit.signer("operator"),
    ).start()
    secrets = {r: add_user(db, f"{r}-1", r, PASSWORD) for r in ("viewer", "operator")}
    port = free_port()
    web = WebServer(svc.app, "127.0.0.1", port).start()
    sim = FleetSim(
        FleetConfig(
            host="localhost",  # the name in the broker's certificate
            port=broker.port,
            devices=KIOSKS,
            identities=ids,
            heartbeat_s=2.0,
            keepalive_s=5,
            connect_rate=1000,
            reconnect_min_s=0.05,
            reconnect_max_s=1.0,
        )
    )
    sim.extensions.append(SimJobs(work_s=0.2))  # every kiosk takes jobs (signed reports)
    sim.start()
    shots = Path(os.environ.get("FLEETSVC_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    shots.mkdir(parents=True, exist_ok=True)
    try:
        yield {
            "db": db,
            "url": f"http://127.0.0.1:{port}",
            "sim": sim,
            "secrets": secrets,
            "shots": shots,
            "svc": svc,
            "kit": fleet_kit,
            "broker_port": broker.port,
            "keys": ids.public_keys(),
        }
    finally:
        sim.stop()
        web.stop()
        svc.stop()
        db.close()
        broker.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def _sign_in(browser: Any, stack: dict[str, Any], role: str) -> Any:
    page = browser.new_context(locale="en-GB").new_page()
    page.goto(stack["url"] + "/")
    assert page.url.endswith("/login")
    page.fill("input[name=name]", f"{role}-1")
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=code]", pyotp.TOTP(stack["secrets"][role]).now())
    page.click("button[type=submit]")
    page.wait_for_url(stack["url"] + "/")
    return page


def _kill(sim: FleetSim, device: str) -> None:
    """End one simulated kiosk without DISCONNECT: the broker sends its Last Will."""

    def cancel() -> None:
        for task in sim._tasks:
            if task.get_name() == device:
                task.cancel()  # its finally aborts the transport

    sim.call(cancel)
    assert isinstance(sim._loop, asyncio.AbstractEventLoop)


def test_dashboard_with_500_kiosks(browser: Any, stack: dict[str, Any]) -> None:
    db: FleetDB = stack["db"]
    wait_for(lambda: db.counts()["online"] == KIOSKS, 60, f"{KIOSKS} kiosks online")
    # every kiosk on its own certificate (else the ACL drops its writes) and device key
    sigs = {(db.device(f"sim-{i:05d}") or {}).get("signature") for i in (0, 250, KIOSKS - 1)}
    assert sigs == {"ok"}, sigs
    shots: Path = stack["shots"]

    page = _sign_in(browser, stack, "viewer")
    online = page.locator("a.count[data-state=online] b")
    assert online.inner_text() == str(KIOSKS)
    assert re.match(rf"^{KIOSKS} devices · Page 1 of 10$", page.inner_text("#total"))
    page.screenshot(path=str(shots / "overview.png"), full_page=True)

    # A filter narrows them: sim-00040 .. sim-00049.
    page.fill("input[name=q]", "sim-0004")
    page.click("#filters button[type=submit]")
    page.wait_for_url(re.compile(r".*q=sim-0004.*"))
    assert page.inner_text("#total").startswith("10 devices")
    assert page.locator("#rows tr").count() == 10

    # Killed: lost with its last-seen time, and an alarm within the configured delay.
    victim = "sim-00042"
    killed_at = time.time()
    _kill(stack["sim"], victim)
    row = page.locator(f"#rows tr[data-device={victim}]")
    deadline = time.monotonic() + 20
    while row.locator("td.state").inner_text() != "lost":  # the page refreshes itself (5 s)
        assert time.monotonic() < deadline, "the killed kiosk never showed lost"
        page.wait_for_timeout(250)
    seen = row.locator("td.last-seen").inner_text()
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(\d+s ago\)$", seen), seen
    page.screenshot(path=str(shots / "lost.png"), full_page=True)
    wait_for(
        lambda: any(a["device_id"] == victim and a["kind"] == "lost" for a in db.list_alarms()),
        LOST_AFTER + 5,
        "the lost alarm",
    )
    alarm = next(a for a in db.list_alarms() if a["device_id"] == victim)
    assert alarm["raised_at"] - killed_at <= LOST_AFTER + 5
    page.goto(stack["url"] + "/alarms")
    assert page.locator(f"#alarms tr.alarm-lost[data-device={victim}]").count() == 1
    page.screenshot(path=str(shots / "alarms.png"), full_page=True)

    # A viewer: no command form, and the POST itself is refused.
    page.goto(stack["url"] + "/devices/sim-00007")
    assert page.locator("#command-form").count() == 0
    page.screenshot(path=str(shots / "device-viewer.png"), full_page=True)
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    r = page.request.post(
        stack["url"] + "/devices/sim-00007/command",
        form={"csrf": csrf, "cmd": "ping", "args": "{}"},
        max_redirects=0,
    )
    assert r.status == 403
    page.context.close()

    # An operator sends one; the audit log records who.
    op = _sign_in(browser, stack, "operator")
    op.goto(stack["url"] + "/devices/sim-00007?lang=vi")
    op.select_option("#command-form select[name=cmd]", "ping")
    op.click("#send-command")
    op.wait_for_selector("p.ok[role=status]")
    assert "Đã gửi lệnh" in op.inner_text("p.ok")
    # The kiosk verifies it (the daemon's CommandVerifier) and its signed reply is the outcome.
    cid = op.inner_text("p.ok").rsplit(": ", 1)[1].strip()
    row = op.locator(f"#commands tr[data-command={cid}]")
    deadline = time.monotonic() + 15
    while row.get_attribute("class") != "cmd-ok":
        assert time.monotonic() < deadline, "no reply shown for the command"
        op.wait_for_timeout(250)
        op.reload()
    assert row.locator("td.outcome").inner_text() == "thành công"
    assert row.locator("td.verified").inner_text() == "ok"
    op.screenshot(path=str(shots / "device-operator-vi.png"), full_page=True)
    assert any(
        a["action"] == "command" and a["actor"] == "operator-1" and a["target"] == "sim-00007"
        for a in db.audit_log()
    )
    op.context.close()


def test_job_progress_cancel_and_roles(browser: Any, stack: dict[str, Any]) -> None:
    """A job made as ``fleet jobs create --db`` makes it (the service's store), driven wave by
    wave by the job runner, whose progress the service records from the kiosks' signed reports
    (the runner here never reads them) and the page shows without a reload."""
    db: FleetDB = stack["db"]
    kit: FleetKit = stack["kit"]
    shots: Path = stack["shots"]
    kiosks = [f"sim-{i:05d}" for i in range(100, 200)]
    wait_for(
        lambda: all((db.device(k) or {}).get("state") == "online" for k in kiosks[::33]),
        60,
        "the job's kiosks online",
    )
    store = ServiceJobStore(db, actor="cli:olga")
    expires = int(time.time()) + 600
    job = store.create("command", {"cmd": "ping", "args": {}}, {"devices": kiosks}, kiosks,
                       Rollout(canary=0.1, wave_size=45), expires)  # fmt: skip
    # Kiosks that are not connected: released, they never start, so the job stays running.
    away = [f"away-{i}" for i in range(3)]
    other = store.create("command", {"cmd": "ping", "args": {}}, {"devices": away}, away,
                         Rollout(), expires)  # fmt: skip
    keys = stack["keys"]
    mqtt = FleetMqtt(kit.options(stack["broker_port"])).connect()
    runner = JobRunner(
        store, mqtt, kit.signer("admin"), prefix="kiosk",
        verify=lambda dev, msg: verify_from(keys, dev, msg).ok,
    )  # fmt: skip
    try:
        runner.step(other.id)
        op = _sign_in(browser, stack, "operator")
        op.goto(f"{stack['url']}/jobs/{job.id}")
        assert op.inner_text("#job-progress .ratio") == "0/100"
        op.evaluate("window.__notReloaded = true")
        ratio = "document.querySelector('#job-progress .ratio').textContent"
        for expected in ("10/100", "55/100", "100/100"):  # the canary, then waves of 45
            runner.step(job.id)
            op.wait_for_function(f"{ratio} === '{expected}'", timeout=30_000)
            if expected == "55/100":
                op.screenshot(path=str(shots / "job-progress.png"), full_page=True)
        op.wait_for_function(
            "document.querySelector('#job-state').textContent.startsWith('completed')",
            timeout=15_000,
        )  # completed by the service: every kiosk final, no runner step needed
        assert op.evaluate("window.__notReloaded") is True  # the page refreshed itself
        assert op.inner_text("#job-counts") == "100 succeeded"
        op.screenshot(path=str(shots / "job-completed.png"), full_page=True)
        op.goto(f"{stack['url']}/jobs")
        row = op.locator(f"#jobs tr[data-job={job.id}]")
        assert row.locator("td.done .pct").inner_text() == "100.0 %"
        assert op.locator(f"#jobs tr[data-job={other.id}] td.job-state").inner_text() == "running"
        op.screenshot(path=str(shots / "jobs.png"), full_page=True)
        op.goto(f"{stack['url']}/devices/{kiosks[0]}?lang=vi")
        mine = op.locator(f"#device-jobs tr[data-job={job.id}] td.state")
        assert mine.inner_text() == "thành công"
        op.screenshot(path=str(shots / "device-jobs-vi.png"), full_page=True)

        # A viewer sees no cancel button, and its POST (with its own session's token) is refused.
        viewer = _sign_in(browser, stack, "viewer")
        viewer.goto(f"{stack['url']}/jobs/{other.id}")
        assert viewer.locator("#cancel-form").count() == 0
        viewer.screenshot(path=str(shots / "job-viewer.png"), full_page=True)
        csrf = viewer.locator("input[name=csrf]").first.get_attribute("value")
        r = viewer.request.post(
            f"{stack['url']}/jobs/{other.id}/cancel", form={"csrf": csrf}, max_redirects=0
        )
        assert r.status == 403
        viewer.context.close()
        # A forged form (another site's page cannot know the session's CSRF token).
        r = op.request.post(
            f"{stack['url']}/jobs/{other.id}/cancel", form={"csrf": "forged"}, max_redirects=0
        )
        assert r.status == 403
        assert (store.get(other.id) or job).state == "running"

        op.goto(f"{stack['url']}/jobs/{other.id}")
        op.click("#cancel-job")
        op.wait_for_selector("p.ok[role=status]")
        # (in Vietnamese: the kiosk page above set the language cookie)
        assert op.inner_text("#job-state") == "đã hủy · canceled by operator-1"
        assert op.inner_text("#job-counts") == "3 đã hủy"
        assert op.locator("#cancel-form").count() == 0
        op.screenshot(path=str(shots / "job-canceled.png"), full_page=True)
        assert any(
            a["action"] == "job.cancel" and a["actor"] == "operator-1" and a["target"] == other.id
            for a in db.audit_log()
        )
        op.context.close()
    finally:
        mqtt.close()
