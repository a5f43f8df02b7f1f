"""The outbox's costs as the queue grows (issue 19): the cost of one durable event write
with 0, 10,000 and 100,000 events queued, against the cost at 0 measured in the same run; the
store's file size when empty, with the queue full and after the queue was drained.

    .venv/bin/python bench/core_queue.py [--depths 0,10000,100000] [--writes 300] [--rounds 5]

Each depth has its own store (``synchronous=FULL``, as the daemon's); the writes alternate
between the stores in rounds so machine noise hits every depth alike, and the events written
are acknowledged after each round so the depth stays where it was. Also measured in the same
run: ``SELECT count(*) FROM outbox`` at each depth, which the previous version ran on every
event write (now a counter kept by triggers). The drain acknowledges 200 rows at a time in
ranges, as the agent does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, emit

sys.path.insert(0, str(ROOT))

from appliance.store import Store

EVENT = {"kind": "bench", "text": "x" * 200}


def fill(s: Store, n: int) -> None:
    for i in range(0, n, 1000):
        s.outbox.put_many(
            [
                ("bench", "kiosk/b/events/bench", {**EVENT, "n": k})
                for k in range(i, min(n, i + 1000))
            ]
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--depths", default="0,10000,100000")
    ap.add_argument("--writes", type=int, default=300, help="event writes per depth per round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        stores: dict[int, Store] = {}
        for d in depths:
            stores[d] = Store(work / f"d{d}")
            fill(stores[d], d)
        samples: dict[int, list[float]] = {d: [] for d in depths}
        count_ms: dict[int, list[float]] = {d: [] for d in depths}
        for _ in range(args.rounds):
            for d in depths:
                s = stores[d]
                written = []
                for _ in range(args.writes):
                    t0 = time.perf_counter()
                    seq, _eid = s.outbox.put("bench", "kiosk/b/events/bench", EVENT)
                    samples[d].append(time.perf_counter() - t0)
                    written.append(seq)
                for _ in range(20):
                    t0 = time.perf_counter()
                    with s.lock:
                        s.conn.execute("SELECT count(*) FROM outbox").fetchone()
                    count_ms[d].append(time.perf_counter() - t0)
                s.outbox.ack(written)
        writes = {
            d: {
                "p50_ms": round(statistics.median(v) * 1000, 3),
                "mean_ms": round(statistics.fmean(v) * 1000, 3),
                "count_star_previously_ms": round(statistics.median(count_ms[d]) * 1000, 3),
                "depth_after": stores[d].outbox.depth(),
            }
            for d, v in samples.items()
        }
        base = writes[depths[0]]["p50_ms"]
        for d in depths:
            writes[d]["ratio_vs_0"] = round(writes[d]["p50_ms"] / base, 2)
        # --- file size: empty, full, drained -------------------------------------------------
        for s in stores.values():
            s.close()
        empty = Store(work / "empty")
        empty_size = empty.size_bytes()
        empty.close()
        big = max(depths)
        s = Store(work / f"d{big}")
        full_size = s.size_bytes()
        t0 = time.perf_counter()
        drained = 0
        while rows := s.outbox.pending(0, 200):
            drained += s.outbox.ack(r.seq for r in rows)
        drain_s = time.perf_counter() - t0
        after = s.size_bytes()
        s.close()
    top = writes[big]["ratio_vs_0"]
    emit(
        "core_queue",
        {
            "event_write": {str(d): w for d, w in writes.items()},
            "file_bytes": {
                "empty_store": empty_size,
                f"with_{big}_queued": full_size,
                "after_drain": after,
                "ratio_after_drain_vs_empty": round(after / empty_size, 2),
            },
            "drained_rows": drained,
            "drain_store_only_s": round(drain_s, 2),
            "targets": "write at 100k <= 1.2x write at 0; file after drain <= 2x empty store",
            "met": top <= 1.2 and after <= 2 * empty_size,
        },
    )


if __name__ == "__main__":
    main()
