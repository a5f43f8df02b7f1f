"""The enrollment session on the kiosk: plan, captures, sealing, package (docs/enrollment.md).

State lives in SQLite (tables ``enrollment_sessions``, ``enrollment_records``) and is updated
at every step in one transaction; biometric bytes never do: each record is hashed, chained,
sealed to the central key into the sealed store and wiped at the moment of capture. The
captures themselves are the capability services (:class:`~appliance.capabilities.PortraitCapture`,
:class:`~appliance.capabilities.FingerCapture`), the same the MQTT ``camera.capture`` and
``fingerprint.capture`` adapters call, so the session adds orchestration, not a second capture
path. The public methods take a :class:`~appliance.capabilities.Job`, not an MQTT command
context: the MQTT ``enrollment.*`` handlers (:func:`register`) and the kiosk's local screen
call them alike.

Each captured finger's sensor template is kept in memory for the session only (never on disk,
never logged, wiped when the session ends): a later finger that matches one of them is refused
with ``duplicate_finger`` and its position may be captured again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .. import __version__
from ..capabilities.base import Job
from ..capabilities.finger import DUPLICATE_FINGER, OFFICER_FINGER, ReferenceTemplate
from ..citizen.lookup import CORRECTABLE, CorrectionRequest, check_corrections
from ..citizen.validation import CitizenDataInvalid
from ..commands import CommandContext, CommandRegistry
from ..errors import Busy, CommandError, DeviceError, DeviceTimeout
from ..protocol.codes import ErrorCode
from ..protocol.package import Manifest
from ..store import Store
from ..timekeeping import Clock
from ..trust.keys import DeviceIdentity
from ..trust.sealed import SealedStore
from . import package as pk
from .space import Estimate, check_room, free_bytes, worst_case

if TYPE_CHECKING:
    from ..capabilities.finger import FingerCapture
    from ..capabilities.portrait import OnFrame, PortraitCapture

log = logging.getLogger(__name__)

POSITIONS = range(1, 11)
POLICIES: dict[str, list[int]] = {
    # CCCD enrollment practice: slaps 4-4-2 (right four, left four, thumbs), finger by finger.
    "4-4-2": [2, 3, 4, 5, 7, 8, 9, 10, 1, 6],
    "all": list(range(1, 11)),
}
SkipReason = Literal["missing", "bandaged", "unreadable", "other"]


def plan_for(policy: str | list[int], exceptions: list[int]) -> list[int]:
    base = POLICIES[policy] if isinstance(policy, str) else list(policy)
    return [p for p in base if p not in set(exceptions)]


# --- command arguments ---------------------------------------------------------------------


class ExceptionArg(BaseModel):
    model_config = ConfigDict(extra="forbid")

    position: int = Field(ge=1, le=10, description="ISO/IEC 19794-4 finger position")
    reason: SkipReason = Field(description="missing, bandaged, unreadable or other")
    detail: str = Field("", max_length=200, description="Free text for the operator")


class OperatorArg(BaseModel):
    """The officer running an attended enrollment (the station's signed-in officer)."""

    model_config = ConfigDict(extra="forbid")

    officer_id: str = Field(
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="The officer's id (station.officers)"
    )
    name: str = Field("", max_length=120, description="The officer's name as configured")


class StartArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    citizen_ref: str = Field(
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="The citizen's reference from the lookup"
    )
    finger_policy: Literal["4-4-2", "all"] | list[int] = Field(
        "4-4-2", description="'4-4-2' (slap order finger by finger), 'all', or positions"
    )
    exceptions: list[ExceptionArg] = Field(
        default_factory=list, description="Fingers known not to be capturable (not asked for)"
    )
    issuance: bool = Field(False, description="Instant card issuance after the upload")
    corrections: list[CorrectionRequest] = Field(
        default_factory=list,
        max_length=len(CORRECTABLE),
        description="Corrections the citizen asks for, against the record of this kiosk's last "
        "verified lookup of citizen_ref (docs/enrollment.md); the centre decides",
    )
    operator: OperatorArg | None = Field(
        None,
        description="The officer running an attended enrollment: recorded in the signed "
        "package's manifest (station.officer, mode attended)",
    )

    @field_validator("finger_policy")
    @classmethod
    def _positions(cls, v: str | list[int]) -> str | list[int]:
        bad = isinstance(v, list) and (
            not v or len(set(v)) != len(v) or any(p not in POSITIONS for p in v)
        )
        if bad:
            raise ValueError("a list policy needs distinct positions 1-10")
        return v


class PortraitArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(30.0, gt=0, le=120, description="Auto-capture time limit")
    min_quality: int | None = Field(None, ge=0, le=100, description="Overall score to reach")


class FingerArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    position: int | None = Field(None, ge=1, le=10, description="Default: next in the plan")
    timeout_s: float = Field(40.0, gt=0, le=120, description="Wait for the finger at most")
    min_quality: int | None = Field(None, ge=0, le=100, description="NFIQ 2-style score")
    attempts: int = Field(3, ge=1, le=10, description="Captures before the best is kept")


class SkipArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    position: int = Field(ge=1, le=10, description="Finger position to skip")
    reason: SkipReason = Field(description="missing, bandaged, unreadable or other")
    detail: str = Field("", max_length=200, description="Free text")


class CancelArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("cancelled by the operator", max_length=200, description="Why")


class NoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- the manager -----------------------------------------------------------------------------


@dataclass
class Session:
    id: str
    citizen_ref: str
    policy: str
    plan: list[int]
    issuance: bool
    started_at: float
    chain_head: str
    state: str


_CORRECTIONS_KEY = "enrollment.corrections."
_OPERATOR_KEY = "enrollment.operator."


class EnrollmentManager:
    """One active session at a time; all state in SQLite; records sealed at capture."""

    def __init__(
        self,
        *,
        store: Store,
        state_dir: Path,
        device_id: str,
        identity: DeviceIdentity,
        portraits: PortraitCapture | None,
        fingers: FingerCapture | None,
        enrollment_key: bytes | None,
        emit: Callable[..., object],
        resume_s: float,
        on_package: Callable[[str], None],
        instant_issuance: bool = True,
    ) -> None:
        self.instant_issuance = instant_issuance
        self.store = store
        self.state_dir = state_dir
        self.device_id = device_id
        self.identity = identity
        self.portraits = portraits
        self.fingers = fingers
        self.emit = emit
        self.resume_s = resume_s
        self.on_package = on_package
        self.sealed = (
            SealedStore(state_dir / "sealed", enrollment_key, device_id=device_id)
            if enrollment_key is not None
            else None
        )
        self.outgoing = state_dir / "outgoing"
        self.outgoing.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.RLock()
        self._capturing = threading.Lock()
        # session id -> templates of its captured fingers (memory only; wiped at the end).
        self._templates: dict[str, list[ReferenceTemplate]] = {}
        # citizen_ref -> the record of this kiosk's last verified lookup (set by the daemon):
        # what corrections are checked against.
        self.looked_up: Callable[[str], dict[str, Any] | None] = lambda _ref: None
        # Disk space first (space.py): the worst case (the daemon sizes it to the camera) and
        # how free space is read; the kiosk's trusted time (timekeeping.py, set by the daemon).
        self.space_estimate: Estimate = worst_case()
        self.free_space: Callable[[Path], int] = free_bytes
        self.clock: Clock | None = None

    # -- state -------------------------------------------------------------------------------

    def active(self) -> Session | None:
        with self.store.lock:
            row = self.store.conn.execute(
                "SELECT id, citizen_ref, policy, plan, issuance, started_at, chain_head, state "
                "FROM enrollment_sessions WHERE state='active' ORDER BY started_at DESC LIMIT 1"
            ).fetchone()
        if row is None:
            return None
        return Session(
            row[0], row[1], row[2], json.loads(row[3]), bool(row[4]), row[5], row[6], row[7]
        )

    def is_active(self) -> bool:
        return self.active() is not None

    def _records(self, sid: str) -> list[dict[str, Any]]:
        with self.store.lock:
            rows = self.store.conn.execute(
                "SELECT seq, record_id, kind, position, status, reason, detail, quality, met, "
                "attempts, sha256, hash, sealed_sha256, sealed_size, captured_at, timings "
                "FROM enrollment_records WHERE session_id=? ORDER BY seq",
                (sid,),
            ).fetchall()
        keys = (
            "seq",
            "record_id",
            "kind",
            "position",
            "status",
            "reason",
            "detail",
            "quality",
            "met",
            "attempts",
            "sha256",
            "hash",
            "sealed_sha256",
            "sealed_size",
            "captured_at",
            "timings",
        )
        out = []
        for r in rows:
            d = dict(zip(keys, r, strict=True))
            d["met"] = bool(d["met"]) if d["met"] is not None else None
            d["timings"] = json.loads(d["timings"]) if d["timings"] else {}
            out.append(d)
        return out

    def _require(self) -> Session:
        s = self.active()
        if s is None:
            raise CommandError("no active enrollment session", code=ErrorCode.NO_SESSION)
        return s

    def _progress(self, s: Session, step: str, **data: Any) -> None:
        self.emit(
            "enrollment.progress",
            {"session_id": s.id, "step": step, "remaining": self._remaining(s), **data},
            durable=False,
        )

    def _remaining(self, s: Session) -> list[int]:
        done = {r["position"] for r in self._records(s.id) if r["kind"] == "finger"}
        return [p for p in s.plan if p not in done]

    # -- start-up -----------------------------------------------------------------------------

    def recover(self) -> None:
        """After a crash or power cut: resume a recent session, abort an old one."""
        s = self.active()
        if s is None:
            return
        with self.store.lock:
            (updated,) = self.store.conn.execute(
                "SELECT updated FROM enrollment_sessions WHERE id=?", (s.id,)
            ).fetchone()
        age = time.time() - float(updated)
        if age <= self.resume_s:
            log.info("enrollment %s resumed after a restart (%.0f s old)", s.id, age)
            self.emit(
                "enrollment.resumed",
                {"session_id": s.id, "idle_s": round(age, 1), "remaining": self._remaining(s)},
            )
        else:
            self._close(s, "aborted", f"daemon restarted and the session was idle {age:.0f} s")

    # -- commands -------------------------------------------------------------------------------

    def start(self, args: StartArgs, *, job: Job) -> dict[str, Any]:
        """Open a session for a citizen: the capture plan comes from the finger policy."""
        if self.sealed is None:
            raise CommandError(
                "no enrollment key configured (trust.enrollment_key): records could not be "
                "sealed, so no enrollment can start",
                code=ErrorCode.NOT_PROVISIONED,
            )
        if args.issuance and not self.instant_issuance:
            raise CommandError(
                "instant card issuance is disabled on this kiosk (enrollment.instant_issuance)",
                code=ErrorCode.ISSUANCE_DISABLED,
            )
        corrections = self._check_corrections(args)
        with self._lock:
            if self.active() is not None:
                raise Busy("an enrollment session is already active")
            check_room(self.state_dir, self.space_estimate, free=self.free_space)
            exceptions = [e.position for e in args.exceptions]
            policy = args.finger_policy
            plan = plan_for(policy, exceptions)
            sid = uuid.uuid4().hex
            now = self._now()
            with self.store.transaction() as c:
                c.execute(
                    "INSERT INTO enrollment_sessions (id, citizen_ref, policy, plan, issuance, "
                    "started_at, updated, chain_head, state, reason) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        sid,
                        args.citizen_ref,
                        json.dumps(policy),
                        json.dumps(plan),
                        int(args.issuance),
                        now,
                        time.time(),  # "updated": the restart's idle check (recover) reads it
                        pk.CHAIN_START,
                        "active",
                        "",
                    ),
                )
                if corrections:
                    c.execute(
                        "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)",
                        (_CORRECTIONS_KEY + sid, json.dumps(corrections, ensure_ascii=False)),
                    )
                if args.operator is not None:
                    # Kept with the session (a resume keeps it), read back by finish().
                    c.execute(
                        "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)",
                        (
                            _OPERATOR_KEY + sid,
                            json.dumps(args.operator.model_dump(), ensure_ascii=False),
                        ),
                    )
                for i, e in enumerate(args.exceptions):
                    c.execute(
                        "INSERT INTO enrollment_records (session_id, seq, kind, position, status, "
                        "reason, detail, attempts, captured_at) VALUES (?,?,?,?,?,?,?,?,?)",
                        (
                            sid,
                            -1 - i,
                            "finger",
                            e.position,
                            "exception",
                            e.reason,
                            e.detail,
                            0,
                            now,
                        ),
                    )
            s = self.active()
            assert s is not None
        self.emit(
            "enrollment.started",
            {
                "session_id": sid,
                "citizen_ref": args.citizen_ref,
                "plan": plan,
                "exceptions": exceptions,
            },
        )
        self._progress(s, "started")
        return {"session_id": sid, "plan": plan, "exceptions": exceptions}

    def _check_corrections(self, args: StartArgs) -> list[dict[str, Any]]:
        """Corrections travel only validated, against the directory's signed record."""
        if not args.corrections:
            return []
        record = self.looked_up(args.citizen_ref)
        if record is None:
            raise CommandError(
                f"corrections: no verified lookup of citizen {args.citizen_ref} on this kiosk; "
                "look the citizen up (citizen.lookup) before asking for corrections",
                code=ErrorCode.LOOKUP_REQUIRED,
                details={"citizen_ref": args.citizen_ref},
            )
        problems = check_corrections(record, args.corrections)
        if problems:
            raise CitizenDataInvalid(problems, where="corrections")
        return [c.model_dump() for c in args.corrections]

    def portrait(
        self, args: PortraitArgs, *, job: Job, on_frame: OnFrame | None = None
    ) -> dict[str, Any]:
        """Auto-capture the portrait, then seal it.

        ``on_frame`` sees every frame the capture reads (a live preview), with its guidance
        when it was analysed (``PortraitCapture.live_analysis_interval_s``)."""
        s = self._require()
        if self.portraits is None:
            raise DeviceError(
                "no camera on this kiosk: the portrait cannot be captured", device="camera"
            )
        with self._capture_slot():
            self._progress(s, "portrait")
            t0 = time.perf_counter()
            result = self.portraits.capture(
                job, min_quality=args.min_quality, timeout_s=args.timeout_s, on_frame=on_frame
            )
            capture_s = time.perf_counter() - t0
            try:
                info = self._seal_and_record(
                    s,
                    kind="face",
                    position=0,
                    record=result.record,  # zeroed by the sealed store
                    quality=result.score,
                    met=result.met,
                    attempts=result.frames,
                    timings={"capture_s": round(capture_s, 3)},
                )
            finally:
                result.wipe()
        self._progress(s, "portrait_sealed", quality=info["quality"])
        return info

    def finger(
        self,
        args: FingerArgs,
        *,
        job: Job,
        refuse_matching: Sequence[ReferenceTemplate] = (),
    ) -> dict[str, Any]:
        """Capture one finger (best of N attempts), then seal it.

        A finger matching one already captured in this session is refused
        (``duplicate_finger``), and so is one matching ``refuse_matching`` (the signed-in
        officer's: ``officer_finger``); the position stays to do."""
        s = self._require()
        remaining = self._remaining(s)
        position = (
            args.position if args.position is not None else (remaining[0] if remaining else None)
        )
        if position is None:
            raise CommandError("every planned finger is done", code=ErrorCode.NOTHING_TO_CAPTURE)
        if position not in remaining:
            raise CommandError(
                f"finger {position} is not to do in this session",
                code=ErrorCode.INVALID_ARGS,
                details={"remaining": remaining},
            )
        if self.fingers is None:
            raise DeviceError(
                "no fingerprint sensor on this kiosk: fingers cannot be captured",
                device="fingerprint",
            )
        with self._capture_slot():
            self._progress(s, "finger", position=position)
            with self._lock:
                captured = list(self._templates.get(s.id, ()))
            t0 = time.perf_counter()
            try:
                result = self.fingers.capture(
                    job,
                    position=position,
                    min_quality=args.min_quality,
                    attempts=args.attempts,
                    timeout_s=args.timeout_s,
                    refuse_matching=[*captured, *refuse_matching],
                    # The finger of the previous position may still lie on the sensor.
                    wait_lift=True,
                )
            except DeviceTimeout:
                self._touch(s)
                self._progress(s, "finger_timeout", position=position)
                raise
            except CommandError as exc:
                if exc.code in (DUPLICATE_FINGER, OFFICER_FINGER):
                    self._touch(s)
                    self._progress(s, "finger_refused", position=position, code=exc.code)
                raise
            capture_s = time.perf_counter() - t0
            try:
                info = self._seal_and_record(
                    s,
                    kind="finger",
                    position=position,
                    record=result.record,  # zeroed by the sealed store
                    quality=result.quality,
                    met=result.met_threshold,
                    attempts=result.attempts_used,
                    timings={
                        "capture_s": round(capture_s, 3),
                        "processing_ms": result.processing_ms,
                    },
                )
                reference = result.reference()
                if reference is not None:
                    with self._lock:
                        self._templates.setdefault(s.id, []).append(reference)
            finally:
                result.wipe()
        self._progress(s, "finger_sealed", position=position, quality=info["quality"])
        return info

    def skip(self, args: SkipArgs, *, job: Job) -> dict[str, Any]:
        """Record a finger as not captured, with the reason."""
        s = self._require()
        if args.position not in self._remaining(s):
            raise CommandError(
                f"finger {args.position} is not to do in this session", code=ErrorCode.INVALID_ARGS
            )
        with self.store.transaction() as c:
            (n,) = c.execute(
                "SELECT count(*) FROM enrollment_records WHERE session_id=?", (s.id,)
            ).fetchone()
            c.execute(
                "INSERT INTO enrollment_records (session_id, seq, kind, position, status, reason, "
                "detail, attempts, captured_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    s.id,
                    -100 - n,
                    "finger",
                    args.position,
                    "skipped",
                    args.reason,
                    args.detail,
                    0,
                    self._now(),
                ),
            )
            self._touch(s)
        self.emit(
            "enrollment.skipped",
            {"session_id": s.id, "position": args.position, "reason": args.reason},
        )
        self._progress(s, "skipped", position=args.position)
        return {"position": args.position, "reason": args.reason, "remaining": self._remaining(s)}

    def review(self, *, job: Job) -> dict[str, Any]:
        """What is captured, skipped and still to do."""
        s = self._require()
        recs = self._records(s.id)
        portrait = [r for r in recs if r["kind"] == "face"]
        return {
            "session_id": s.id,
            "citizen_ref": s.citizen_ref,
            "portrait": {"quality": portrait[-1]["quality"], "met": portrait[-1]["met"]}
            if portrait
            else None,
            "fingers": [
                {k: r[k] for k in ("position", "status", "reason", "quality", "met", "attempts")}
                for r in recs
                if r["kind"] == "finger"
            ],
            "remaining": self._remaining(s),
            "complete": bool(portrait) and not self._remaining(s),
        }

    def finish(self, *, job: Job) -> dict[str, Any]:
        """Build, sign and queue the package; the session ends."""
        s = self._require()
        with self._lock:
            recs = self._records(s.id)
            captured = [r for r in recs if r["status"] == "captured"]
            if not any(r["kind"] == "face" for r in captured):
                raise CommandError("the portrait is not captured yet", code=ErrorCode.INCOMPLETE)
            remaining = self._remaining(s)
            if remaining:
                raise CommandError(
                    f"fingers still to capture or skip: {remaining}",
                    code=ErrorCode.INCOMPLETE,
                    details={"remaining": remaining},
                )
            package_id = s.id
            stamp = self.clock.stamp() if self.clock is not None else None
            corrections = json.loads(self.store.kv_get(_CORRECTIONS_KEY + s.id) or "[]")
            operator = json.loads(self.store.kv_get(_OPERATOR_KEY + s.id) or "null")
            fields: dict[str, Any] = {
                "typ": pk.MANIFEST_TYPE,
                "package_id": package_id,
                "session_id": s.id,
                "device": self.device_id,
                "software": __version__,
                "citizen_ref": s.citizen_ref,
                "policy": json.loads(s.policy),
                "issuance": s.issuance,
                "started_at": s.started_at,
                "finished_at": stamp["at"] if stamp is not None else time.time(),
                "records": [
                    {
                        "seq": i + 1,
                        "record_id": r["record_id"],
                        "kind": r["kind"],
                        "position": r["position"],
                        "format": pk.FACE_FORMAT if r["kind"] == "face" else pk.FINGER_FORMAT,
                        "quality": r["quality"],
                        "met": r["met"],
                        "attempts": r["attempts"],
                        "captured_at": r["captured_at"],
                        "timings": r["timings"],
                        "sha256": r["sha256"],
                        "hash": r["hash"],
                        "sealed_sha256": r["sealed_sha256"],
                        "sealed_size": r["sealed_size"],
                    }
                    for i, r in enumerate(captured)
                ],
                "exceptions": [
                    {
                        "position": r["position"],
                        "reason": r["reason"],
                        "detail": r["detail"],
                        "attempts": r["attempts"],
                    }
                    for r in recs
                    if r["status"] in ("skipped", "exception")
                ],
                "chain_head": s.chain_head,
            }
            if operator is not None:
                # Who ran this enrollment at the kiosk (docs/enrollment.md "Manifest").
                fields["station"] = {"mode": "attended", "officer": operator}
            if corrections:
                fields["corrections"] = corrections
            if stamp is not None:  # docs/enrollment.md "Time"
                fields.update({k: v for k, v in stamp.items() if k != "at"})
            # The one manifest model of both ends (appliance/protocol/package.py): the kiosk
            # refuses to sign what the centre would refuse to parse. The signed bytes are the
            # fields given here (exclude_unset: no defaulted nulls added), in the model's order.
            try:
                manifest = Manifest.model_validate(fields)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise CommandError(
                    f"package manifest field {where}: {first['msg']}",
                    code=ErrorCode.PACKAGE_MALFORMED,
                    details={"field": where},
                ) from None
            manifest_bytes = json.dumps(
                manifest.model_dump(mode="json", exclude_unset=True),
                separators=(",", ":"),
                ensure_ascii=False,
            ).encode()
            signature = self.identity.sign(manifest_bytes).to_header()
            assert self.sealed is not None
            blobs = [self._sealed_file(r["record_id"]) for r in captured]
            container = pk.encode_container(manifest_bytes, signature, blobs)
            path = self.outgoing / f"{package_id}.pkg"
            from ..trust.keys import atomic_write

            atomic_write(path, container, mode=0o600)
            with self.store.transaction() as c:
                c.execute(
                    "UPDATE enrollment_sessions SET state='finished', updated=? WHERE id=?",
                    (time.time(), s.id),
                )
                c.execute(
                    "DELETE FROM kv WHERE key IN (?, ?)",
                    (_CORRECTIONS_KEY + s.id, _OPERATOR_KEY + s.id),
                )
                c.execute(
                    "INSERT INTO enrollment_uploads (package_id, session_id, path, total_bytes, "
                    "state, created, records) VALUES (?,?,?,?,?,?,?)",
                    (
                        package_id,
                        s.id,
                        str(path),
                        len(container),
                        "pending",
                        time.time(),
                        json.dumps([[r["record_id"], r["sealed_sha256"]] for r in captured]),
                    ),
                )
        self.emit(
            "enrollment.finished",
            {
                "session_id": s.id,
                "package_id": package_id,
                "records": len(captured),
                "bytes": len(container),
            },
        )
        self._forget_templates(s.id)
        self._progress(s, "finished")
        self.on_package(package_id)
        return {
            "package_id": package_id,
            "records": len(captured),
            "bytes": len(container),
            "exceptions": fields["exceptions"],
            "chain_head": s.chain_head,
        }

    def cancel(self, args: CancelArgs, *, job: Job) -> dict[str, Any]:
        """End the session without a package; its sealed records are shredded."""
        s = self._require()
        shredded = self._close(s, "cancelled", args.reason)
        return {"session_id": s.id, "shredded": shredded}

    def status(self) -> dict[str, Any]:
        """The active session and the upload queue."""
        s = self.active()
        with self.store.lock:
            uploads = self.store.conn.execute(
                "SELECT package_id, state, total_bytes, acked_chunks, chunks FROM "
                "enrollment_uploads WHERE state NOT IN ('purged') ORDER BY created"
            ).fetchall()
        return {
            "active": None
            if s is None
            else {
                "session_id": s.id,
                "citizen_ref": s.citizen_ref,
                "plan": s.plan,
                "remaining": self._remaining(s),
            },
            "uploads": [
                {
                    "package_id": u[0],
                    "state": u[1],
                    "bytes": u[2],
                    "acked_chunks": u[3],
                    "chunks": u[4],
                }
                for u in uploads
            ],
        }

    # -- helpers ------------------------------------------------------------------------------

    def _capture_slot(self) -> Any:
        if not self._capturing.acquire(blocking=False):
            raise Busy("a capture is already running in this session")
        lock = self._capturing

        class _Slot:
            def __enter__(self) -> None:
                return None

            def __exit__(self, *_: object) -> None:
                lock.release()

        return _Slot()

    def _now(self) -> float:
        """The time the package records (started_at, captured_at, finished_at): the kiosk's
        trusted clock (docs/enrollment.md "Time"). The session's ``updated`` stays on the
        system clock, which the restart's idle check compares it with."""
        return self.clock.now() if self.clock is not None else time.time()

    def _touch(self, s: Session) -> None:
        with self.store.transaction() as c:
            c.execute("UPDATE enrollment_sessions SET updated=? WHERE id=?", (time.time(), s.id))

    def _seal_and_record(
        self,
        s: Session,
        *,
        kind: str,
        position: int,
        record: bytearray,
        quality: int,
        met: bool,
        attempts: int,
        timings: dict[str, Any],
    ) -> dict[str, Any]:
        """Hash, chain, seal (wiping ``record``), then record the step in one transaction."""
        assert self.sealed is not None
        digest = pk.record_digest(bytes(record))
        with self._lock:
            current = self.active()
            if current is None or current.id != s.id:
                raise CommandError(
                    "the session ended during the capture", code=ErrorCode.NO_SESSION
                )
            chain = pk.chain_next(current.chain_head, digest)
            record_id = f"{s.id[:12]}-{uuid.uuid4().hex[:12]}"
            sealed = self.sealed.put(record_id, record, kind=kind)  # zeroes `record`
            with self.store.transaction() as c:
                (n,) = c.execute(
                    "SELECT count(*) FROM enrollment_records WHERE session_id=? AND status="
                    "'captured'",
                    (s.id,),
                ).fetchone()
                c.execute(
                    "INSERT INTO enrollment_records (session_id, seq, record_id, kind, position, "
                    "status, quality, met, attempts, sha256, hash, sealed_sha256, sealed_size, "
                    "captured_at, timings) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        s.id,
                        n + 1,
                        record_id,
                        kind,
                        position,
                        "captured",
                        quality,
                        int(met),
                        attempts,
                        digest,
                        chain,
                        sealed.sha256,
                        sealed.size,
                        self._now(),
                        json.dumps(timings),
                    ),
                )
                c.execute(
                    "UPDATE enrollment_sessions SET chain_head=?, updated=? WHERE id=?",
                    (chain, time.time(), s.id),
                )
        self.emit(
            "enrollment.record_sealed",
            {
                "session_id": s.id,
                "record_id": record_id,
                "kind": kind,
                "position": position,
                "quality": quality,
                "hash": chain,
            },
        )
        return {
            "record_id": record_id,
            "kind": kind,
            "position": position,
            "quality": quality,
            "met": met,
            "attempts": attempts,
            "hash": chain,
            "timings": timings,
        }

    def _sealed_file(self, record_id: str) -> bytes:
        assert self.sealed is not None
        path = self.sealed.directory / f"{record_id}.sealed"
        return path.read_bytes()

    def _forget_templates(self, sid: str) -> None:
        """Wipe the session's finger templates (at its end, whatever the end)."""
        with self._lock:
            refs = self._templates.pop(sid, [])
        for ref in refs:
            ref.wipe()

    def _close(self, s: Session, state: str, reason: str) -> int:
        self._forget_templates(s.id)
        shredded = 0
        if self.sealed is not None:
            for r in self._records(s.id):
                if r["record_id"]:
                    path = self.sealed.directory / f"{r['record_id']}.sealed"
                    if path.exists():
                        self.sealed._shred(path)
                        shredded += 1
        with self.store.transaction() as c:
            c.execute(
                "UPDATE enrollment_sessions SET state=?, reason=?, updated=? WHERE id=?",
                (state, reason, time.time(), s.id),
            )
            c.execute(
                "DELETE FROM kv WHERE key IN (?, ?)",
                (_CORRECTIONS_KEY + s.id, _OPERATOR_KEY + s.id),
            )
        self.emit(
            f"enrollment.{state}", {"session_id": s.id, "reason": reason, "shredded": shredded}
        )
        log.info("enrollment %s %s: %s (%d sealed records shredded)", s.id, state, reason, shredded)
        return shredded


