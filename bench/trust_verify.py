"""Signed-command verifications per second on one core, against a bare pynacl Ed25519 verify
measured in the same run.

    .venv/bin/python bench/trust_verify.py [--n 5000] [--cpu 0]

Measured, all pinned to one CPU (sched_setaffinity):
  bare        nacl VerifyKey.verify of one 64-byte signature over an envelope-sized message
  chain       the two signature checks a command needs (certificate + envelope), no parsing
  check_mem   CommandVerifier.check end to end, replay state in an in-memory SQLite database
  check_file  the same on a SQLite file in WAL mode, synchronous=NORMAL (what a kiosk runs)
  check_full  the same with synchronous=FULL (one fsync per accepted command)
The ratio bare/check says how many bare verifications one full check costs; two are
unavoidable (certificate and envelope signatures).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from _common import emit
from nacl.signing import SigningKey

from appliance.trust.certs import FleetRoot, OperatorKey
from appliance.trust.envelope import TRUST_SCHEMA_SQL, CommandVerifier, EnvelopeBuilder
from appliance.trust.keys import CTX_CERTIFICATE, CTX_COMMAND, b64decode, verify_detached

NOW = 1_800_000_000


def rate(n: int, fn: Callable[[int], object]) -> float:
    """Calls per second of fn(i) for i in range(n), best of 3 runs."""
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for i in range(n):
            fn(i)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def make_db(path: str, sync: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    if path != ":memory:":
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={sync}")
    for stmt in TRUST_SCHEMA_SQL:
        conn.execute(stmt)
    return conn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="operations per measurement (default 5000)")
    ap.add_argument("--cpu", type=int, default=0, help="CPU to pin to (default 0)")
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.cpu})

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = FleetRoot.create(tmp / "root")
        sk = SigningKey.generate()
        cert = root.issue(
            bytes(sk.verify_key), roles=["operator"], devices=["kiosk-001"],
            not_after=NOW + 86400, issued_at=NOW - 60, name="bench",
        )  # fmt: skip
        op = OperatorKey(sk, cert)
        payload = b'{"session":"s-0001","slots":[1,2,3,4],"quality_min":40}'
        builder = EnvelopeBuilder(op, clock=lambda: float(NOW))

        def envelopes(n: int) -> list[bytes]:
            return [builder.build("enroll.start", payload, "kiosk-001") for _ in range(n)]

        # Baseline: one bare Ed25519 verification of an envelope-sized message.
        sample = envelopes(1)[0]
        vk = sk.verify_key
        signed = sk.sign(sample)
        bare = rate(args.n, lambda _i: vk.verify(signed.message, signed.signature))

        # The two signature checks alone.
        import json

        env = json.loads(sample)
        body = b64decode(env["body"], what="body")
        sig = b64decode(env["sig"], what="sig")

        def chain(_i: int) -> None:
            verify_detached(root.public_key, CTX_CERTIFICATE, cert.body, cert.signature)
            verify_detached(cert.public_key, CTX_COMMAND, body, sig)

        chain_rate = rate(args.n, chain)

        results: dict[str, float] = {}
        for label, path, sync in (
            ("check_mem", ":memory:", "OFF"),
            ("check_file", str(tmp / "state.db"), "NORMAL"),
            ("check_full", str(tmp / "state_full.db"), "FULL"),
        ):
            conn = make_db(path, sync)
            verifier = CommandVerifier(
                roots=[root.public_key], device_id="kiosk-001",
                role_table={"enroll.start": "operator"}, conn=conn, lock=threading.Lock(),
                clock=lambda: float(NOW),
            )  # fmt: skip
            n = args.n if sync != "FULL" else max(200, args.n // 10)
            batches = [envelopes(n) for _ in range(3)]
            best = 0.0
            for batch in batches:
                t0 = time.perf_counter()
                for msg in batch:
                    d = verifier.check(msg)
                    if not d.accepted:
                        raise SystemExit(f"benchmark envelope refused: {d.code} {d.reason}")
                best = max(best, len(batch) / (time.perf_counter() - t0))
            results[label] = best
            conn.close()

    emit(
        "trust_verify",
        {
            "cpu": args.cpu,
            "n": args.n,
            "bare_verify_per_s": round(bare),
            "chain_two_verifies_per_s": round(chain_rate),
            "check_mem_per_s": round(results["check_mem"]),
            "check_file_normal_per_s": round(results["check_file"]),
            "check_file_full_per_s": round(results["check_full"]),
            "ratio_bare_over_check_mem": round(bare / results["check_mem"], 2),
            "ratio_bare_over_check_file": round(bare / results["check_file"], 2),
            "ratio_bare_over_check_full": round(bare / results["check_full"], 2),
            "target_check_file_per_s": 1000,
            "target_met": results["check_file"] >= 1000,
        },
    )


if __name__ == "__main__":
    main()
