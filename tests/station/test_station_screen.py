"""The kiosk station through its own screen, in a real browser (headless Chromium driven by
Playwright), on the simulated kit, in the production configuration: mosquitto with mutual TLS
and the shipped ACL, the daemon with its own certificate, the central directory (lookups), the
receiver (package verification) and the issuance desk (the card's signed issuance package) as
the ACL's ``directory`` and ``central`` identities. The main kiosk has the simulated card slot
(pcscd + vpcd, the card emulator as a process, its test CSCA as the trust bundle).

Nothing is sent from the fleet side but the configuration, except where a test is about the
fleet (a cancel). Each step's screenshot is saved under the test's tmp dir (not committed).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance.capabilities.card_delivery import build_issuance_answer
from appliance.central.citizens import synthetic_citizen
from appliance.central.directory import Directory, DirectoryCore, DirectoryStore, load_directory_key
from appliance.central.issue import (
    DocumentSigner,
    IssuanceDesk,
    IssuanceDeskCore,
    directory_citizens,
)
from appliance.central.keys import load_central_keys
from appliance.central.receiver import Receiver, ReceiverCore
from appliance.central.store import PackageStore
from appliance.devtools.broker import Mosquitto
from appliance.devtools.controller import Controller
from appliance.devtools.fleetkit import FleetKit
from appliance.lds.files import encode_dg2
from appliance.station.officers import hash_secret
from appliance.station.schemas import StationState
from appliance.trust.keys import load_public_key
from appliance.trust.sealed import scan_for_plaintext_biometrics
from tests.helpers import DaemonProcess, get_json, wait_for, wait_online

pw = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
MAIN = "kiosk-station"
OFF = "kiosk-station-off"
OFFICER = ("can-bo-01", "2468")
SUPERVISOR = ("giam-sat-01", "13579")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _officers_toml() -> str:
    expires = time.time() + 3600
    return (
        "[[station.officers]]\n"
        f'id = "{OFFICER[0]}"\nname = "Trần Văn Cán"\n'
        f'secret_hash = "{hash_secret(OFFICER[1])}"\nexpires = {expires}\n'
        "[[station.officers]]\n"
        f'id = "{SUPERVISOR[0]}"\nname = "Lê Thị Giám"\nsupervisor = true\n'
        f'secret_hash = "{hash_secret(SUPERVISOR[1])}"\nexpires = {expires}\n'
    )


@dataclass
class Kiosk:
    d: DaemonProcess
    port: int

    @property
    def token(self) -> str:
        return (self.d.state_dir / "screen-token").read_text()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        req = urllib.request.Request(self.url + path)
        if token is not None:
            req.add_header("X-Screen-Token", token)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def start(self, ctl: Controller) -> None:
        t0 = time.time()
        self.d.start()
        wait_online(ctl, self.d.device_id, after=t0, timeout=30)
        wait_for(
            lambda: (
                (self.d.state_dir / "screen-token").exists() and self.get("/v1/state")[0] == 401
            ),
            30,
            "the local API",
        )


def _kiosk(
    kit: FleetKit,
    broker: Mosquitto,
    workdir: Path,
    device: str,
    station: str,
    camera: str = "",
    *,
    card: bool = False,
) -> Kiosk:
    port = _free_port()
    d = DaemonProcess(workdir, broker, device, kit=kit)
    text = d.config_path.read_text()
    text = text.replace("[hardware.camera]\nenabled = false\n", "[hardware.camera]\n" + camera)
    text = text.replace("[hardware.fingerprint]\nenabled = false\n", "[hardware.fingerprint]\n")
    if card:  # the sim kit's card slot; its test CSCA becomes the trust bundle
        text = text.replace("[hardware.card]\nenabled = false\n", "[hardware.card]\n")
    text = text.replace(
        "[simulation]\nfingerprint = false\ncard = false\n",
        f"[simulation]\nfingerprint = true\ncard = {str(card).lower()}\nline_rate = false\n",
    )
    d.config_path.write_text(
        text + f"[station]\nenabled = true\nport = {port}\n" + station + _officers_toml()
    )
    return Kiosk(d, port)


@dataclass
class Centre:
    store: DirectoryStore
    packages: PackageStore
    citizen: Any
    other: Any
    desk: GatedDesk


class GatedDesk(IssuanceDeskCore):
    """The centre's issuance desk; while ``gate`` is clear it answers ``pending`` (the centre
    still working), so a test can look at the screen's waiting step."""

    gate = threading.Event()

    def answer(self, device: str, enrollment: str) -> bytes:
        if not self.gate.is_set():
            return build_issuance_answer(
                self.ingest_key, device, enrollment=enrollment, status="pending"
            )
        return super().answer(device, enrollment)