def register(registry: CommandRegistry, manager: EnrollmentManager) -> None:
    """The MQTT ``enrollment.*`` commands: adapters from a command context to a Job."""

    def start(ctx: CommandContext, args: StartArgs) -> dict[str, Any]:
        return manager.start(args, job=Job.from_context(ctx))

    def portrait(ctx: CommandContext, args: PortraitArgs) -> dict[str, Any]:
        return manager.portrait(args, job=Job.from_context(ctx))

    def finger(ctx: CommandContext, args: FingerArgs) -> dict[str, Any]:
        return manager.finger(args, job=Job.from_context(ctx))

    def skip(ctx: CommandContext, args: SkipArgs) -> dict[str, Any]:
        return manager.skip(args, job=Job.from_context(ctx))

    def review(ctx: CommandContext, _args: NoArgs) -> dict[str, Any]:
        return manager.review(job=Job.from_context(ctx))

    def finish(ctx: CommandContext, _args: NoArgs) -> dict[str, Any]:
        return manager.finish(job=Job.from_context(ctx))

    def cancel(ctx: CommandContext, args: CancelArgs) -> dict[str, Any]:
        return manager.cancel(args, job=Job.from_context(ctx))

    def status(_ctx: CommandContext, _args: NoArgs) -> dict[str, Any]:
        return manager.status()

    def summary(method: Callable[..., object]) -> str:
        return (method.__doc__ or "").strip().splitlines()[0]

    registry.add(
        "enrollment.start",
        start,
        args=StartArgs,
        timeout_s=10,
        role="operator",
        summary=summary(manager.start),
    )
    registry.add(
        "enrollment.portrait",
        portrait,
        args=PortraitArgs,
        timeout_s=150,
        role="operator",
        summary=summary(manager.portrait),
    )
    registry.add(
        "enrollment.finger",
        finger,
        args=FingerArgs,
        timeout_s=150,
        role="operator",
        summary=summary(manager.finger),
    )
    registry.add(
        "enrollment.skip",
        skip,
        args=SkipArgs,
        timeout_s=10,
        role="operator",
        summary=summary(manager.skip),
    )
    registry.add(
        "enrollment.review",
        review,
        timeout_s=10,
        args=NoArgs,
        role="operator",
        summary=summary(manager.review),
    )
    registry.add(
        "enrollment.finish",
        finish,
        timeout_s=60,
        args=NoArgs,
        role="operator",
        summary=summary(manager.finish),
    )
    registry.add(
        "enrollment.cancel",
        cancel,
        args=CancelArgs,
        timeout_s=30,
        role="operator",
        summary=summary(manager.cancel),
    )
    registry.add(
        "enrollment.status",
        status,
        timeout_s=10,
        args=NoArgs,
        role="operator",
        summary=summary(manager.status),
    )
