"""Fixtures of the offline-day tests: the central fleet of tests/central."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.central.conftest import Fleet, make_fleet


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return make_fleet(tmp_path)
