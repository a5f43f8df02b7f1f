"""Fuzzing configuration files: whatever a technician (or a corrupted SD card) puts in the
file, ``check_file`` answers with a list of ``(field, reason)`` problems, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from appliance.config import AppConfig, check_file
from tests.helpers import ROOT

from ._strategies import FUZZ, FUZZ_SLOW

SECTIONS = {
    name: sorted(field.annotation.model_fields)  # type: ignore[union-attr]
    for name, field in AppConfig.model_fields.items()
    if hasattr(field.annotation, "model_fields")
}


def _toml_str(s: str) -> str:
    # JSON escapes U+0000-U+001F like TOML; TOML also forbids a raw DEL (TOML 1.0 "String").
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(v: Any) -> str:
    """A TOML literal for a JSON-ish value (strings via JSON escapes, which TOML shares)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_str(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


toml_scalars = (
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def config_documents(draw: st.DrawFn) -> str:
    """Mostly-plausible TOML: known sections and keys with arbitrary values, some unknown."""
    lines = []
    for section in draw(st.lists(st.sampled_from([*SECTIONS, "bogus"]), max_size=4, unique=True)):
        keys = SECTIONS.get(section, ["x"])
        lines.append(f"[{section}]")
        for key in draw(st.lists(st.sampled_from([*keys, "typo_key"]), max_size=4, unique=True)):
            lines.append(f"{key} = {toml_value(draw(toml_values))}")
    return "\n".join(lines) + "\n"


def _assert_problems(problems: list[tuple[str, str]]) -> None:
    assert isinstance(problems, list)
    for where, why in problems:
        assert isinstance(where, str) and where
        assert isinstance(why, str) and why


@FUZZ
@given(doc=config_documents())
def test_plausible_documents_are_validated_not_crashed(tmp_path: Path, doc: str) -> None:
    path = tmp_path / "appliance.toml"
    path.write_text(doc)
    tomllib.loads(doc)  # the generator writes valid TOML: the fuzzing is of our validation
    problems = check_file(path)
    _assert_problems(problems)
    if "typo_key" in doc or "[bogus]" in doc:
        assert problems, "unknown keys must never be accepted silently"


@FUZZ
@given(raw=st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_arbitrary_bytes_are_a_clear_problem(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "appliance.toml"
    path.write_bytes(raw)
    _assert_problems(check_file(path))


@FUZZ_SLOW
@given(
    key=st.sampled_from(
        ["device.id", "device.profile", "mqtt.port", "mqtt.topic_prefix", "device.groups"]
    ),
    value=toml_values,
)
def test_single_field_values(tmp_path: Path, key: str, value: Any) -> None:
    section, field = key.split(".")
    path = tmp_path / "appliance.toml"
    path.write_text(f"[{section}]\n{field} = {toml_value(value)}\n")
    problems = check_file(path)
    _assert_problems(problems)
    assert all(" " not in where for where, _ in problems)


def test_cli_check_reports_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[mqtt]\nport = "\xff\xfe"\n[device]\nid = 7\n')
    out = subprocess.run(
        [sys.executable, "-m", "appliance", "config", "check", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2, out
    assert "Traceback" not in out.stdout + out.stderr


@FUZZ
@given(text=st.text(max_size=400))
def test_arbitrary_utf8_text_is_a_clear_problem(tmp_path: Path, text: str) -> None:
    path = tmp_path / "appliance.toml"
    path.write_text(text)
    _assert_problems(check_file(path))
