"""Duplicates after a crash are bounded (issue 12 point 8; the long loop is
bench/fleet_kill_loop.py): the REAL daemon, provisioned (signed commands only, device-signed
events) with end-to-end delivery, is killed with ``kill -9`` three times, each time after the
broker delivered every event written so far. Its ingest does not acknowledge anything, so every
row stays in the outbox; before the fix each restart sent the whole backlog again. Now a restart
re-sends at most the in-flight window (``mqtt.max_inflight``): the rows whose PUBACK was not yet
on disk. Nothing is lost."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from appliance.devtools.broker import Mosquitto
from appliance.fleet.ingest import Ingest
from appliance.store import Store
from appliance.trust.certs import ROOT_PUB_FILE, FleetRoot
from tests.helpers import DaemonProcess, wait_for

WINDOW = 8
BATCH = 120
KILLS = 3


def _put(state_dir: Path, device: str, n: int, start: int) -> set[str]:
    store = Store(state_dir)
    try:
        rows = store.outbox.put_many(
            [("ui.tap", f"kiosk/{device}/events/ui.tap", {"n": start + i}) for i in range(n)]
        )
    finally:
        store.close()
    return {eid for _seq, eid in rows}


def test_a_restart_resends_at_most_the_inflight_window(
    broker: Mosquitto, daemon_factory: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    dev = "kiosk-killbound"
    FleetRoot.create(tmp_path / "fleet")
    d = daemon_factory(
        broker,
        dev,
        env={
            "APPLIANCE_MQTT__DELIVERY": "end_to_end",
            "APPLIANCE_MQTT__MAX_INFLIGHT": str(WINDOW),
        },
    )
    d.config_path.write_text(
        d.config_path.read_text() + "[commands]\nallow_unsigned = false\n"
        f'[trust]\nroot_keys = ["{tmp_path / "fleet" / ROOT_PUB_FILE}"]\n'
    )
    ingest = Ingest(broker.host, broker.port, client_id="killbound", keep_payloads=True).start()
    stored: set[str] = set()
    per_restart: list[int] = []
    try:
        for k in range(KILLS + 1):
            births = len(ingest.snapshot().births)
            dups_before = ingest.snapshot().duplicates
            d.start()
            wait_for(lambda b=births: len(ingest.snapshot().births) > b, 30, "the birth")
            # What a restart sends again precedes the new batch on the one connection (seq
            # order), so once the whole batch arrived, every re-send of this restart did.
            batch = _put(d.state_dir, dev, BATCH, k * BATCH)
            stored |= batch
            wait_for(lambda s=stored: s <= set(ingest.snapshot().payloads), 30, "every event")
            if k:
                per_restart.append(ingest.snapshot().duplicates - dups_before)
            if k < KILLS:
                d.kill9()
        seen = ingest.snapshot()
        assert stored <= set(seen.payloads), "lost events"
        assert all(n <= WINDOW for n in per_restart), (per_restart, WINDOW)
        assert seen.duplicates <= KILLS * WINDOW, (seen.duplicates, per_restart)
        assert "not sending them again" in d.log()
    finally:
        ingest.stop()
        if d.proc is not None and d.proc.poll() is None:
            d.terminate()
