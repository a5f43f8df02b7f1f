"""Pulling the card out of the sim kit's reader during ``card.encode``, shared by
tests/faults/test_enrollment_faults.py (a few fixed points, CI) and bench/enrollment_faults.py
``--pull-card N`` (the seeded loop).

Nothing is faked: the card is the sim kit's emulator process behind the daemon's private pcscd
+ vpcd, and pulling it is ``kill -9`` of that process, which ends its vpcd connection (the card
leaves the field; pcscd reports it removed). The sim kit then inserts the next citizen's card, a
new emulator with a blank card (appliance/simulation.py, ``CARD_REINSERT_S`` later). The kiosk
is driven as the fleet drives it: an issuance package built centrally from the verified
enrollment (:func:`appliance.central.issue.build_for_enrollment`, the Document Signer of the sim
kit's test PKI) sent as ``card.encode`` through the controller, as ``appliance fleet issue``
does.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.central.citizens import Citizen, CitizenDirectory
from appliance.central.issue import DocumentSigner, build_for_enrollment
from tests.helpers import drain_json, get_json

from .rig import EnrollmentFaultRig

REPLY_TIMEOUT_S = 90.0  # card.encode's own deadline is 60 s: past this the command hung
REINSERT_TIMEOUT_S = 30.0

# Outcomes of one encode with a pull (PullOutcome.outcome besides the error codes):
ISSUED_BEFORE_PULL = "issued_before_pull"  # the reply came first; the pull came after
ISSUED_ON_NEW_CARD = "issued_on_reinserted_card"  # pulled before its first APDU; the next card
ISSUED_AFTER_LAST_APDU = "issued_pull_after_last_apdu"  # pulled between the read-back and reply
HUNG = "hung"
# What a pulled card may be answered with: spoiled (something was written), or, when nothing
# was, the card's absence itself.
PULL_ERRORS = ("card_spoiled", "card_removed", "card_mute", "no_card")


@dataclass
class PullPoint:
    """Where to pull: ``delay_s`` after the ``card.encode`` progress event ``step`` reached this
    process, or after the command was sent when ``step`` is None."""

    step: str | None
    delay_s: float

    def __str__(self) -> str:
        return f"{self.step or 'send'}+{self.delay_s * 1000:.1f}ms"


@dataclass
class PullOutcome:
    point: PullPoint
    outcome: str  # one of the constants above, or the reply's error code
    reply: dict[str, Any] | None
    pulled_before_reply: bool
    reply_after_pull_s: float | None = None
    step: str | None = None  # the step the error named (details.step)
    cause: str | None = None  # card_spoiled's cause code, else the error code
    reply_pa_passed: bool | None = None  # issued: the kiosk's own read-back + PA
    readback_passed: bool | None = None  # issued: card.read of the card in the reader, PA
    reinserted: bool = False
    status_ok: bool = False
    card_status_ok: bool = False
    health_ok: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def issued(self) -> bool:
        return self.outcome.startswith("issued")

    @property
    def names_step(self) -> bool:
        return bool(self.step)


@dataclass
class Timeline:
    """One clean encode, measured: seconds from the send to each step's progress event and to
    the reply."""

    total_s: float
    steps: list[tuple[str, float]]

    def step_durations(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for i, (name, t) in enumerate(self.steps):
            nxt = self.steps[i + 1][1] if i + 1 < len(self.steps) else self.total_s
            out[name] = max(0.0, nxt - t)
        return out


class CardPuller:
    """Drives ``card.encode`` on a rig started with ``card=True`` and pulls the card."""

    def __init__(self, rig: EnrollmentFaultRig) -> None:
        if not rig.card:
            raise ValueError("the rig needs card=True")
        self.rig = rig
        self.ctl = rig.ctl
        self.dev = rig.device
        self.progress = self.ctl.subscribe(f"kiosk/{self.dev}/events/command.progress")
        self.inserted = self.ctl.subscribe(f"kiosk/{self.dev}/events/card.inserted")
        self._enrollment: dict[str, Any] | None = None
        self._citizen: Citizen | None = None
        self._signer: DocumentSigner | None = None
        self.pulls = 0

    # -- the citizen and the package ---------------------------------------------------------

    def prepare(self) -> None:
        """One enrollment verified at the centre, so there is a portrait to issue from."""
        if self.rig.store.find_enrollment(device=self.dev, package_id=None, citizen_ref=None):
            return
        if self.rig.drive() is None:
            raise AssertionError("the enrollment before the card pulls did not finish")
        self.rig.settle()

    def _sources(self) -> tuple[dict[str, Any], Citizen, DocumentSigner]:
        if self._enrollment is None:
            enr = self.rig.store.find_enrollment(device=self.dev, package_id=None, citizen_ref=None)
            assert enr is not None, "no verified enrollment to issue from (call prepare)"
            self._enrollment = enr
            ref = str(enr["summary"].get("citizen_ref"))
            self._citizen = CitizenDirectory(None, synthetic=True).get(ref)
            self._signer = DocumentSigner.load(self.rig.daemon.state_dir / "sim" / "pki")
        assert self._citizen is not None and self._signer is not None
        return self._enrollment, self._citizen, self._signer

    def package(self) -> dict[str, Any]:
        """A fresh issuance package (new id, signed now) for the enrolled citizen."""
        enr, citizen, signer = self._sources()
        pkg = build_for_enrollment(self.rig.store, self.dev, enr["package_id"], citizen, signer)
        return dict(pkg.model_dump(mode="json"))

    def read_back(self) -> bool:
        """``card.read`` of the card in the reader with the citizen's MRZ data: True when its
        Passive Authentication passes and it carries the citizen's document number."""
        _e, citizen, _s = self._sources()
        td1 = citizen.td1()
        r = self.ctl.request(
            self.dev,
            "card.read",
            {"document_number": td1.document_number, "birth": td1.birth, "expiry": td1.expiry},
            timeout=60,
        )
        if not r.get("ok"):
            return False
        res = r["result"]
        return bool(
            res["passive_authentication"]["passed"] is True
            and res["dg1"]["document_number"] == td1.document_number
        )

    # -- the card ----------------------------------------------------------------------------

    def emulator_pid(self) -> int:
        """The sim kit's current card emulator, from the daemon's log (the last one started)."""
        found = re.findall(r"card emulator pid (\d+)", self.rig.daemon.log())
        assert found, "the daemon did not start the card emulator"
        pid = int(found[-1])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        assert b" sim card " in cmdline, f"pid {pid} is not the card emulator: {cmdline!r}"
        return pid

    def pull(self) -> float:
        """The citizen pulls the card out now: ``kill -9`` of the emulator process. Returns the
        monotonic time of the pull."""
        pid = self.emulator_pid()
        _drain(self.inserted)  # from here on, an insertion is the next card
        t = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        self.pulls += 1
        return t

    def wait_reinserted(self, timeout: float = REINSERT_TIMEOUT_S) -> bool:
        """Wait for the next ``card.inserted`` event (the new blank card)."""
        try:
            get_json(self.inserted, timeout)
        except AssertionError:
            return False
        return True

    def kiosk_answers(self, out: PullOutcome) -> None:
        """After a re-insert: ``status`` and ``card.status`` answer, the reader's health is
        ``ok`` and a card is in it."""
        st = self.ctl.request(self.dev, "status", timeout=10)
        out.status_ok = bool(st.get("ok"))
        cs = self.ctl.request(self.dev, "card.status", timeout=10)
        out.card_status_ok = bool(cs.get("ok"))
        if out.card_status_ok:
            res = cs["result"]
            out.health_ok = res["health"] == "ok" and res["card_present"] is True
            if not res["card_present"]:
                out.notes.append("no card present after the re-insert")
        if out.status_ok and st["result"]["devices"]["card"]["state"] != "ok":
            out.health_ok = False

    # -- encodes -----------------------------------------------------------------------------

    def timeline(self) -> tuple[Timeline, dict[str, Any]]:
        """One clean encode with the progress steps timed; returns the timeline and the reply
        (the card stays in the reader, issued)."""
        _drain(self.progress)
        pkg = self.package()
        t0 = time.monotonic()
        replies = self.ctl.send(self.dev, "card.encode", pkg)
        steps: list[tuple[str, float]] = []
        while True:
            try:
                reply = replies.get_nowait()
                break
            except queue.Empty:
                pass
            if time.monotonic() - t0 > REPLY_TIMEOUT_S:
                raise AssertionError("card.encode did not answer")
            step = _next_step(self.progress, 0.001)
            if step is not None and (not steps or steps[-1][0] != step):
                steps.append((step, time.monotonic() - t0))
        total = time.monotonic() - t0
        for step in _steps_left(self.progress):
            if not steps or steps[-1][0] != step:
                steps.append((step, total))
        return Timeline(total, steps), reply

    def encode_with_pull(self, point: PullPoint) -> PullOutcome:
        """Start ``card.encode`` onto the blank card in the reader, pull the card at ``point``,
        classify the answer, and wait until a blank card is back in the reader."""
        _drain(self.progress)
        pkg = self.package()
        t_send = time.monotonic()
        replies = self.ctl.send(self.dev, "card.encode", pkg)
        reply: dict[str, Any] | None = None
        t_mark = t_send
        if point.step is not None:
            reply = self._until_step(replies, point.step, t_send + REPLY_TIMEOUT_S)
            t_mark = time.monotonic()
        if reply is None:
            # A random point inside the encode (an injection point, not a wait for a condition).
            try:
                reply = replies.get(timeout=max(0.0, t_mark + point.delay_s - time.monotonic()))
            except queue.Empty:
                reply = None
        out = PullOutcome(point, "", reply, pulled_before_reply=reply is None)
        t_pull = 0.0
        if reply is None:
            t_pull = self.pull()
            try:
                reply = replies.get(timeout=REPLY_TIMEOUT_S)
                out.reply_after_pull_s = round(time.monotonic() - t_pull, 4)
            except queue.Empty:
                reply = None
            out.reply = reply
        self._classify(out)
        # Leave a blank card in the reader for the next round.
        if out.outcome in (ISSUED_BEFORE_PULL, ISSUED_ON_NEW_CARD):
            # the citizen takes the issued card away; the next citizen's card goes in
            self.pull()
        out.reinserted = self.wait_reinserted()
        if out.reinserted:
            self.kiosk_answers(out)
        return out

    def _until_step(
        self, replies: queue.Queue[dict[str, Any]], step: str, deadline: float
    ) -> dict[str, Any] | None:
        """Wait for ``step``'s progress event; the reply instead if it comes first."""
        while time.monotonic() < deadline:
            try:
                return replies.get_nowait()
            except queue.Empty:
                pass
            if _next_step(self.progress, 0.0005) == step:
                return None
        return None

    def _classify(self, out: PullOutcome) -> None:
        reply = out.reply
        if reply is None:
            out.outcome = HUNG
            return
        if reply.get("ok") and reply["result"].get("outcome") == "issued":
            pa = reply["result"].get("passive_authentication") or {}
            out.reply_pa_passed = pa.get("passed") is True
            # Independent check: read the card in the reader as a relying party would.
            out.readback_passed = self.read_back()
            if not out.pulled_before_reply:
                out.outcome = ISSUED_BEFORE_PULL
            elif out.readback_passed:
                # The pulled card was never touched (the pull came before the encode's first
                # APDU, while it waited for a card): the re-inserted card was written.
                out.outcome = ISSUED_ON_NEW_CARD
            else:
                out.outcome = ISSUED_AFTER_LAST_APDU
            return
        err = reply.get("error") or {}
        out.outcome = str(err.get("code"))
        details = err.get("details") or {}
        out.step = details.get("step")
        cause = details.get("cause")
        out.cause = str(cause.get("code")) if isinstance(cause, dict) else out.outcome


def _drain(q: queue.Queue[Any]) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return


def _next_step(q: queue.Queue[tuple[str, bytes, bool]], timeout: float) -> str | None:
    """The step of the next ``card.encode`` progress event, or None if none came in time."""
    try:
        _t, payload, _r = q.get(timeout=timeout) if timeout else q.get_nowait()
    except queue.Empty:
        return None
    data = json.loads(payload)["data"]
    return str(data["step"]) if data.get("command") == "card.encode" else None


def _steps_left(q: queue.Queue[tuple[str, bytes, bool]]) -> list[str]:
    return [
        str(m["data"]["step"]) for m in drain_json(q) if m["data"].get("command") == "card.encode"
    ]
