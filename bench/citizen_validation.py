"""Citizen-record validations per second at the centre, on one core, against a bare pydantic
parse of the same records measured in the same run.

    .venv/bin/python bench/citizen_validation.py [--n 100000] [--cpu 0] [--bad 0.02]

The batch: ``--n`` fictitious citizens as the centre receives them (JSON objects: ISO dates,
names and addresses with Vietnamese diacritics, one in ten in NFD as some keyboards send them),
a share ``--bad`` of them broken in one of the issue's ways (a number contradicting sex and
birth year, province 999, a birth date in 2099, a six-year-old, an expiry before the issue).

Measured, pinned to one CPU (sched_setaffinity), passes over the whole batch alternating
between the two (so a busy moment of the shared machine hits both), best of ``--passes``:
  baseline   ``Citizen.model_validate`` (appliance/central/citizens.py, pydantic v2) of every
             record: types and shapes only, none of the citizen rules
  validate   ``validate_many`` (appliance/citizen/validation.py): every rule, stage issuance,
             problems collected for the bad records
The run stops with an error unless exactly the broken records are refused.
The target is the issue's: >= 20,000 records/s for a batch of 100,000. Two clocks: CPU time
of the process (``time.process_time``: records per second of one core's work, what the target
means; the time the process waits for the CPU while other jobs run is not counted) and wall
time (includes that wait on a loaded machine).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import random
import time
import unicodedata
from collections.abc import Callable

from _common import emit
from pydantic import ValidationError

from appliance.central.citizens import Citizen
from appliance.citizen.provinces import PROVINCES
from appliance.citizen.validation import card_expiry, validate_many

TODAY = dt.date(2026, 12, 3)
_FAMILY = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi"]
_MIDDLE = {"M": ["Văn", "Đức", "Minh", "Quang", "Hữu"], "F": ["Thị", "Ngọc", "Thu", "Minh"]}
_GIVEN = ["Anh", "Bình", "Dũng", "Hải", "Hạnh", "Lan", "Linh", "Phương", "Thảo", "Tuấn", "Yến"]
_STREETS = ["Trần Hưng Đạo", "Lê Lợi", "Nguyễn Huệ", "Hai Bà Trưng", "Lý Thường Kiệt"]


def make_batch(
    n: int, bad_share: float, seed: int = 7
) -> tuple[list[tuple[str, dict[str, object]]], int]:
    """(the batch, how many of its records were broken on purpose)."""
    rng = random.Random(seed)  # fictitious benchmark data, not security
    codes = sorted(PROVINCES)
    out: list[tuple[str, dict[str, object]]] = []
    broken = 0
    for i in range(n):
        sex = rng.choice("MF")
        # 15..80 years before this year, issued within the last 30 days: 14 or older on issue.
        birth = dt.date(TODAY.year - rng.randint(15, 80), rng.randint(1, 12), rng.randint(1, 28))
        issued = TODAY - dt.timedelta(days=rng.randint(0, 30))
        digit = (0 if birth.year < 2000 else 2) + (sex == "F")
        province = rng.choice(codes)
        name = f"{rng.choice(_FAMILY)} {rng.choice(_MIDDLE[sex])} {rng.choice(_GIVEN)}"
        if i % 10 == 0:
            name = unicodedata.normalize("NFD", name)
        expiry = card_expiry(birth, issued)
        rec: dict[str, object] = {
            "citizen_ref": f"CIT-{i:06d}",
            "personal_id": f"{province}{digit}{birth.year % 100:02d}{rng.randint(0, 999999):06d}",
            "full_name": name,
            "date_of_birth": birth.isoformat(),
            "sex": sex,
            "nationality": "Việt Nam",
            "ethnicity": "Kinh",
            "religion": "Không",
            "place_of_origin": PROVINCES[province],
            "permanent_residence": f"{rng.randint(1, 300)} {rng.choice(_STREETS)}, "
            f"{PROVINCES[province]}",
            "date_of_issue": issued.isoformat(),
            "date_of_expiry": None if expiry is None else expiry.isoformat(),
            "father": f"{name.split()[0]} Văn {rng.choice(_GIVEN)}",
            "mother": f"{rng.choice(_FAMILY)} Thị {rng.choice(_GIVEN)}",
            "old_id_number": f"{rng.randint(0, 999999999):09d}" if rng.random() < 0.5 else None,
        }
        if rng.random() < bad_share:
            broken += 1
            kind = rng.randrange(5)
            if kind == 0:
                rec["sex"] = "F" if sex == "M" else "M"
            elif kind == 1:
                rec["personal_id"] = "999" + str(rec["personal_id"])[3:]
            elif kind == 2:
                rec["date_of_birth"] = "2099-01-01"
            elif kind == 3:
                rec["date_of_birth"] = dt.date(TODAY.year - 6, 5, 5).isoformat()
            else:
                rec["date_of_expiry"] = (issued - dt.timedelta(days=1)).isoformat()
        out.append((str(rec["citizen_ref"]), rec))
    return out, broken


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one call."""
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="records in the batch (100000)")
    ap.add_argument("--cpu", type=int, default=0, help="CPU to pin to (default 0)")
    ap.add_argument("--bad", type=float, default=0.02, help="share of broken records (0.02)")
    ap.add_argument("--passes", type=int, default=3, help="passes of each (default 3)")
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.cpu})

    batch, broken = make_batch(args.n, args.bad)

    def baseline() -> None:
        for _ref, rec in batch:
            with contextlib.suppress(ValidationError):
                Citizen.model_validate(rec)

    counts: dict[str, int] = {}

    def validate() -> None:
        good, bad = validate_many(batch, today=TODAY)
        counts["valid"], counts["refused"] = len(good), len(bad)

    base_cpu = base_wall = ours_cpu = ours_wall = float("inf")
    for _ in range(args.passes):
        c, w = timed(baseline)
        base_cpu, base_wall = min(base_cpu, c), min(base_wall, w)
        c, w = timed(validate)
        ours_cpu, ours_wall = min(ours_cpu, c), min(ours_wall, w)
    base, ours = args.n / base_cpu, args.n / ours_cpu
    if counts["refused"] != broken:
        raise SystemExit(f"{counts['refused']} records refused, {broken} were broken on purpose")
    emit(
        "citizen_validation",
        {
            "cpu": args.cpu,
            "n": args.n,
            "bad_share": args.bad,
            "valid": counts["valid"],
            "refused": counts["refused"],
            "load_average_1min": os.getloadavg()[0],
            "baseline_pydantic_parse_per_cpu_s": round(base),
            "validate_per_cpu_s": round(ours),
            "ratio_baseline_over_validate": round(base / ours, 2),
            "baseline_per_wall_s": round(args.n / base_wall),
            "validate_per_wall_s": round(args.n / ours_wall),
            "target_validate_per_cpu_s": 20_000,
            "target_met": ours >= 20_000,
        },
    )


if __name__ == "__main__":
    main()
