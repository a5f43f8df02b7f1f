"""A directory batch for a day offline: what it costs per citizen at the centre (validate and
sign the chunks) and on the kiosk (verify every chunk, validate every record, store), against
the baseline measured in the same run: one signed lookup answer per citizen (sign at the
centre, verify and validate on the kiosk), which is what the batch replaces.

    .venv/bin/python bench/citizen_batch.py [--n 10000] [--lookups 500] [--cpu 0]

No broker: the chunks and answers go from the directory's core to the kiosk's client in
process, with real keys (a throw-away FleetKit), real signatures and the real SQLite stores.
Writes bench/results/citizen_batch.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import tempfile
import time
from pathlib import Path

from _common import emit

from appliance.central.citizens import synthetic_citizen
from appliance.central.directory import DirectoryCore, DirectoryStore
from appliance.citizen.batch import CitizenBatch
from appliance.citizen.lookup import LookupClient
from appliance.devtools.fleetkit import FleetKit
from appliance.trust.keys import load_public_key

DEV = "kiosk-bench-batch"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="citizens in the batch (10000)")
    ap.add_argument("--lookups", type=int, default=500, help="baseline lookups (500)")
    ap.add_argument("--cpu", type=int, default=0, help="CPU to pin to (default 0)")
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    kit = FleetKit(tmp / "kit").create()
    store = DirectoryStore(tmp / "directory.sqlite")
    today = dt.date.today()
    people = {f"CIT-{i:06d}": synthetic_citizen(f"CIT-{i:06d}", today=today) for i in range(args.n)}
    store.load(people)
    numbers = [c.personal_id for c in people.values()]
    store.create_batch("bench", numbers=numbers, valid_s=3600)

    box: list[LookupClient] = []
    chunks: list[bytes] = []

    def to_kiosk(_t: str, payload: bytes, _c: bytes | None) -> bool:
        chunks.append(payload)
        box[0].on_message(box[0].response_topic, payload)
        return True

    core = DirectoryCore(store, kit.signer("directory"), to_kiosk)

    def to_directory(topic: str, body: bytes, rt: str, corr: bytes) -> bool:
        core.handle(topic, body, response_topic_=rt, correlation_data=corr)
        return True

    client = LookupClient(
        prefix="kiosk",
        device_id=DEV,
        publish=to_directory,
        roots=[load_public_key(kit.root_pub)],
        batch=CitizenBatch(tmp / "kiosk", now=time.time),
    )
    (tmp / "kiosk").mkdir()
    box.append(client)

    # baseline: one signed lookup answer per citizen, round trip in process
    sample = random.Random(1).sample(numbers, min(args.lookups, len(numbers)))
    c0 = time.process_time()
    for number in sample:
        assert client.lookup(number, timeout_s=5).status == "found"
    per_lookup = (time.process_time() - c0) / len(sample)

    # the batch: centre signs the chunks, kiosk verifies and stores them
    chunks.clear()
    c0 = time.process_time()
    summary = client.fetch_batch("bench", timeout_s=600)
    batch_cpu = time.process_time() - c0
    assert summary["total"] == args.n
    per_record = batch_cpu / args.n
    emit(
        "citizen_batch",
        {
            "n": args.n,
            "cpu": args.cpu,
            "load_average_1min": os.getloadavg()[0],
            "chunks": len(chunks),
            "bytes_on_the_wire": sum(map(len, chunks)),
            "largest_chunk_bytes": max(map(len, chunks)),
            "stored_bytes": (tmp / "kiosk" / "citizen-batch.json").stat().st_size,
            "baseline_lookup_cpu_ms_per_citizen": round(per_lookup * 1000, 3),
            "batch_cpu_ms_per_citizen": round(per_record * 1000, 3),
            "batch_cpu_s_total": round(batch_cpu, 2),
            "ratio_lookup_over_batch": round(per_lookup / per_record, 1),
        },
    )


if __name__ == "__main__":
    main()