@pytest.fixture(scope="module")
def kiosks(
    fleet_kit: FleetKit, tls_broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Kiosk]]:
    root = tmp_path_factory.mktemp("station")
    made = {
        # Idle timeout 15 s: longer than any pause of the tests between two taps or capture
        # steps (a restart included), short enough for the idle test.
        MAIN: _kiosk(
            fleet_kit, tls_broker, root / "main", MAIN, "idle_timeout_s = 15\n", card=True
        ),
        OFF: _kiosk(
            fleet_kit,
            tls_broker,
            root / "off",
            OFF,
            'attended = false\nlanguage = "vi"\n',
            camera='sim_fault = "off_centre"\n',
        ),
    }
    ctl = fleet_kit.controller(tls_broker.port, signer="fleet-all").connect()
    try:
        for k in made.values():
            k.start(ctl)
    finally:
        ctl.close()
    yield made
    for k in made.values():
        if k.d.proc is not None and k.d.proc.poll() is None:
            k.d.terminate()


def _tls(kit: FleetKit, port: int, identity: str) -> dict[str, Any]:
    o = kit.options(port, identity)
    return {"ca_certs": str(o.ca_file), "certfile": str(o.cert_file), "keyfile": str(o.key_file)}


@pytest.fixture(scope="module")
def centre(
    fleet_kit: FleetKit,
    tls_broker: Mosquitto,
    kiosks: dict[str, Kiosk],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Centre]:
    root = tmp_path_factory.mktemp("centre")
    store = DirectoryStore(root / "directory.sqlite")
    today = dt.date.today()
    citizen = synthetic_citizen("CIT-ST-1", today=today)
    other = synthetic_citizen("CIT-ST-2", today=today)
    store.load({"CIT-ST-1": citizen, "CIT-ST-2": other})
    packages = PackageStore(root / "central")
    core = DirectoryCore(store, load_directory_key(fleet_kit.home), lambda *_a: False)
    directory = Directory(
        core,
        host="localhost",
        port=tls_broker.port,
        tls=_tls(fleet_kit, tls_broker.port, "directory"),
    ).start()
    keys = load_central_keys(fleet_kit.home)
    pubs = {dev: k.d.state_dir / "device.pub" for dev, k in kiosks.items()}
    rcore = ReceiverCore(
        packages,
        keys.enrollment,
        keys.ingest,
        lambda dev: load_public_key(pubs[dev]) if dev in pubs else None,
        lambda *_a: False,
    )
    receiver = Receiver(
        rcore,
        host="localhost",
        port=tls_broker.port,
        client_id="central-station-test",
        tls=_tls(fleet_kit, tls_broker.port, "central"),
    ).start()
    # The Document Signer of the sim kit's test PKI: the main kiosk trusts its CSCA.
    signer = DocumentSigner.load(kiosks[MAIN].d.state_dir / "sim" / "pki")
    desk_core = GatedDesk(
        packages, signer, keys.ingest, directory_citizens(store), lambda *_a: False
    )
    desk_core.gate.set()
    desk = IssuanceDesk(
        desk_core,
        host="localhost",
        port=tls_broker.port,
        client_id="central-issuance-station-test",
        tls=_tls(fleet_kit, tls_broker.port, "central"),
    ).start()
    yield Centre(store, packages, citizen, other, desk_core)
    desk.stop()
    receiver.stop(end_session=True)
    directory.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    p = pw.sync_playwright().start()
    b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    yield b
    b.close()
    p.stop()


