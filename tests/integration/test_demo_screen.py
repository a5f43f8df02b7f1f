"""The demo's kiosk screen as a person running ``appliance demo`` uses it: start the demo as
the README says (``--fast --no-enroll`` to keep it short), open the printed URL in a real
browser (headless Debian Chromium driven by Playwright), sign in as the printed officer, look
up a printed citizen number on the keypad and get the citizen's data from the centre's
directory that the demo runs in the background; then enroll that citizen with the card taken
at the kiosk: the demo's receiver verifies the package (the kiosk purges it), its issuance desk
sends the card's data, the simulated card slot is written. Ctrl-C stops the demo and its
centre. (The screen's every branch is covered by tests/station/test_station_screen.py.)
Screenshots are saved under the test's tmp dir (not committed).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.central.citizens import synthetic_citizen
from appliance.central.directory import DirectoryStore
from appliance.central.store import PackageStore
from appliance.devtools.broker import free_port
from appliance.devtools.demo import CENTRE_CITIZENS
from tests.helpers import ROOT, wait_for

pw = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"


class RunningDemo:
    """``appliance demo`` as a subprocess, its output collected line by line."""

    def __init__(self, work: Path, *extra: str) -> None:
        self.work = work
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance", "demo", "--workdir", str(work),
             "--port", str(free_port()), "--station-port", str(free_port()), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        )  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def out(self) -> str:
        return "".join(self.lines)

    def wait_running(self, timeout: float) -> None:
        wait_for(
            lambda: "Running. Ctrl-C" in self.out or self.proc.poll() is not None,
            timeout,
            "the demo running",
        )
        assert "Running. Ctrl-C" in self.out, self.out[-4000:]

    def ctrl_c(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def _shot(page: Any, shots: Path, name: str) -> None:
    n = len(list(shots.iterdir())) + 1
    page.screenshot(path=str(shots / f"{n:02d}-{name}.png"), full_page=True)


def _enroll_with_card(page: Any, shots: Path) -> str:
    """From the confirmation to the receipt, the card taken at the kiosk; the reference."""
    page.click("#confirm")
    page.wait_for_selector("body[data-screen='consent']", timeout=15000)
    page.check("#issuance")
    _shot(page, shots, "consent")
    page.click("#accept")
    page.wait_for_selector("body[data-screen='portrait']", timeout=15000)
    page.click("#portrait")
    page.wait_for_selector("body[data-screen='fingers']", timeout=60000)
    _shot(page, shots, "fingers")
    while page.evaluate("document.body.dataset.screen") == "fingers":
        seq = int(page.evaluate("document.body.dataset.seq"))
        page.click("#finger")
        page.wait_for_function(
            f"document.body.dataset.screen !== 'fingers' || "
            f"(Number(document.body.dataset.seq) > {seq + 1} && "
            "document.getElementById('busy').hidden)",
            timeout=60000,
        )
    page.wait_for_selector("body[data-screen='review']", timeout=30000)
    _shot(page, shots, "review")
    page.click("#submit")
    page.wait_for_selector("body[data-screen='card']", timeout=60000)
    page.wait_for_selector("body[data-card-step='issued']", timeout=120000)
    _shot(page, shots, "card-issued")
    page.click("#card-done")
    page.wait_for_selector("body[data-screen='receipt']", timeout=60000)
    _shot(page, shots, "receipt")
    return str(page.inner_text("#reference")).replace(" ", "")


def _purged(work: Path, reference: str) -> bool:
    path = work / "ingest" / "events.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        event = json.loads(line)
        if (
            event.get("type") == "enrollment.purged"
            and event["data"]["package_id"] == reference
            and event["verified"] == "ok"
        ):
            return True
    return False


@pytest.fixture
def browser() -> Iterator[Any]:
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    p = pw.sync_playwright().start()
    b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    yield b
    b.close()
    p.stop()


@pytest.mark.slow
def test_a_person_enrolls_a_printed_citizen_on_the_demo_screen(
    tmp_path: Path, browser: Any
) -> None:
    work = tmp_path / "run"
    shots = tmp_path / "screens"
    shots.mkdir()
    demo = RunningDemo(work, "--fast", "--no-enroll")
    try:
        demo.wait_running(240)
        out = demo.out
        # What the person reads: the URL, the officer, the citizen numbers to try.
        url = next(ln.strip() for ln in demo.lines if ln.strip().startswith("http://127.0.0.1:"))
        officer = re.search(r"officer sign-in: (\S+) / PIN (\d+)", out)
        assert officer is not None, out
        numbers = re.findall(r"^\s+(\d{12})  (.+), born (\d{4}-\d\d-\d\d)$", out, re.M)
        assert len(numbers) == 3, out
        # Synthetic citizens of the demo's directory, never real ones.
        expected = [synthetic_citizen(ref) for ref in CENTRE_CITIZENS]
        assert [n for n, _name, _b in numbers] == [c.personal_id for c in expected[:3]]
        number, name, _born = numbers[1]

        page = browser.new_page(viewport={"width": 1280, "height": 1024})
        page.goto(url)
        page.wait_for_selector("body[data-connected='1']", timeout=15000)
        page.wait_for_selector("body[data-screen='welcome']", timeout=15000)
        _shot(page, shots, "welcome")
        page.click("#begin")
        page.wait_for_selector("body[data-screen='officer']", timeout=15000)
        page.fill("#officer-id", officer.group(1))
        page.fill("#officer-secret", officer.group(2))
        _shot(page, shots, "officer")
        page.click("#sign-in")
        page.wait_for_selector("body[data-screen='identify']", timeout=15000)
        for digit in number:  # the on-screen keypad, as a citizen would
            page.click(f"#keypad button:text-is('{digit}')")
        _shot(page, shots, "identify")
        page.click("#lookup")
        page.wait_for_selector("body[data-screen='confirm']", timeout=30000)
        _shot(page, shots, "confirm")
        shown = page.inner_text("#s-confirm")
        assert name in shown and number in shown, shown
        reference = _enroll_with_card(page, shots)
        page.close()
        # The demo's receiver verified the package and the kiosk purged its sealed copy (the
        # ingest recorded the kiosk's event).
        store = PackageStore(work / "kit" / "fleet" / "central")
        result = store.result("kiosk-demo", reference)
        assert result is not None and result["status"] == "complete", result
        wait_for(lambda: _purged(work, reference), 30, "the kiosk's enrollment.purged event")
        # The answer came from the demo's directory (its store holds the five citizens).
        store = DirectoryStore(work / "kit" / "fleet" / "directory.sqlite")
        assert store.count() == len(CENTRE_CITIZENS)
    finally:
        rc = demo.ctrl_c()
    out = demo.out
    assert rc == 0, out[-4000:]
    # Ctrl-C stopped the centre's processes cleanly: each printed its stopped line.
    assert re.search(r"directory: stopped: 1 found, 0 not found", out), out[-3000:]
    assert "receiver: stopped: 1 complete, 0 rejected" in out, out[-3000:]
    assert re.search(r"issuance desk: stopped: \d+ requests, 1 ready", out), out[-3000:]
    logs = {p.name: p.read_text() for p in (work / "centre").glob("*.log")}
    assert json.loads((work / "centre" / "citizens.json").read_text()).keys() == set(
        CENTRE_CITIZENS
    ), logs


def test_demo_help_says_what_to_do_on_the_screen() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "appliance", "demo", "--help"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "three citizen numbers" in text and "sign in as the officer" in text, text
    assert "citizen directory the demo runs in the background" in text, text
