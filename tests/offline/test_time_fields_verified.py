"""The centre checks the shape of a package's time fields (docs/enrollment.md "Time")."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.central.testkit import build_package, standard_records
from appliance.central.verify import verify_package
from appliance.errors import TrustError
from tests.central.conftest import DEVICE, Fleet

T0 = 1_800_000_000.0
TIME = {
    "time_source": "signed_centre",
    "time_floor": T0,
    "time_anchor": {"source": "signed_centre", "wall": T0 - 9, "monotonic": 7.0, "boot_id": "b"},
    "finished_at": T0,
}


def _verify(fleet: Fleet, change: dict[str, Any]) -> Any:
    built = build_package(
        fleet.kiosk,
        fleet.enrollment.public_key,
        device=DEVICE,
        records=standard_records((2,)),
        tamper_manifest=lambda m: m.update({**TIME, **change}),
    )
    return verify_package(
        built.data,
        device_id=DEVICE,
        device_public_key=fleet.kiosk.public_key,
        enrollment_key=fleet.enrollment,
    )


def test_well_formed_time_fields_pass(fleet: Fleet) -> None:
    v = _verify(fleet, {})
    assert v.manifest.model_dump()["time_source"] == "signed_centre"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"time_source": "wristwatch"}, "time_source"),
        ({"time_anchor": {"source": "ntp"}}, "time_anchor.wall"),
        ({"finished_at": T0 - 3600}, "finished_at"),
    ],
)
def test_malformed_time_fields_are_refused_naming_the_field(
    fleet: Fleet, change: dict[str, Any], field: str
) -> None:
    with pytest.raises(TrustError) as info:
        _verify(fleet, change)
    assert info.value.code == "package_malformed"
    assert info.value.details["field"] == field
