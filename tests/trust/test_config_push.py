"""Signed desired configuration through the real daemon and broker: applied after a trial,
rejected when invalid or wrongly signed, rolled back when the trial fails."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.devtools.broker import Mosquitto, free_port
from appliance.devtools.controller import Controller
from appliance.store import Store
from appliance.trust.certs import ROOT_PUB_FILE, FleetRoot
from appliance.trust.configdoc import sign_config
from tests.helpers import DaemonProcess, get_json, wait_online
from tests.trust.fleet import live_key

DEV = "kiosk-cfg"


def test_push_apply_reject_and_roll_back(
    broker: Mosquitto,
    controller: Controller,
    daemon_factory: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> None:
    root = FleetRoot.create(tmp_path / "fleet")
    admin, operator = live_key(root, ("admin",), DEV), live_key(root, ("operator",), DEV)
    d = daemon_factory(broker, DEV, dev=True)  # unsigned reads by the test's controller
    d.config_path.write_text(
        d.config_path.read_text()
        + f'[trust]\nroot_keys = ["{tmp_path / "fleet" / ROOT_PUB_FILE}"]\n'
        + "[config_push]\ntrial_timeout_s = 3\n"
    )
    reported = controller.subscribe(f"kiosk/{DEV}/config/reported")
    t0 = time.time()
    d.start()
    wait_online(controller, DEV, after=t0)
    pid = d.proc.pid  # type: ignore[union-attr]
    desired = f"kiosk/{DEV}/config/desired"

    def push(doc: bytes) -> None:
        controller.publish(desired, doc, retain=True)

    def outcome(version: int, status: str) -> dict[str, Any]:
        return get_json(reported, 30, lambda m: m["version"] == version and m["status"] == status)

    # 1. a good document: applied after the restart and trial, same process id (exec)
    push(sign_config(b"[telemetry]\nheartbeat_s = 7\n", key=admin, version=1, target=DEV))
    outcome(1, "applying")
    outcome(1, "trial")
    applied = outcome(1, "applied")
    assert applied["applied_version"] == 1
    cfg = controller.request(DEV, "config.get", {"section": "telemetry"})["result"]["config"]
    assert cfg["heartbeat_s"] == 7
    assert d.proc.pid == pid and d.proc.poll() is None  # type: ignore[union-attr]

    # 2. an invalid document: rejected with the field named, nothing changes
    push(sign_config(b"[telemetry]\nheartbeat = 7\n", key=admin, version=2, target=DEV))
    rejected = outcome(2, "rejected")
    assert any("telemetry.heartbeat: unknown key" in p for p in rejected["problems"])

    # 3. signed by an operator, not an admin
    push(sign_config(b"[telemetry]\nheartbeat_s = 9\n", key=operator, version=3, target=DEV))
    assert outcome(3, "rejected")["reason"].startswith("forbidden_role")

    # 4. a document whose broker is unreachable: the trial fails and the kiosk rolls back
    dead = free_port()
    push(sign_config(f"[mqtt]\nport = {dead}\n".encode(), key=admin, version=4, target=DEV))
    outcome(4, "applying")
    rolled = outcome(4, "rolled_back")
    assert f"{dead} unreachable" in rolled["reason"]
    assert rolled["applied_version"] == 1
    cfg = controller.request(DEV, "config.get")["result"]["config"]
    assert cfg["mqtt"]["port"] == broker.port and cfg["telemetry"]["heartbeat_s"] == 7

    # 5. an old version re-delivered (the retained message) is ignored, not re-applied
    push(sign_config(b"[telemetry]\nheartbeat_s = 8\n", key=admin, version=1, target=DEV))
    assert controller.request(DEV, "ping")["ok"]
    controller.publish(desired, b"", retain=True)  # clear the retained document
    assert d.terminate() == 0
    store = Store(d.state_dir)
    history = [
        r[0]
        for r in store.conn.execute("SELECT status FROM config_history ORDER BY version").fetchall()
    ]
    store.close()
    assert history == [
        "applying",
        "trial",
        "applied",
        "rejected",
        "rejected",
        "applying",
        "trial",
        "rolled_back",
    ]
