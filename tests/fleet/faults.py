"""Helpers of the fault-injection runs (tests/fleet/test_faults.py, bench/fleet_faults.py): a
local producer writing into a daemon's outbox, and the delivery check at the controller."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from appliance.fleet.ingest import Ingest
from appliance.store import Store


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
