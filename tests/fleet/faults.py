"""Helpers of the fault-injection runs (tests/fleet/test_faults.py, bench/fleet_faults.py): a
local producer writing into a daemon's outbox, and the delivery check at the controller."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.devtools.broker import Mosquitto
from appliance.fleet.ingest import Ingest
from appliance.store import Store
from tests.helpers import DaemonProcess, wait_for

from .faultproxy import FaultProxy


class Producer:
    """Writes batches of events into the daemon's outbox (as a kiosk UI process would)."""

    def __init__(self, state_dir: Path, device: str) -> None:
        self.state_dir = state_dir
        self.topic = f"kiosk/{device}/events/ui.tap"
        self.stored: dict[str, tuple[int, int]] = {}  # event id -> (seq, n)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> Producer:
        self._thread.start()
        return self

    def _run(self) -> None:
        store = Store(self.state_dir)
        n = 0
        try:
            while not self._stop.is_set():
                batch = [("ui.tap", self.topic, {"n": n + i}) for i in range(10)]
                for i, (seq, eid) in enumerate(store.outbox.put_many(batch)):
                    self.stored[eid] = (seq, n + i)
                n += 10
                self._stop.wait(0.01)
        except BaseException as exc:  # surfaced by stop()
            self.error = exc
        finally:
            store.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        if self.error is not None:
            raise self.error


def check_delivery(stored: dict[str, tuple[int, int]], ingest: Ingest) -> dict[str, Any]:
    """Lost, corrupted and content-duplicated events between the outbox and the controller."""
    seen = ingest.snapshot()
    lost = [eid for eid in stored if eid not in seen.payloads]
    corrupted = [
        eid
        for eid, (seq, n) in stored.items()
        if eid in seen.payloads
        and (seen.payloads[eid].get("seq") != seq or seen.payloads[eid].get("data") != {"n": n})
    ]
    ns = [p["data"].get("n") for p in seen.payloads.values()]
    return {
        "stored": len(stored),
        "lost": len(lost),
        "corrupted": len(corrupted),
        "duplicated_after_dedupe": len(ns) - len(set(ns)),
        "resent_copies_dropped_by_id": seen.duplicates,
        "unknown": len(set(seen.payloads) - set(stored)),
    }


@dataclass
class Rig:
    broker: Mosquitto
    proxy: FaultProxy
    ingest: Ingest
    daemon: DaemonProcess
    producer: Producer

    def delivered(self) -> int:
        return len(self.ingest.snapshot().payloads)

    def inject(self, fault: str) -> None:
        """One fault, held while the producer writes 50 more events."""
        progress = self.delivered()
        wait_for(lambda: self.delivered() >= progress + 50, 20, f"delivery before {fault}")
        written = len(self.producer.stored)
        if fault in ("broker_kill", "broker_restart"):
            subacks = self.ingest.subacks
            if fault == "broker_kill":
                self.broker.kill()
            else:
                self.broker.stop()
            # Keep the daemon away until the controller is subscribed again, else events
            # published meanwhile would reach a broker with no subscriber for them.
            self.proxy.set_mode("refuse")
            self.broker.start()
            wait_for(lambda: self.ingest.subacks > subacks, 20, "the ingest resubscribed")
        else:
            self.proxy.set_mode("refuse" if fault == "cut" else "blackhole")
        wait_for(lambda: len(self.producer.stored) >= written + 50, 20, "writes meanwhile")
        self.proxy.heal()

    def finish(self, *, expect_all: bool) -> dict[str, object]:
        self.producer.stop()
        if expect_all:
            wait_for(
                lambda: check_delivery(self.producer.stored, self.ingest)["lost"] == 0,
                30,
                "every stored event delivered",
            )
        store = Store(self.daemon.state_dir)
        try:
            wait_for(lambda: store.outbox.depth() == 0, 30, "the outbox drained")
            assert store.integrity_check() == "ok"
        finally:
            store.close()
        # The last event is delivered: whatever is missing now is missing for good.
        last = max(seq for seq, _n in self.producer.stored.values())
        wait_for(
            lambda: last in self.ingest.snapshot().seqs.get(self.daemon.device_id, set()),
            30,
            "the last event",
        )
        assert self.daemon.proc is not None and self.daemon.proc.poll() is None
        return check_delivery(self.producer.stored, self.ingest)
