"""Instant issuance at the station without a browser: the centre's signed answer is taken only
when it verifies and is this enrollment's and this citizen's; the flow's card steps (a card
pulled mid-write is never reported issued, another blank card may be tried, a restart during
the write does not pretend the card is good, a restart while waiting asks again).

The whole path through the screen, the broker, the centre and the emulated card is in
test_station_screen.py."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
from pathlib import Path
from typing import Any, cast

import pytest
from nacl.signing import SigningKey

from appliance.capabilities.card import EncodeResult
from appliance.capabilities.card_delivery import (
    build_issuance_answer,
    check_belongs,
    verify_issuance_answer,
)
from appliance.central.citizens import synthetic_citizen
from appliance.central.issue import DocumentSigner, IssuanceDeskCore
from appliance.central.store import PackageStore
from appliance.config import StationSection
from appliance.errors import ApplianceError, DeviceError, TrustError
from appliance.lds import testpki
from appliance.lds.issuance import build_issuance_package
from appliance.lds.package import IssuancePackage
from appliance.protocol.topics import Topics
from appliance.station.flow import Flow
from appliance.station.issuance import IssuanceClient
from appliance.store import Store
from appliance.trust.certs import FleetRoot
from tests.helpers import wait_for
from tests.trust.fleet import live_key

DEVICE = "kiosk-card"
TODAY = dt.date.today()
CITIZEN = synthetic_citizen("CIT-CARD-1", today=TODAY)
OTHER = synthetic_citizen("CIT-CARD-2", today=TODAY)


@pytest.fixture(scope="module")
def pki() -> testpki.TestPki:
    return testpki.make_test_pki()


def _package(pki: testpki.TestPki, citizen: Any = CITIZEN) -> IssuancePackage:
    return build_issuance_package(
        package_id="iss-test-0001",
        mrz=citizen.td1(),
        dg13=citizen.dg13(),
        face_records=None,
        ds_key=pki.ds_key,
        ds_cert=pki.ds_cert,
    )


@pytest.fixture(scope="module")
def root() -> FleetRoot:
    return FleetRoot(SigningKey.generate())


def _ready(key: Any, pki: testpki.TestPki, **kw: Any) -> bytes:
    args: dict[str, Any] = {
        "enrollment": "pkg-1",
        "status": "ready",
        "citizen_ref": CITIZEN.citizen_ref,
        "package": _package(pki),
    }
    args.update(kw)
    return build_issuance_answer(key, DEVICE, **args)


def test_answer_is_taken_only_signed_by_the_centre_for_this_kiosk_and_citizen(
    root: FleetRoot, pki: testpki.TestPki
) -> None:
    ingest = live_key(root, ("ingest",), DEVICE)
    roots = [root.public_key]
    answer = verify_issuance_answer(
        _ready(ingest, pki), roots, device_id=DEVICE, now=dt.datetime.now().timestamp()
    )
    pkg = check_belongs(
        answer, enrollment="pkg-1", citizen_ref=CITIZEN.citizen_ref, personal_id=CITIZEN.personal_id
    )
    assert pkg.package_id == "iss-test-0001"

    def refused(data: bytes, device: str = DEVICE) -> str:
        with pytest.raises(TrustError) as exc:
            verify_issuance_answer(data, roots, device_id=device, now=dt.datetime.now().timestamp())
        return exc.value.code

    # another role's key (the directory's), another fleet's root, another kiosk, a forgery
    assert refused(_ready(live_key(root, ("directory",), DEVICE), pki)) == "forbidden_role"
    stranger = FleetRoot(SigningKey.generate())
    assert refused(_ready(live_key(stranger, ("ingest",), DEVICE), pki)) == "untrusted_issuer"
    assert refused(_ready(ingest, pki), device="kiosk-other") == "wrong_target"
    env = json.loads(_ready(ingest, pki))
    body = json.loads(base64.b64decode(env["body"]))
    body["enrollment"] = "pkg-someone-else"  # the signature no longer covers the body
    env["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    assert refused(json.dumps(env).encode()) == "bad_signature"

    # signed and for this kiosk, but not this enrollment's or this citizen's: nothing written
    def mismatch(**kw: Any) -> str:
        with pytest.raises(ApplianceError) as exc:
            check_belongs(
                answer,
                **{
                    "enrollment": "pkg-1",
                    "citizen_ref": CITIZEN.citizen_ref,
                    "personal_id": CITIZEN.personal_id,
                    **kw,
                },
            )
        assert exc.value.code == "issuance_mismatch"
        return str(exc.value.details["field"])

    assert mismatch(enrollment="pkg-2") == "enrollment"
    assert mismatch(citizen_ref=OTHER.citizen_ref) == "citizen_ref"
    assert mismatch(personal_id=OTHER.personal_id) == "DG1"
    # the centre named our citizen but built the card of another one
    swapped = verify_issuance_answer(
        _ready(ingest, pki, package=_package(pki, OTHER)),
        roots,
        device_id=DEVICE,
        now=dt.datetime.now().timestamp(),
    )
    with pytest.raises(ApplianceError) as exc:
        check_belongs(
            swapped,
            enrollment="pkg-1",
            citizen_ref=CITIZEN.citizen_ref,
            personal_id=CITIZEN.personal_id,
        )
    assert exc.value.details["field"] == "DG1"


class FakeBackend:
    """The flow's door for the card steps only; the card's outcome is scripted per attempt."""

    def __init__(self, outcomes: list[str]) -> None:
        self.outcomes = outcomes
        self.asked: list[tuple[str, str, str]] = []
        self.release = threading.Event()
        self.release.set()

    def add_listener(self, _fn: Any) -> None:
        pass

    def active_session(self) -> None:
        return None

    def abort(self) -> None:
        pass

    def issuance_available(self) -> bool:
        return True

    def card_package(
        self, enrollment: str, citizen_ref: str, personal_id: str, _timeout_s: float
    ) -> str:
        self.asked.append((enrollment, citizen_ref, personal_id))
        assert self.release.wait(10)
        return "package"

    def wait_card(self, _timeout_s: float) -> None:
        pass

    def card_encode(self, _package: Any, on_step: Any) -> EncodeResult:
        on_step("write:DG1")
        if self.outcomes.pop(0) == "pulled":
            # What CardIssuer reports for a card pulled after the first write (docs/card.md).
            raise DeviceError(
                "card spoiled at step write:DG2: card removed",
                device="card",
                code="card_spoiled",
                details={"step": "write:DG2"},
            )
        return EncodeResult(
            outcome="issued",
            package_id="iss-1",
            document_number="********1234",
            files={},
            apdus=48,
            duration_ms=120.0,
            reply={},
        )


def _flow(store: Store, backend: FakeBackend, events: list[tuple[str, dict[str, Any]]]) -> Flow:
    return Flow(
        store=store,
        backend=cast(Any, backend),
        config=StationSection(),
        emit=lambda t, d, **_kw: events.append((t, dict(d))),
        instant_issuance=True,
    )


def _on_card(flow: Flow, step: str) -> dict[str, Any]:
    """Put the flow where a submit with issuance leaves it (the card screen, waiting)."""
    with flow._lock:
        flow.state.update(
            screen="card",
            receipt={"reference": "pkg-1", "records": 10, "finished_at": 0.0},
            card={
                "step": step,
                "enrollment": "pkg-1",
                "citizen_ref": CITIZEN.citizen_ref,
                "personal_id": CITIZEN.personal_id,
                "attempt": 1,
                "error": None,
                "result": None,
            },
        )
    return flow._changed()


def test_card_pulled_mid_write_is_not_issued_and_another_card_may_be_tried(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "state.sqlite")
    backend = FakeBackend(["pulled", "issued"])
    events: list[tuple[str, dict[str, Any]]] = []
    flow = _flow(store, backend, events)
    steps: list[str] = []
    flow.subscribe(lambda m: m["type"] == "state" and steps.append(m["state"]["card"]["step"]))
    _on_card(flow, "waiting_data")
    flow.state["busy"] = "card"
    flow._worker.submit(flow._card_job)
    wait_for(lambda: flow.snapshot()["card"]["step"] == "failed", 10, "the failed card")
    snap = flow.snapshot()
    assert snap["card"]["error"]["code"] == "card_spoiled" and snap["busy"] is None
    assert snap["card"]["result"] is None
    assert steps[-4:] == ["waiting_data", "insert_card", "writing", "failed"], steps
    backend.release.clear()  # the centre's answer is held back for a moment
    flow.card_retry()  # another blank card
    with pytest.raises(ApplianceError) as refused:
        flow.card_retry()
    assert refused.value.code == "busy"  # one card at a time
    with pytest.raises(ApplianceError) as refused:
        flow.cancel()
    assert refused.value.code == "busy"  # never while a card may be being written
    backend.release.set()

    wait_for(lambda: flow.snapshot()["card"]["step"] == "issued", 10, "the issued card")
    assert flow.snapshot()["card"]["attempt"] == 2
    assert flow.snapshot()["card"]["result"]["document_number"] == "********1234"
    snap = flow.card_done()
    assert snap["screen"] == "receipt" and snap["receipt"]["card"] == "issued"
    assert snap["card"] is None  # the citizen's number leaves the state with the card
    assert backend.asked[-1] == ("pkg-1", CITIZEN.citizen_ref, CITIZEN.personal_id)
    # the fleet heard of every card step, without personal data
    card_steps = [d["card_step"] for t, d in events if t == "station.state"]
    for step in ("insert_card", "writing", "failed", "issued"):
        assert step in card_steps, card_steps
    assert all(CITIZEN.personal_id not in str(d) for _t, d in events)
    flow.stop()


def test_restart_mid_write_reports_the_card_failed_and_while_waiting_asks_again(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "state.sqlite")
    events: list[tuple[str, dict[str, Any]]] = []
    flow = _flow(store, FakeBackend([]), events)
    _on_card(flow, "writing")
    flow.stop()
    # kill -9 during the write: the state row says "writing"; the next start must not
    # pretend anything about that card
    again = _flow(store, FakeBackend([]), events)
    card = again.snapshot()["card"]
    assert again.snapshot()["screen"] == "card"
    assert card["step"] == "failed" and card["error"]["code"] == "interrupted"
    again.stop()

    backend = FakeBackend(["issued"])
    waiting = _flow(store, backend, events)
    _on_card(waiting, "waiting_data")
    waiting.stop()
    resumed = _flow(store, backend, events)
    resumed.start()  # waits again: the centre is asked again
    wait_for(lambda: resumed.snapshot()["card"]["step"] == "issued", 10, "the resumed card")
    assert len(backend.asked) == 1
    resumed.stop()


def test_desk_answers_pending_until_the_package_is_verified_and_drops_bad_requests(
    tmp_path: Path, root: FleetRoot, pki: testpki.TestPki
) -> None:
    sent: list[tuple[str, bytes]] = []
    core = IssuanceDeskCore(
        PackageStore(tmp_path / "central"),
        DocumentSigner(pki.ds_key, pki.ds_cert),
        live_key(root, ("ingest",), DEVICE),
        lambda _ref: CITIZEN,
        lambda topic, payload: sent.append((topic, payload)) or True,
    )
    request = f"kiosk/{DEVICE}/card/request"
    core.handle(request, json.dumps({"enrollment": "0f3c2a9b7d1e"}).encode())
    ((topic, payload),) = sent
    assert topic == f"kiosk/{DEVICE}/card/issuance"  # the asking kiosk's own answer topic
    answer = verify_issuance_answer(
        payload, [root.public_key], device_id=DEVICE, now=dt.datetime.now().timestamp()
    )
    assert (answer.status, answer.enrollment, answer.package) == ("pending", "0f3c2a9b7d1e", None)
    for bad in (b"not json", b'{"enrollment": "../etc"}', b"{}", b'{"enrollment": 7}'):
        core.handle(request, bad)
    core.handle(f"kiosk/{DEVICE}/card/issuance", payload)  # not a request: ignored
    assert len(sent) == 1 and core.stats["malformed"] == 4


def test_station_client_asks_again_while_pending_and_drops_answers_that_do_not_verify(
    root: FleetRoot, pki: testpki.TestPki
) -> None:
    ingest = live_key(root, ("ingest",), DEVICE)
    forger = live_key(FleetRoot(SigningKey.generate()), ("ingest",), DEVICE)
    topics = Topics("kiosk", DEVICE)
    asked: list[bytes] = []
    script: list[bytes] = []  # what the "centre" answers to each request, in order

    def publish(topic: str, body: bytes) -> bool:
        assert topic == topics.card_request
        asked.append(body)
        if script:  # answered on the network thread, as the daemon's agent would
            answer = script.pop(0)
            threading.Thread(target=client.on_message, args=(topics.card_issuance, answer)).start()
        return True

    client = IssuanceClient(topics=topics, publish=publish, roots=[root.public_key])
    script[:] = [
        build_issuance_answer(ingest, DEVICE, enrollment="pkg-1", status="pending"),
        _ready(forger, pki),  # another fleet's key: dropped, counted
        _ready(ingest, pki, enrollment="pkg-0"),  # an older enrollment's: not this wait's
        _ready(ingest, pki),
    ]
    answer = client.wait("pkg-1", timeout_s=30, ask_every_s=0.05)
    assert answer.status == "ready" and answer.package is not None
    assert json.loads(asked[0]) == {"enrollment": "pkg-1"} and len(asked) == 4
    assert not client._answers  # nothing of a package (its portrait) stays after the wait
    assert client.refused == 1 and client.last_refusal is not None
    assert client.last_refusal["code"] == "untrusted_issuer"

    script[:] = [
        build_issuance_answer(
            ingest, DEVICE, enrollment="pkg-1", status="refused", code="citizen_invalid"
        )
    ]
    with pytest.raises(ApplianceError) as exc:
        client.wait("pkg-1", timeout_s=30, ask_every_s=0.05)
    assert exc.value.code == "issuance_refused" and exc.value.details["cause"] == "citizen_invalid"

    with pytest.raises(ApplianceError) as exc:  # nobody answers
        client.wait("pkg-1", timeout_s=0.3, ask_every_s=0.05)
    assert exc.value.code == "issuance_timeout" and exc.value.retryable
    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(ApplianceError) as exc:
        client.wait("pkg-1", timeout_s=30, cancelled=cancelled)
    assert exc.value.code == "cancelled"
