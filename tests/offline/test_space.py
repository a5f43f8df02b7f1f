"""Disk space first: an enrollment whose worst case would not fit is refused before anything is
written, naming the bytes needed and free."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.biometrics import finger_record
from appliance.central.testkit import finger_record as make_finger_record
from appliance.central.testkit import portrait_record
from appliance.enrollment.space import DEFAULT_RESERVE, check_room, free_bytes, worst_case
from appliance.errors import StoreError


def test_worst_case_covers_real_records_and_counts_every_part() -> None:
    est = worst_case(width=640, height=480)
    assert est.portrait >= len(portrait_record(1, (480, 640)))
    one_finger = est.fingers // 10
    assert one_finger >= len(make_finger_record(2))
    assert finger_record.decode(make_finger_record(2)).views  # a real ISO record was measured
    # the package copies the sealed records once more
    assert est.package > est.portrait + est.fingers
    assert est.total == sum(v for k, v in est.as_dict().items() if k != "total")
    assert est.reserve == DEFAULT_RESERVE
    assert worst_case(width=1920, height=1080).total > est.total


def test_enough_room_passes_and_reports_the_figures(tmp_path: Path) -> None:
    est = worst_case(reserve=0)
    out = check_room(tmp_path, est, free=lambda _p: est.total)
    assert out == {"needed_bytes": est.total, "free_bytes": est.total}
    # the real file system of the test directory answers too
    assert free_bytes(tmp_path) > 0


def test_a_nearly_full_disk_is_refused_with_the_bytes_needed_and_free(tmp_path: Path) -> None:
    est = worst_case()
    with pytest.raises(StoreError) as info:
        check_room(tmp_path, est, free=lambda _p: est.total - 1)
    err = info.value
    assert err.code == "no_room" and err.retryable
    assert err.details["needed_bytes"] == est.total
    assert err.details["free_bytes"] == est.total - 1
    assert err.details["path"] == str(tmp_path)
    assert "bytes needed" in err.message