class Screen:
    """One browser page on a kiosk's screen, saving a screenshot per step."""

    def __init__(self, browser: Any, kiosk: Kiosk, shots: Path) -> None:
        self.kiosk = kiosk
        self.page = browser.new_page(viewport={"width": 1280, "height": 1024})
        self.shots = shots
        shots.mkdir(parents=True, exist_ok=True)
        self.n = 0
        self.open()

    def open(self) -> None:
        self.page.goto(f"{self.kiosk.url}/?token={self.kiosk.token}")
        self.page.wait_for_selector("body[data-connected='1']", timeout=15000)

    def shot(self, name: str) -> None:
        self.n += 1
        self.page.screenshot(path=str(self.shots / f"{self.n:02d}-{name}.png"), full_page=True)

    def on(self, screen: str, timeout: float = 20) -> None:
        self.page.wait_for_selector(f"body[data-screen='{screen}']", timeout=timeout * 1000)

    def idle(self, timeout: float = 60) -> None:
        self.page.wait_for_selector("#busy[hidden]", state="attached", timeout=timeout * 1000)

    def tap(self, selector: str) -> None:
        self.page.click(selector)

    def text(self, selector: str) -> str:
        return str(self.page.inner_text(selector))

    def close(self) -> None:
        self.page.close()


# A second listener on the page's stream: what previews came, how wide, and when they ended.
WATCH_PREVIEW = """() => {
  const w = window.previewWatch = {frames: 0, max_width: 0, jpeg: true, ended: null, after_end: 0};
  const es = new EventSource('/v1/events');
  es.addEventListener('preview', (e) => {
    const p = JSON.parse(e.data);
    if (w.ended !== null) { w.after_end += 1; return; }
    w.frames += 1;
    w.max_width = Math.max(w.max_width, p.width);
    w.jpeg = w.jpeg && atob(p.jpeg).charCodeAt(0) === 0xff && atob(p.jpeg).charCodeAt(1) === 0xd8;
  });
  es.addEventListener('preview_end', () => { w.ended = Date.now(); });
}"""


# A second listener on the page's stream: every card step the screen was shown, and the
# encoder's steps while the card was written.
WATCH_CARD = """() => {
  const w = window.cardWatch = {steps: [], writes: []};
  const es = new EventSource('/v1/events');
  es.addEventListener('state', (e) => {
    const c = JSON.parse(e.data).state.card;
    if (c && w.steps[w.steps.length - 1] !== c.step) w.steps.push(c.step);
  });
  es.addEventListener('card', (e) => { w.writes.push(JSON.parse(e.data).step); });
}"""


def _to_consent(s: Screen, number: str, *, attended: bool, issuance: bool = False) -> None:
    s.on("welcome")
    s.shot("welcome")
    s.tap("#begin")
    s.page.wait_for_selector("body:not([data-screen='welcome'])")
    if attended and s.page.evaluate("document.body.dataset.screen") == "officer":
        # (an officer who signed in for an earlier citizen is still signed in)
        s.page.fill("#officer-id", OFFICER[0])
        s.page.fill("#officer-secret", "wrong")
        s.tap("#sign-in")
        s.page.wait_for_selector("#error:not([hidden])")
        assert "không" in s.text("#error") or "not recognised" in s.text("#error")
        s.page.fill("#officer-secret", OFFICER[1])
        s.shot("officer")
        s.tap("#sign-in")
    s.on("identify")
    for digit in number:  # the on-screen keypad, as a citizen would
        s.page.click(f"#keypad button:text-is('{digit}')")
    s.shot("identify")
    s.tap("#lookup")
    s.on("confirm", 30)
    s.shot("confirm")
    s.tap("#confirm")
    s.on("consent")
    if issuance:  # the kiosk offers the card on the spot; the citizen takes it
        s.page.check("#issuance")
    s.shot("consent")
    s.tap("#accept")
    s.on("portrait")


