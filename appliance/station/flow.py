"""The station's flow: the enrollment as a state machine run on the kiosk (docs/local-api.md).

Screens, in order: ``welcome`` → ``officer`` (attended kiosks, until an officer signs in) →
``identify`` (CCCD number, looked up in the central directory) → ``confirm`` (the record, with
correction requests) → ``consent`` → ``portrait`` (live guidance) → ``fingers`` (4-4-2, live
guidance, skips approved by a supervisor) → ``review`` → (``card``, when the citizen asked for
instant issuance and the kiosk offers it) → ``receipt``. ``cancel`` from any screen
ends the session (its sealed records are shredded) and goes back to ``welcome``; so does the idle
timeout (``station.idle_timeout_s``) and a cancel from the fleet (``enrollment.cancel``).

The state (one row of table ``station_flow``, created by :func:`ensure_station_schema`) is
written at every change, so after ``kill -9`` or a power cut the screen comes back where it was;
a capture that was running is simply offered again, as the session itself does. Each screen
change is a durable ``station.state`` event for the fleet (no personal data in it).

Captures, lookups and the submit run on one worker thread: an action returns at once with
``busy`` set, and the outcome arrives as a new state.

The ``card`` screen (instant issuance) follows the submit on the same worker thread: the card's
``step`` is ``waiting_data`` (the station asks the centre for the signed issuance package of the
enrollment just submitted: :class:`~appliance.station.issuance.IssuanceClient`) →
``insert_card`` → ``writing`` (the encoder's steps go to the screen as ``card`` stream
messages; "do not remove the card") → ``issued`` or ``failed`` (the error, e.g.
``card_spoiled`` for a card pulled mid-write: the encoder never reports such a card issued).
From ``failed`` the officer may try another blank card (``card_retry``) or give the receipt
without a card (``card_done``). After a restart a card step that was waiting goes on waiting; a
write that was running is ``failed`` with ``interrupted`` (that card may be half-written).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from ..config import StationSection
from ..errors import ApplianceError, DeviceTimeout
from ..protocol.codes import ErrorCode
from ..store import Store
from .backend import Backend
from .officers import authenticate, officer_templates

log = logging.getLogger(__name__)

Screen = Literal[
    "welcome",
    "officer",
    "identify",
    "confirm",
    "consent",
    "portrait",
    "fingers",
    "review",
    "card",
    "receipt",
]
CardStep = Literal["waiting_data", "insert_card", "writing", "issued", "failed"]
CARD_WAITING = ("waiting_data", "insert_card")
SESSION_SCREENS = ("portrait", "fingers", "review")
SKIP_REASONS = ("missing", "bandaged", "unreadable", "other")

STATION_SCHEMA_SQL = [
    """CREATE TABLE IF NOT EXISTS station_flow (
        id INTEGER PRIMARY KEY CHECK (id = 1),  -- one station per kiosk
        state TEXT NOT NULL,                    -- the flow's state as JSON (no biometric byte)
        updated REAL NOT NULL                   -- wall clock of the last change
    )"""
]


def ensure_station_schema(store: Store) -> None:
    """The station's table in the daemon's store (the store knows no feature)."""
    with store.lock:
        for statement in STATION_SCHEMA_SQL:
            store.conn.execute(statement)


class StationError(ApplianceError):
    """An action the flow refuses: wrong screen, missing consent, bad input."""

    code = ErrorCode.STATION_STATE


def _initial(cfg: StationSection) -> dict[str, Any]:
    return {
        "screen": "welcome",
        "seq": 0,
        "language": cfg.language,
        "attended": cfg.attended,
        "officer": None,
        "citizen": None,
        "enrollment": None,
        "corrections": [],
        "session_id": None,
        "plan": [],
        "fingers": [],
        "current_finger": None,
        "portrait": None,
        "approvals": [],
        "busy": None,
        "error": None,
        "receipt": None,
        "notice": None,
        "issuance": False,  # the citizen asked for the card at consent
        "issuance_offered": False,  # the consent screen offers the card
        "card": None,  # the card screen: {step, enrollment, ..., error, result}
        "updated": time.time(),
    }


class Flow:
    """The station's state machine. Thread-safe; listeners get every message for the screen."""

    def __init__(
        self,
        *,
        store: Store,
        backend: Backend,
        config: StationSection,
        emit: Callable[..., object],
        clock: Callable[[], float] = time.time,
        instant_issuance: bool = False,
        card_data_timeout_s: float = 120.0,
        card_insert_timeout_s: float = 120.0,
    ) -> None:
        # enrollment.instant_issuance: the consent screen offers the card (when the kiosk also
        # has an encoder and asks a centre: Backend.issuance_available)
        self.instant_issuance = instant_issuance
        self.card_data_timeout_s = card_data_timeout_s
        self.card_insert_timeout_s = card_insert_timeout_s
        self.store = store
        self.backend = backend
        self.config = config
        self.emit = emit
        self.clock = clock
        self._lock = threading.RLock()
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="station")
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._cancelling: str | None = None
        self._generation = 0  # bumped when the flow is abandoned: late job outcomes are dropped
        self._last_activity = clock()
        ensure_station_schema(store)
        self.state = self._load()
        self._announced = self._announce_key(self.state)  # last station.state sent
        backend.add_listener(self._on_manager_event)

    # -- persistence --------------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        with self.store.lock:
            row = self.store.conn.execute("SELECT state FROM station_flow WHERE id=1").fetchone()
        state = _initial(self.config)
        if row is None:
            return state
        saved = json.loads(row[0])
        state.update(saved)
        state["attended"] = self.config.attended
        if state["busy"]:
            # A capture or submit that was running when the daemon died: offer it again.
            state["notice"] = "interrupted"
            state["busy"] = None
        sid = state.get("session_id")
        if state["screen"] in SESSION_SCREENS and sid != self.backend.active_session():
            # The session ended while we were down (aborted as too old, cancelled).
            log.info("station: session %s no longer active after the restart", sid)
            state = {**_initial(self.config), "officer": state["officer"], "seq": state["seq"]}
            state["notice"] = "session_ended"
        elif sid and state["screen"] in SESSION_SCREENS:
            self._refresh_fingers(state)
        card = state.get("card")
        if state["screen"] == "card" and card and card.get("step") == "writing":
            # The write was running when the daemon died: that card may be half-written.
            state["card"] = {
                **card,
                "step": "failed",
                "error": {
                    "code": ErrorCode.INTERRUPTED,
                    "message": "the kiosk restarted while the card was written",
                    "details": {},
                },
            }
        return state

    def _save(self) -> None:
        body = {k: v for k, v in self.state.items() if k != "attended"}
        with self.store.transaction() as c:
            c.execute(
                "INSERT INTO station_flow (id, state, updated) VALUES (1, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET state=excluded.state, updated=excluded.updated",
                (json.dumps(body, ensure_ascii=False), self.clock()),
            )

    # -- listeners ----------------------------------------------------------------------------

    def subscribe(self, fn: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(fn)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._listeners:
                    self._listeners.remove(fn)

        return unsubscribe

    def _send(self, message: dict[str, Any]) -> None:
        for fn in list(self._listeners):
            try:
                fn(message)
            except Exception:
                log.exception("station listener failed")

    def broadcast(self, message: dict[str, Any]) -> None:
        """Send ``message`` to every listener (the local API's ``bye`` at shutdown)."""
        self._send(message)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return json.loads(json.dumps(self.state))  # type: ignore[no-any-return]

    def _changed(self, **changes: Any) -> dict[str, Any]:
        """Apply ``changes``, persist, tell the screen (and the fleet on a new screen)."""
        with self._lock:
            self.state.update(changes)
            self.state["seq"] += 1
            self.state["updated"] = self.clock()
            self._save()
            snap = self.snapshot()
            key = self._announce_key(snap)
            announce = key != self._announced
            self._announced = key
        self._send({"type": "state", "state": snap})
        if announce:
            card = snap.get("card") or {}
            self.emit(
                "station.state",
                {
                    "screen": snap["screen"],
                    "session_id": snap["session_id"],
                    "busy": snap["busy"],
                    "notice": snap["notice"],
                    "current_finger": snap["current_finger"],
                    "card_step": card.get("step"),
                    "card_error": (card.get("error") or {}).get("code"),
                },
            )
        return snap

    @staticmethod
    def _announce_key(state: Mapping[str, Any]) -> tuple[Any, ...]:
        """What the fleet hears of: the screen, ``busy`` and the card's step."""
        return (state["screen"], state["busy"], (state.get("card") or {}).get("step"))

    def touch(self) -> None:
        self._last_activity = self.clock()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._ticker = threading.Thread(target=self._tick_loop, name="station-idle", daemon=True)
        self._ticker.start()
        with self._lock:
            card = self.state.get("card")
            if self.state["screen"] == "card" and card and card.get("step") in CARD_WAITING:
                # Waiting for the data or the card when the daemon died: wait again (the
                # centre is simply asked again; nothing of its answer was kept).
                self._run("card", self._card_job, card=self._card_at("waiting_data"))

    def stop(self) -> None:
        self._stop.set()
        self._worker.shutdown(wait=False, cancel_futures=True)
        if self._ticker is not None:
            self._ticker.join(timeout=5)

    def _tick_loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.tick()
            except Exception:
                log.exception("station idle check failed")

    def tick(self) -> None:
        """Cancel (and shred) a flow left idle longer than ``idle_timeout_s``."""
        with self._lock:
            idle = self.clock() - self._last_activity
            if self.state["screen"] == "welcome" or self.state["busy"]:
                if self.state["busy"]:
                    self.touch()
                return
            if idle < self.config.idle_timeout_s:
                return
        log.info("station: idle %.0f s, cancelling the flow", idle)
        self._abandon("idle_timeout", "idle timeout at the station", sign_out=True)

    # -- helpers ------------------------------------------------------------------------------

    def _expect(self, *screens: str) -> None:
        if self.state["screen"] not in screens:
            raise StationError(
                f"not possible on the {self.state['screen']} screen "
                f"(expected {', '.join(screens)})",
                details={"screen": self.state["screen"]},
            )
        if self.state["busy"]:
            raise StationError(
                f"the station is busy ({self.state['busy']})", code=ErrorCode.BUSY, retryable=True
            )

    def _abandon(self, notice: str, reason: str, *, sign_out: bool = False) -> None:
        self.backend.abort()  # a running capture stops at its next safe point
        with self._lock:
            self._generation += 1
            sid = self.state["session_id"]
            if sid and self.backend.active_session() == sid:
                self._cancelling = sid
                try:
                    self.backend.cancel(reason)
                except ApplianceError as exc:
                    log.warning("station: cancel of %s failed: %s", sid, exc.message)
                finally:
                    self._cancelling = None
            officer = None if sign_out or not self.config.attended else self.state["officer"]
            fresh = _initial(self.config)
            # The next citizen starts in the kiosk's language; a cancel keeps the language of
            # the citizen who is still there to read the notice.
            language = self.config.language if sign_out else self.state["language"]
            fresh.update(seq=self.state["seq"], officer=officer, language=language, notice=notice)
            self.state = fresh
            self.touch()
        self._changed()

    def _on_manager_event(self, type_: str, data: Mapping[str, Any]) -> None:
        if type_ not in ("enrollment.cancelled", "enrollment.aborted"):
            return
        sid = data.get("session_id")
        if sid and sid == self.state.get("session_id") and sid != self._cancelling:
            log.info("station: session %s ended from outside (%s)", sid, type_)
            threading.Thread(
                target=self._abandon, args=("cancelled_remote", "ended by the fleet"), daemon=True
            ).start()

    def _run(self, busy: str, job: Callable[[], None], **changes: Any) -> dict[str, Any]:
        snap = self._changed(busy=busy, error=None, notice=None, **changes)
        generation = self._generation

        def wrapped() -> None:
            try:
                job()
            except ApplianceError as exc:
                if generation == self._generation:
                    self._changed(busy=None, error=exc.to_dict())
            except Exception as exc:
                log.exception("station: %s failed", busy)
                if generation == self._generation:
                    self._changed(
                        busy=None, error={"code": ErrorCode.INTERNAL_ERROR, "message": str(exc)}
                    )

        self._worker.submit(wrapped)
        return snap

    def _refresh_fingers(self, state: dict[str, Any]) -> None:
        review = self.backend.review()
        by_pos = {f["position"]: f for f in review["fingers"]}
        fingers = []
        for p in state["plan"] + [
            f["position"] for f in review["fingers"] if f["position"] not in state["plan"]
        ]:
            f = by_pos.get(p)
            fingers.append(
                {
                    "position": p,
                    "status": f["status"] if f else "todo",
                    "quality": f.get("quality") if f else None,
                    "reason": f.get("reason") if f else None,
                    "attempts": f.get("attempts") if f else None,
                }
            )
        state["fingers"] = fingers
        state["current_finger"] = review["remaining"][0] if review["remaining"] else None
        state["portrait"] = review["portrait"]

    # -- actions ------------------------------------------------------------------------------

    def set_language(self, language: str) -> dict[str, Any]:
        self.touch()
        return self._changed(language=language)

    def begin(self) -> dict[str, Any]:
        self.touch()
        with self._lock:
            self._expect("welcome")
            attended = self.config.attended and self.state["officer"] is None
            return self._changed(screen="officer" if attended else "identify", notice=None)

    def sign_in(self, officer_id: str, secret: str) -> dict[str, Any]:
        self.touch()
        with self._lock:
            self._expect("officer")
            officer = authenticate(self.config.officers, officer_id, secret, now=self.clock())
            log.info("station: officer %s signed in", officer.id)
            return self._changed(screen="identify", officer=officer.public(), error=None)

    def sign_out(self) -> dict[str, Any]:
        self.touch()
        with self._lock:
            self._expect("welcome", "identify")
            return self._changed(screen="welcome", officer=None)

    def lookup(self, number: str) -> dict[str, Any]:
        self.touch()
        with self._lock:
            self._expect("identify")

            def job() -> None:
                result = self.backend.lookup(number)
                if result["status"] != "found" or not result["citizen"]:
                    self._changed(
                        busy=None,
                        error={
                            "code": "citizen_" + result["status"],
                            "message": f"lookup of {number}: {result['status']}",
                            "details": {"field": "number"},
                        },
                    )
                    return
                self._changed(
                    busy=None,
                    screen="confirm",
                    citizen=result["citizen"],
                    enrollment=result["enrollment"],
                    corrections=[],
                )

            return self._run("lookup", job)

    def confirm(self, corrections: list[dict[str, Any]]) -> dict[str, Any]:
        self.touch()
        with self._lock:
            self._expect("confirm")
            citizen = self.state["citizen"] or {}
            fixed = [
                {
                    "field": c["field"],
                    "original": citizen.get(c["field"]),
                    "requested": c["requested"],
                }
                for c in corrections
            ]
            offered = self.instant_issuance and self.backend.issuance_available()
            return self._changed(
                screen="consent", corrections=fixed, error=None, issuance_offered=offered
            )

    def back(self) -> dict[str, Any]:
        self.touch()
        with self._lock:
            self._expect("confirm", "consent")
            screen = "identify" if self.state["screen"] == "confirm" else "confirm"
            return self._changed(screen=screen, error=None)

    def consent(self, accepted: bool, issuance: bool = False) -> dict[str, Any]:
        self.touch()
        with self._lock:
            self._expect("consent")
            if not accepted:
                self._abandon("consent_declined", "the citizen declined")
                return self.snapshot()
            if issuance and not self.state.get("issuance_offered"):
                raise StationError(
                    "this kiosk does not issue cards on the spot",
                    code=ErrorCode.ISSUANCE_DISABLED,
                    details={"field": "issuance"},
                )
            citizen = self.state["citizen"] or {}
            officer = self.state["officer"] if self.config.attended else None
            started = self.backend.start(
                str(citizen.get("citizen_ref")), self.state["corrections"], issuance, officer
            )
            state = {
                **self.state,
                "session_id": started["session_id"],
                "plan": started["plan"],
                "approvals": [],
            }
            self._refresh_fingers(state)
            return self._changed(
                screen="portrait",
                session_id=state["session_id"],
                plan=state["plan"],
                fingers=state["fingers"],
                current_finger=state["current_finger"],
                portrait=None,
                approvals=[],
                error=None,
                issuance=issuance,
            )

    def capture_portrait(self) -> dict[str, Any]:
        self.touch()
        with self._lock:
            self._expect("portrait")

            def progress(step: str, data: Mapping[str, Any]) -> None:
                if step == "guidance":  # the camera's verdict, every guidance_interval_s
                    self.touch()
                    self._send({"type": "guidance", **data, "sent_at": time.time()})

            def preview(_kind: str, data: Mapping[str, Any]) -> None:
                self.touch()
                self._send({"type": "preview", **data})

            def job() -> None:
                try:
                    info = self.backend.portrait(progress, preview)
                finally:
                    self._send({"type": "preview_end"})
                portrait = {"quality": info["quality"], "met": info["met"]}
                self._changed(busy=None, screen="fingers", portrait=portrait)

            return self._run("portrait", job)

    def capture_finger(self) -> dict[str, Any]:
        self.touch()
        with self._lock:
            self._expect("fingers")
            position = self.state["current_finger"]
            if position is None:
                raise StationError("every finger is done", code=ErrorCode.NOTHING_TO_CAPTURE)

            def progress(step: str, data: Mapping[str, Any]) -> None:
                # waiting_for_finger, lift (the image is in the sensor's buffer: the citizen
                # may lift the finger while it travels over the serial line), captured,
                # quality, retry.
                self.touch()
                msg = {k: v for k, v in data.items() if k != "position"}
                self._send({"type": "progress", "position": position, "step": step, **msg})

            officer = self.state["officer"]
            refuse = officer_templates(self.config.officers, officer["id"]) if officer else []

            def job() -> None:
                try:
                    self.backend.finger(position, progress, refuse=refuse)
                except DeviceTimeout as exc:
                    self._changed(busy=None, error=exc.to_dict())
                    return
                self._after_finger()

            return self._run("finger", job)

    def _after_finger(self) -> None:
        with self._lock:
            state = dict(self.state)
            self._refresh_fingers(state)
            screen = "review" if state["current_finger"] is None else "fingers"
            self._changed(
                busy=None,
                screen=screen,
                fingers=state["fingers"],
                current_finger=state["current_finger"],
                portrait=state["portrait"],
            )

    def skip_finger(
        self, position: int, reason: str, supervisor_id: str, secret: str
    ) -> dict[str, Any]:
        """A finger not captured (missing, bandaged...): a supervisor approves it on the spot."""
        self.touch()
        with self._lock:
            self._expect("fingers")
            if reason not in SKIP_REASONS:
                raise StationError(
                    f"reason must be one of {', '.join(SKIP_REASONS)}",
                    code=ErrorCode.INVALID_ARGS,
                    details={"field": "reason"},
                )
            supervisor = authenticate(
                self.config.officers, supervisor_id, secret, supervisor=True, now=self.clock()
            )
            officer = self.state["officer"]
            # The approval travels in the signed package's exceptions[].detail.
            detail = f"approved by supervisor {supervisor.id}"
            if officer:
                detail += f"; officer {officer['id']}"
            self.backend.skip(position, reason, detail)
            approvals = [
                *self.state["approvals"],
                {"position": position, "reason": reason, "supervisor": supervisor.id},
            ]
            self.state["approvals"] = approvals
        self._after_finger()
        return self.snapshot()

    def submit(self) -> dict[str, Any]:
        self.touch()
        with self._lock:
            self._expect("review")

            def job() -> None:
                done = self.backend.finish()
                receipt = {
                    "reference": done["package_id"],
                    "records": done["records"],
                    "finished_at": self.clock(),
                }
                citizen = self.state["citizen"] or {}
                if not self.state.get("issuance"):
                    self._changed(
                        busy=None, screen="receipt", receipt=receipt, citizen=None, corrections=[]
                    )
                    return
                # The card: the citizen's reference and number stay (in the card step only)
                # until the card is done, to check the centre's package is theirs.
                card = {
                    "step": "waiting_data",
                    "enrollment": done["package_id"],
                    "citizen_ref": citizen.get("citizen_ref"),
                    "personal_id": citizen.get("personal_id"),
                    "attempt": 1,
                    "error": None,
                    "result": None,
                }
                self._changed(
                    busy="card",
                    screen="card",
                    receipt=receipt,
                    citizen=None,
                    corrections=[],
                    card=card,
                )
                self._card_job()

            return self._run("submit", job)

    # -- the card (instant issuance) ------------------------------------------------------------

    def _card_at(self, step: str, **extra: Any) -> dict[str, Any]:
        return {**(self.state.get("card") or {}), "step": step, **extra}

    def _card_job(self) -> None:
        """On the worker thread: the package, the card, the write; the outcome as a state."""
        generation = self._generation
        card = dict(self.state["card"] or {})
        try:
            package = self.backend.card_package(
                str(card["enrollment"]),
                str(card["citizen_ref"]),
                str(card["personal_id"]),
                self.card_data_timeout_s,
            )
            if generation != self._generation:
                return
            self._changed(card=self._card_at("insert_card"))
            self.backend.wait_card(self.card_insert_timeout_s)
            if generation != self._generation:
                return
            self._changed(card=self._card_at("writing"))

            def on_step(step: str) -> None:
                self.touch()
                self._send({"type": "card", "step": step})

            result = self.backend.card_encode(package, on_step)
        except ApplianceError as exc:
            if generation == self._generation:
                log.warning("station: card not issued: %s: %s", exc.code, exc.message)
                self._changed(busy=None, card=self._card_at("failed", error=exc.to_dict()))
            return
        except Exception as exc:
            log.exception("station: the card step failed")
            if generation == self._generation:
                error = {"code": ErrorCode.INTERNAL_ERROR, "message": str(exc), "details": {}}
                self._changed(busy=None, card=self._card_at("failed", error=error))
            return
        if generation != self._generation:
            return
        summary = {
            "outcome": result.outcome,
            "package_id": result.package_id,
            "document_number": result.document_number,  # masked
            "apdus": result.apdus,
            "duration_ms": result.duration_ms,
        }
        log.info("station: card issued (%s)", result.package_id)
        self._changed(busy=None, card=self._card_at("issued", result=summary, error=None))

    def card_retry(self) -> dict[str, Any]:
        """Another blank card after a failure (the centre's package is asked for again)."""
        self.touch()
        with self._lock:
            self._expect("card")
            card = self.state["card"] or {}
            if card.get("step") != "failed":
                raise StationError(
                    "only a failed card may be tried again", details={"card_step": card.get("step")}
                )
            retry = self._card_at(
                "waiting_data", error=None, attempt=int(card.get("attempt", 1)) + 1
            )
            return self._run("card", self._card_job, card=retry)

    def card_done(self) -> dict[str, Any]:
        """From the card to the receipt: the citizen's number leaves the state."""
        self.touch()
        with self._lock:
            self._expect("card")
            card = self.state["card"] or {}
            if card.get("step") not in ("issued", "failed"):
                raise StationError(
                    "the card is not finished", details={"card_step": card.get("step")}
                )
            receipt = {
                **(self.state["receipt"] or {}),
                "card": "issued" if card.get("step") == "issued" else "not_issued",
            }
            return self._changed(screen="receipt", receipt=receipt, card=None, error=None)

    def done(self) -> dict[str, Any]:
        self.touch()
        with self._lock:
            self._expect("receipt")
            officer = self.state["officer"] if self.config.attended else None
            fresh = _initial(self.config)
            fresh.update(seq=self.state["seq"], officer=officer)  # the kiosk's language again
            self.state = fresh
        return self._changed()

    def cancel(self, reason: str = "cancelled at the station") -> dict[str, Any]:
        self.touch()
        with self._lock:
            if self.state["screen"] == "card" and self.state["busy"]:
                # The enrollment is submitted; stopping now could spoil a card mid-write.
                raise StationError(
                    "the card is being made: wait for it to finish",
                    code=ErrorCode.BUSY,
                    retryable=True,
                )
        self._abandon("cancelled", reason)
        return self.snapshot()
