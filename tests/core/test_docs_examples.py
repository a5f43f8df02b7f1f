"""Data examples in the docs are valid input: a reader who copies one gets no refusal."""

from __future__ import annotations

import re
from pathlib import Path

from appliance.central.citizens import load_citizens
from tests.helpers import ROOT

JSON_BLOCK = re.compile(r"```json\n(.*?)```", re.S)


def test_central_md_citizens_file_example_loads(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "central.md").read_text(encoding="utf-8")
    section = text.split("Citizens file (`--citizens`)", 1)[1]
    block = JSON_BLOCK.search(section)
    assert block is not None, "no JSON example after 'Citizens file (`--citizens`)'"
    path = tmp_path / "citizens.json"
    path.write_text(block.group(1), encoding="utf-8")
    citizens = load_citizens(path)  # raises ConfigError naming each bad REF.field
    assert list(citizens) == ["CIT-0001"]
    assert citizens["CIT-0001"].full_name == "Nguyễn Thị Mai"
