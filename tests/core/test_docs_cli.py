"""Every ``appliance ...`` command that README.md and docs/*.md name exists (issue 12, point 6).

Each invocation in a fenced code block or an inline code span is reduced to its command path
(the sub-command words before the first option or argument) and run as
``<venv>/bin/appliance PATH --help`` through the installed console script: exit 0, or the
docs name a command the CLI does not have. The negative cases feed made-up documentation
through the same extraction and reduction and expect the run to fail."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.cli import build_parser
from tests.helpers import ROOT

CONSOLE_SCRIPT = Path(sys.executable).parent / "appliance"

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE = re.compile(r"`([^`\n]+)`")
# `appliance` in command position: start of a line or after a shell operator, optionally
# behind `$ `, `sudo`, environment assignments, a path (/opt/appliance/.venv/bin/appliance)
# or `python -m`.
COMMAND = re.compile(
    r"(?:^|&&|\|\||;|\||\$\()\s*(?:\$\s+)?(?:sudo\s+(?:-u\s+\S+\s+)?)?(?:[A-Z_][A-Z0-9_]*=\S*\s+)*"
    r"(?:\S*/)?(?:\S*python3?\s+-m\s+)?appliance(?:\s+(?P<rest>.*)|\s*$)"
)
WORD = re.compile(r"[a-z][a-z0-9-]*")


def _logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined."""
    return text.replace("\\\n", " ").splitlines()


def invocations(markdown: str) -> list[str]:
    """The text after ``appliance`` of every invocation in code blocks and inline code."""
    found: list[str] = []
    in_block = False
    for line in _logical_lines(markdown):
        if FENCE.match(line):
            in_block = not in_block
            continue
        candidates = [line] if in_block else INLINE.findall(line)
        for text in candidates:
            m = COMMAND.search(text.strip())
            if m:
                found.append((m.group("rest") or "").split("#", 1)[0].strip())
    return found


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return None


def command_path(rest: str) -> list[str]:
    """The sub-command words of one invocation: walk the CLI's parser tree while the current
    command has sub-commands and the next word is a bare word. A word that is not one of them
    stays in the path (so the --help run fails), an option, placeholder or argument ends it."""
    words = rest.split()
    node = build_parser(words)  # selects the lazily imported plugin the words name
    path: list[str] = []
    for word in words:
        choices = _subcommands(node)
        if choices is None or not WORD.fullmatch(word):
            break
        path.append(word)
        if word not in choices:
            break
        node = choices[word]
    return path


def command_paths(markdown: str) -> set[tuple[str, ...]]:
    """Every command path, with `a / b / c` alternatives expanded
    (`fleet keys init / issue-operator / show` names three commands)."""
    paths: set[tuple[str, ...]] = set()
    for rest in invocations(markdown):
        first, *alternatives = rest.split(" / ")
        base = command_path(first)
        paths.add(tuple(base))
        for alt in alternatives:
            word = alt.split()[0] if alt.split() else ""
            if base and WORD.fullmatch(word):
                paths.add(tuple(command_path(" ".join([*base[:-1], word]))))
    return paths


def documented_paths() -> list[tuple[str, ...]]:
    paths: set[tuple[str, ...]] = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        paths |= command_paths(doc.read_text())
    return sorted(paths)


def run_help(path: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *path, "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


DOCUMENTED = documented_paths()


def test_the_docs_name_the_commands_this_test_checks() -> None:
    """The extraction finds what the docs are known to name (a regex that silently matched
    nothing would make every other case here vacuous)."""
    assert CONSOLE_SCRIPT.exists(), f"the console script is not installed: {CONSOLE_SCRIPT}"
    for expected in [
        ("run",),
        ("config", "check"),
        ("selftest",),
        ("provision",),
        ("fleet", "receive"),
        ("fleet", "enroll"),
        ("fleet", "issue"),
        ("fleet", "sim"),
        ("fleet", "keys", "init"),
        ("fleet", "keys", "issue-operator"),
        ("fleet", "push-config"),
        ("sim", "fingerprint"),
    ]:
        assert expected in DOCUMENTED, (expected, DOCUMENTED)


@pytest.mark.parametrize("path", DOCUMENTED, ids=lambda p: " ".join(p) or "(bare)")
def test_every_documented_command_exists(path: tuple[str, ...]) -> None:
    r = run_help(path)
    assert r.returncode == 0, f"`appliance {' '.join(path)}` named in the docs: {r.stderr}"
    assert "usage: appliance" in r.stdout


@pytest.mark.parametrize(
    "doc",
    [
        "Start the receiver with `appliance fleet frobnicate --home DIR`.",
        "```sh\n$ sudo appliance selfcheck --json\n```",
        "```console\nappliance fleet keys rotate \\\n    --home ~/.appliance-fleet\n```",
        "`appliance sim scanner`",
        "| tools | `appliance fleet receive / ingest / issue` |",
        "```\nAPPLIANCE_MQTT__HOST=x /opt/appliance/.venv/bin/appliance config lint FILE\n```",
    ],
)
def test_a_doc_naming_a_missing_command_fails(doc: str) -> None:
    paths = command_paths(doc)
    assert paths, f"nothing extracted from {doc!r}"
    failed = [p for p in paths if run_help(p).returncode != 0]
    assert failed, f"every path of {doc!r} passed: {sorted(paths)}"


def test_reduction_stops_at_options_placeholders_and_arguments() -> None:
    assert command_paths("`appliance fleet send kiosk-hn-0042 ping echo=hello`") == {
        ("fleet", "send")
    }
    assert command_paths("```\nappliance fleet keys [--home DIR] init\n```") == {("fleet", "keys")}
    assert command_paths("`appliance config check FILE`") == {("config", "check")}
    assert command_paths("`appliance fleet …`") == {("fleet",)}
    assert command_paths("run `python -m appliance run --config X`") == {("run",)}
    # not an invocation: a module path, a word in prose
    assert command_paths("`python -m appliance.lds.tool build` and `the appliance daemon`") == set()


# References to files outside the repository, and working notes addressed to the team: the
# docs point to standards (ICAO 9303 part/section, ISO/IEC, RFC, manual pages) instead.
OUTSIDE_OR_NOTE = re.compile(
    r"\.\./shared|shared/specs|/work/|\bnote to self\b|\bTODO\b|\bFIXME\b|\bthe lead\b|"
    r"\blead's\b|"
    # the team's briefing notes by name, outside the repository
    r"\b(?:icao9303-td1|cccd-dg13|cccd-number|fingerprint-zhiantec|biometric-quality|"
    r"mqtt-systemd-notes|pcsc-test-stack|STYLE)\.md\b",
    re.IGNORECASE,
)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_docs_have_no_outside_references_or_working_notes(doc: Path) -> None:
    hits = [
        f"{doc.name}:{n}: {line.strip()}"
        for n, line in enumerate(doc.read_text().splitlines(), 1)
        if OUTSIDE_OR_NOTE.search(line)
    ]
    assert hits == [], "\n".join(hits)
