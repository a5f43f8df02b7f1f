"""``appliance fleet controller --ack`` (a real process) with a REAL provisioned daemon in
``mqtt.delivery = "end_to_end"`` on a real mosquitto: every event the controller writes to its
file is acknowledged with the ``ingest`` certificate, and only then leaves the kiosk's outbox;
without the certificate the controller refuses to start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from appliance.devtools.broker import Mosquitto
from appliance.fleet.ingest import Ingest
from appliance.store import Store
from appliance.trust.certs import ROOT_PUB_FILE, FleetRoot
from tests.fleet_tools.test_tools_daemon import issue
from tests.helpers import ROOT, DaemonProcess, wait_for

DEV = "kiosk-ack1"


def controller(broker: Mosquitto, home: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "appliance.fleet.controllercli", "--home", str(home),
         "--host", broker.host, "--port", str(broker.port), "--group", "g-ack",
         "--instance", "ack-a", "--out", str(out), "--no-status", "--timeout", "60", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip


def recorded(out: Path) -> set[str]:
    if not out.exists():
        return set()
    return {json.loads(x)["id"] for x in out.read_text().splitlines() if x.endswith("}")}


def put(d: DaemonProcess, n: int) -> set[str]:
    store = Store(d.state_dir)
    try:
        rows = store.outbox.put_many(
            [("note", f"kiosk/{DEV}/events/note", {"n": i}) for i in range(n)]
        )
        return {eid for _seq, eid in rows}
    finally:
        store.close()


def depth(d: DaemonProcess) -> int:
    store = Store(d.state_dir)
    try:
        return store.outbox.depth()
    finally:
        store.close()


def test_controller_acknowledges_what_it_recorded(broker: Mosquitto, tmp_path: Path) -> None:
    home = tmp_path / "home"
    FleetRoot.create(home)
    d = DaemonProcess(
        tmp_path / "kiosk",
        broker,
        DEV,
        extra_toml="[commands]\nallow_unsigned = false\n"
        f'[trust]\nroot_keys = ["{home / ROOT_PUB_FILE}"]\n',
        env={"APPLIANCE_MQTT__DELIVERY": "end_to_end", "APPLIANCE_MQTT__DELIVERY_RESEND_S": "1"},
    )
    out = tmp_path / "events.jsonl"
    # No ingest certificate yet: a clear refusal, nothing started.
    p = controller(broker, home, out, "--ack")
    _o, err = p.communicate(timeout=30)
    assert p.returncode == 1 and "key_missing" in err and "--signer" in err, err
    issue(home, "ingest", ["ingest"], devices=[DEV])
    d.start()
    p = controller(broker, home, out, "--ack")
    try:
        assert p.stderr is not None
        assert "in group g-ack" in p.stderr.readline()
        first = put(d, 30)
        wait_for(lambda: first <= recorded(out), 30, "the events recorded")
        wait_for(lambda: depth(d) == 0, 30, "the outbox emptied by the acknowledgements")
    finally:
        p.terminate()
        _o, err = p.communicate(timeout=20)
    assert "acknowledged" in err, err
    # While no acknowledging controller runs, the kiosk keeps its events: delivered to a
    # watcher that does not acknowledge, still in the outbox.
    watcher = Ingest(broker.host, broker.port, client_id="ack-watch", keep_payloads=True).start()
    try:
        second = put(d, 10)
        wait_for(lambda: second <= set(watcher.snapshot().payloads), 30, "the events delivered")
    finally:
        watcher.stop()
    assert depth(d) == 10
    p = controller(broker, home, out, "--ack")
    try:
        wait_for(lambda: second <= recorded(out), 30, "the later events recorded")
        wait_for(lambda: depth(d) == 0, 30, "acknowledged after the restart")
    finally:
        p.terminate()
        p.communicate(timeout=20)
        d.terminate()
    assert "outbox acknowledgement refused" not in d.log()