@pytest.mark.slow
def test_whole_enrollment_through_the_screen_to_a_verified_package(
    kiosks: dict[str, Kiosk],
    centre: Centre,
    browser: Any,
    signed_controller: Controller,
    tmp_path: Path,
) -> None:
    kiosk = kiosks[MAIN]
    events = signed_controller.subscribe(f"kiosk/{MAIN}/events/station.state")
    s = Screen(browser, kiosk, tmp_path / "screens")
    _to_consent(s, centre.citizen.personal_id, attended=True, issuance=True)
    assert s.text("#officer-name") == "Trần Văn Cán"
    s.shot("portrait")
    s.page.evaluate(WATCH_PREVIEW)
    s.tap("#portrait")
    s.on("fingers", 60)
    s.shot("fingers")
    lifted = False
    while s.page.evaluate("document.body.dataset.screen") == "fingers":
        state = kiosk.get("/v1/state", kiosk.token)[1]
        StationState.model_validate(state)  # the documented schema (docs/schemas)
        position = state["current_finger"]
        assert (
            s.page.get_attribute(f"rect[data-position='{position}']", "class") == "finger current"
        )
        if position == 6:  # the left thumb is bandaged: only a supervisor may let it go
            s.tap("#skip-open")
            s.page.check("input[name=reason][value=bandaged]")
            s.page.fill("#supervisor-id", OFFICER[0])
            s.page.fill("#supervisor-secret", OFFICER[1])
            s.shot("skip-needs-supervisor")
            s.tap("#skip")
            s.page.wait_for_selector("#error:not([hidden])")
            assert kiosk.get("/v1/state", kiosk.token)[1]["current_finger"] == 6
            s.shot("skip-refused")
            s.page.fill("#supervisor-id", SUPERVISOR[0])
            s.page.fill("#supervisor-secret", SUPERVISOR[1])
            s.tap("#skip")
        else:
            seq = state["seq"]
            s.tap("#finger")
            s.page.wait_for_function(
                f"Number(document.body.dataset.seq) > {seq + 1} && "
                "document.getElementById('busy').hidden",
                timeout=60000,
            )
            lifted = lifted or s.page.get_attribute("body", "data-lifted") is not None
            if position == 2:
                s.shot("finger-2")
        s.page.wait_for_function(
            f"document.body.dataset.screen !== 'fingers' || "
            f"!document.querySelector(\"rect[data-position='{position}'].current\")",
            timeout=30000,
        )
    assert lifted, "the screen never said to lift the finger"
    # The live preview: small JPEG frames during the portrait, none once it was taken.
    seen = s.page.evaluate("window.previewWatch")
    assert seen["frames"] >= 1 and seen["ended"] is not None, seen
    assert seen["max_width"] <= 320 and seen["jpeg"], seen
    assert seen["after_end"] == 0, seen
    s.on("review")
    s.shot("review")
    assert s.page.get_attribute("li[data-position='6']", "data-status") == "skipped"
    s.tap("#lang")  # English for the rest of this citizen's enrollment
    s.page.wait_for_selector("html[lang='en']")
    assert s.text("#s-review h2") == "Final check"
    assert "Left thumb: skipped — Bandaged" in s.text("li[data-position='6']")
    s.shot("review-en")
    s.tap("#lang")  # back to Vietnamese for the card
    s.page.wait_for_selector("html[lang='vi']")
    s.page.evaluate(WATCH_CARD)
    centre.desk.gate.clear()  # the centre is still verifying: the screen waits for the data
    s.tap("#submit")
    s.on("card", 60)
    s.page.wait_for_selector("body[data-card-step='waiting_data']", timeout=20000)
    assert "Đang chờ dữ liệu thẻ" in s.text("#card-steps .now")
    s.shot("card-waiting-data")
    # A power cut while the kiosk waits for the card's data: it comes back on the same step
    # and asks the centre again (nothing of the centre's answers was kept).
    kiosk.d.kill9()
    kiosk.start(signed_controller)
    s.open()  # the screen service reopens the screen with the new boot's token
    s.page.wait_for_selector("body[data-card-step='waiting_data']", timeout=20000)
    s.page.evaluate(WATCH_CARD)
    s.shot("card-waiting-data-after-restart")
    centre.desk.gate.set()
    s.page.wait_for_selector("body[data-card-step='issued']", timeout=90000)
    assert s.page.is_visible("#card-done") and not s.page.is_visible("#card-retry")
    assert "Đã ghi thẻ" in s.text("#card-message")
    s.shot("card-issued")
    watched = s.page.evaluate("window.cardWatch")
    assert watched["steps"] == ["waiting_data", "insert_card", "writing", "issued"], watched
    # one blank card: the restart did not spoil one
    assert kiosk.get("/v1/state", kiosk.token)[1]["card"]["attempt"] == 1
    for step in ("check_package", "write:DG1", "write:DG2", "write:EF.SOD", "lock", "verify:read"):
        assert step in watched["writes"], watched
    s.tap("#lang")
    s.page.wait_for_selector("html[lang='en']")
    s.tap("#card-done")
    s.on("receipt", 60)
    assert s.text("#receipt-card") == "Your ID card was issued at the kiosk."
    s.page.wait_for_function("document.getElementById('qr').naturalWidth > 0", timeout=10000)
    s.shot("receipt")
    reference = s.text("#reference").replace(" ", "")
    status, svg = 0, ""
    req = urllib.request.Request(kiosk.url + "/v1/receipt.svg")
    req.add_header("X-Screen-Token", kiosk.token)
    with urllib.request.urlopen(req, timeout=10) as r:
        status, svg = r.status, r.read().decode()
    assert status == 200 and "<svg xmlns" in svg

    assert s.text("#s-receipt h2") == "Enrollment submitted"
    s.tap("#done")
    s.on("welcome")
    s.page.wait_for_selector("html[lang='vi']")  # the next citizen starts in Vietnamese
    assert s.text("header h1") == "Đăng ký căn cước công dân"
    s.close()
    # The centre verified the package (signature, hash chain, records) and the approval is in it.
    result = wait_for(lambda: centre.packages.result(MAIN, reference), 60, "the centre's verdict")
    assert result["status"] == "complete", result
    manifest = json.loads(
        (centre.packages.package_dir(MAIN, reference) / "manifest.json").read_text()
    )
    assert manifest["citizen_ref"] == "CIT-ST-1"
    assert len(manifest["records"]) == 10  # the portrait and nine fingers
    (exc,) = manifest["exceptions"]
    assert exc["position"] == 6 and exc["reason"] == "bandaged"
    assert SUPERVISOR[0] in exc["detail"] and OFFICER[0] in exc["detail"]
    # The officer who ran it is in the verified manifest, exceptions or not.
    assert manifest["station"] == {
        "mode": "attended",
        "officer": {"officer_id": OFFICER[0], "name": "Trần Văn Cán"},
    }
    assert manifest["issuance"] is True
    # The card in the reader, read back from outside as a relying party would (BAC from the
    # citizen's MRZ, Passive Authentication against the kiosk's CSCA): the citizen's data and
    # the very portrait the centre verified.
    mrz = centre.citizen.td1()
    read = signed_controller.request(
        MAIN,
        "card.read",
        {"document_number": mrz.document_number, "birth": mrz.birth, "expiry": mrz.expiry},
        timeout=60,
    )
    assert read["ok"] is True, read
    card = read["result"]
    assert card["passive_authentication"]["passed"] is True, card
    assert card["dg1"]["document_number"] == centre.citizen.personal_id
    assert card["dg13"]["full_name"] == centre.citizen.full_name
    dg2 = encode_dg2([centre.packages.portrait(MAIN, reference)])
    assert card["dg2"]["sha256"] == hashlib.sha256(dg2).hexdigest()

    # Nothing with an image or record magic number stayed on the kiosk (the preview included).
    assert scan_for_plaintext_biometrics([kiosk.d.state_dir]) == []
    # The fleet followed the flow, screen by screen, without personal data.
    seen = []
    while "welcome" not in seen[1:]:
        seen.append(get_json(events, 10)["data"]["screen"])
    for screen in ("officer", "identify", "confirm", "consent", "portrait", "fingers", "review"):
        assert screen in seen, seen
    assert seen[-3:] == ["card", "receipt", "welcome"], seen


def test_local_api_refuses_a_missing_token_and_a_foreign_peer(kiosks: dict[str, Kiosk]) -> None:
    kiosk = kiosks[MAIN]
    status, body = kiosk.get("/v1/state")
    assert status == 401 and body["error"]["code"] == "screen_token_required"
    assert kiosk.get("/v1/state", "not-the-token")[0] == 401
    assert kiosk.get("/v1/events")[0] == 401
    assert kiosk.get("/v1/state", kiosk.token)[0] == 200
    mode = (kiosk.d.state_dir / "screen-token").stat().st_mode & 0o777
    assert mode == 0o600


def test_off_centre_citizen_is_guided_on_screen_and_cancel_goes_back(
    kiosks: dict[str, Kiosk], centre: Centre, browser: Any, tmp_path: Path
) -> None:
    kiosk = kiosks[OFF]  # self-service (no officer), the simulated citizen stands off-centre
    s = Screen(browser, kiosk, tmp_path / "screens")
    _to_consent(s, centre.other.personal_id, attended=False)
    s.tap("#portrait")
    # The simulated citizen stands too far to their own right (their face on the camera
    # image's left): they are told to move to their own left (docs/camera.md).
    s.page.wait_for_function(
        "/move_(left|right)/.test(document.getElementById('guidance').dataset.hints || '')",
        timeout=20000,
    )
    s.page.wait_for_selector("#face-box:not([hidden])")
    s.shot("portrait-guidance")
    hints = (s.page.get_attribute("#guidance", "data-hints") or "").split()
    assert "move_left" in hints and "move_right" not in hints, hints
    assert "Dịch sang trái" in s.text("#guidance")
    # The face box is drawn over the mirrored preview: on the screen's right half.
    box = s.page.eval_on_selector(
        "#face-box", "b => [b.offsetLeft + b.offsetWidth / 2, b.parentElement.clientWidth]"
    )
    assert box[0] > box[1] / 2, box
    sid = kiosk.get("/v1/state", kiosk.token)[1]["session_id"]
    assert sid
    s.tap("#cancel")  # the citizen gives up mid-capture: the session ends, nothing kept
    s.on("welcome", 30)
    assert s.page.get_attribute("#notice", "data-code") == "cancelled"
    s.shot("cancelled")
    s.close()


@pytest.mark.slow  # waits out the 15 s idle timeout
def test_idle_timeout_cancels_and_shreds(
    kiosks: dict[str, Kiosk],
    centre: Centre,
    browser: Any,
    signed_controller: Controller,
    tmp_path: Path,
) -> None:
    kiosk = kiosks[MAIN]  # station.idle_timeout_s = 15
    cancelled = signed_controller.subscribe(f"kiosk/{MAIN}/events/enrollment.cancelled")
    s = Screen(browser, kiosk, tmp_path / "screens")
    s.on("welcome")
    s.tap("#begin")
    if kiosk.get("/v1/state", kiosk.token)[1]["screen"] == "officer":
        s.page.fill("#officer-id", OFFICER[0])
        s.page.fill("#officer-secret", OFFICER[1])
        s.tap("#sign-in")
    s.on("identify")
    s.page.fill("#number", centre.other.personal_id)
    s.tap("#lookup")
    s.on("confirm", 30)
    s.tap("#confirm")
    s.on("consent")
    s.tap("#accept")
    s.on("portrait")
    s.tap("#portrait")
    s.on("fingers", 60)
    sealed = kiosk.d.state_dir / "sealed"
    assert len(list(sealed.glob("*.sealed"))) == 1  # the portrait, sealed at capture
    sid = kiosk.get("/v1/state", kiosk.token)[1]["session_id"]
    # Nobody touches the screen: the flow is cancelled, the sealed portrait shredded.
    s.page.wait_for_selector("body[data-screen='welcome']", timeout=45000)
    assert s.page.get_attribute("#notice", "data-code") == "idle_timeout"
    s.shot("idle-timeout")
    event = get_json(cancelled, 10, lambda m: m["data"]["session_id"] == sid)
    assert event["data"]["shredded"] == 1
    assert list(sealed.glob("*.sealed")) == []
    assert kiosk.get("/v1/state", kiosk.token)[1]["officer"] is None  # signed out too
    s.close()


def test_daemon_killed_mid_flow_resumes_on_the_same_screen_and_the_fleet_can_cancel(
    kiosks: dict[str, Kiosk],
    centre: Centre,
    browser: Any,
    signed_controller: Controller,
    tmp_path: Path,
) -> None:
    kiosk = kiosks[MAIN]
    s = Screen(browser, kiosk, tmp_path / "screens")
    _to_consent(s, centre.other.personal_id, attended=True)
    s.tap("#portrait")
    s.on("fingers", 60)
    first = kiosk.get("/v1/state", kiosk.token)[1]["current_finger"]
    s.tap("#finger")
    s.page.wait_for_selector(
        f"rect[data-position='{first}'][fill='#81c784']", state="attached", timeout=60000
    )
    before = kiosk.get("/v1/state", kiosk.token)[1]
    s.shot("before-kill")
    kiosk.d.kill9()
    kiosk.start(signed_controller)
    s.open()  # the browser reconnects with the new boot's token (the screen service's job)
    s.on("fingers")
    after = kiosk.get("/v1/state", kiosk.token)[1]
    s.shot("after-restart")
    for key in ("screen", "session_id", "current_finger", "fingers", "officer", "plan"):
        assert after[key] == before[key], key
    assert s.page.get_attribute(f"rect[data-position='{after['current_finger']}']", "class") == (
        "finger current"
    )
    # The fleet cancels the session: the screen goes back to welcome.
    reply = signed_controller.request(MAIN, "enrollment.cancel", {"reason": "test"})
    assert reply["ok"] is True, reply
    s.on("welcome", 20)
    assert s.page.get_attribute("#notice", "data-code") == "cancelled_remote"
    s.shot("cancelled-remote")
    s.close()
