"""The scripted enrollment: drive one kiosk through a whole session and follow the package to
the centre (docs/enrollment.md; ``appliance fleet enroll``).

start -> portrait -> each finger of the plan (a planned skip, or a finger that gives no usable
capture after its attempts, is recorded as skipped with its reason) -> review -> finish ->
wait for the centre's ``complete`` (or ``rejected``) on ``upload/ack`` and the signed receipt on
``upload/receipt`` -> optionally the kiosk's ``enrollment.purged`` event. Every step keeps its
result, quality and wall time for the summary; nothing biometric travels to this side except
through the sealed package.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import ApplianceError, TrustError
from ..fleet.conn import Message
from ..protocol.codes import ErrorCode, EventType
from ..protocol.messages import EventMessage, MessageInvalid, UploadAck, parse_message
from ..trust.sealed import verify_ack
from .commander import Commander, Reply
from .store import PackageStore

log = logging.getLogger(__name__)
_M = TypeVar("_M", UploadAck, EventMessage)

FINGER_NAMES = {
    1: "right thumb",
    2: "right index",
    3: "right middle",
    4: "right ring",
    5: "right little",
    6: "left thumb",
    7: "left index",
    8: "left middle",
    9: "left ring",
    10: "left little",
}
SKIP_REASONS = ("missing", "bandaged", "unreadable", "other")


@dataclass
class EnrollOptions:
    citizen_ref: str
    finger_policy: str | list[int] = "4-4-2"
    exceptions: list[dict[str, Any]] = field(default_factory=list)  # known before the start
    skips: dict[int, str] = field(default_factory=dict)  # found at the kiosk: position -> reason
    attempts: int = 3
    min_quality: int | None = None
    finger_timeout_s: float = 40.0
    portrait_timeout_s: float = 30.0
    skip_unreadable: bool = True
    issuance: bool = False
    upload_timeout_s: float = 120.0
    purge_timeout_s: float = 15.0


@dataclass
class Step:
    name: str
    status: str
    seconds: float
    quality: int | None = None
    met: bool | None = None
    attempts: int | None = None
    detail: str = ""
    verified: str = ""


@dataclass
class EnrollmentReport:
    device: str
    citizen_ref: str
    steps: list[Step] = field(default_factory=list)
    session_id: str = ""
    plan: list[int] = field(default_factory=list)
    package_id: str = ""
    records: int = 0
    package_bytes: int = 0
    upload_status: str = "not sent"
    upload_reason: str = ""
    upload_s: float = 0.0
    receipt: dict[str, Any] = field(default_factory=dict)
    purged: bool | None = None
    verification: dict[str, Any] | None = None
    total_s: float = 0.0
    unverified_replies: int = 0

    @property
    def ok(self) -> bool:
        return self.upload_status == "complete"

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["steps"] = [s.__dict__ for s in self.steps]
        return out


def _step(report: EnrollmentReport, name: str, reply: Reply, **kw: Any) -> Step:
    v = reply.verification
    if v is not None and not v.ok:
        report.unverified_replies += 1
    st = Step(
        name=name,
        status="ok" if reply.ok else f"failed: {reply.code}",
        seconds=reply.seconds,
        verified="" if v is None else v.status,
        **kw,
    )
    report.steps.append(st)
    return st


def run_enrollment(
    cmd: Commander,
    opts: EnrollOptions,
    *,
    store: PackageStore | None = None,
    root_public_key: bytes | None = None,
    say: Callable[[str], None] | None = None,
) -> EnrollmentReport:
    """Drive the session; raises ApplianceError if the kiosk refuses a step that cannot be
    worked around (the session is cancelled first)."""
    t_start = time.perf_counter()
    tell = say or (lambda _m: None)
    report = EnrollmentReport(cmd.device, opts.citizen_ref)
    acks = cmd.watch(cmd.topics.upload_ack)
    receipts = cmd.watch(cmd.topics.upload_receipt)
    events = cmd.watch(cmd.topics.event(EventType.ENROLLMENT_PURGED))
    start = cmd.request(
        "enrollment.start",
        {
            "citizen_ref": opts.citizen_ref,
            "finger_policy": opts.finger_policy,
            "exceptions": opts.exceptions,
            "issuance": opts.issuance,
        },
    )
    res = start.raise_for_error()
    report.session_id = str(res.get("session_id", ""))
    report.plan = [int(p) for p in res.get("plan", [])]
    _step(report, "start", start, detail="plan " + " ".join(map(str, report.plan)))
    tell(f"session {report.session_id[:12]} started, plan {report.plan}")
    try:
        _capture(cmd, opts, report, tell)
        review = cmd.request("enrollment.review")
        r = review.raise_for_error()
        _step(report, "review", review, detail="complete" if r.get("complete") else "incomplete")
        fin = cmd.request("enrollment.finish", timeout=60)
        f = fin.raise_for_error()
    except BaseException:
        cancel = cmd.request("enrollment.cancel", {"reason": "scripted enrollment stopped"})
        if cancel.ok:
            tell("session cancelled; its sealed records were shredded on the kiosk")
        raise
    report.package_id = str(f.get("package_id", ""))
    report.records = int(f.get("records", 0))
    report.package_bytes = int(f.get("bytes", 0))
    _step(
        report,
        "finish",
        fin,
        detail=f"package {report.package_id[:12]}: {report.records} records, "
        f"{report.package_bytes:,} bytes",
    )
    tell(f"package {report.package_id[:12]} queued for upload ({report.package_bytes:,} bytes)")
    _follow_upload(report, opts, acks, receipts, events, root_public_key, tell)
    if store is not None and report.package_id:
        try:
            result = store.result(cmd.device, report.package_id)
        except ApplianceError:
            result = None
        if result is not None:
            report.verification = result
    report.total_s = time.perf_counter() - t_start
    return report


def _capture(
    cmd: Commander, opts: EnrollOptions, report: EnrollmentReport, tell: Callable[[str], None]
) -> None:
    portrait = cmd.request(
        "enrollment.portrait",
        {"timeout_s": opts.portrait_timeout_s},
        timeout=opts.portrait_timeout_s + 30,
    )
    p = portrait.raise_for_error()
    _step(
        report,
        "portrait",
        portrait,
        quality=p.get("quality"),
        met=p.get("met"),
        attempts=p.get("attempts"),
        detail="sealed",
    )
    tell(f"portrait sealed, quality {p.get('quality')}")
    for position in report.plan:
        name = f"finger {position} ({FINGER_NAMES.get(position, '?')})"
        if position in opts.skips:
            skip = cmd.request(
                "enrollment.skip", {"position": position, "reason": opts.skips[position]}
            )
            skip.raise_for_error()
            _step(report, name, skip, detail=f"skipped: {opts.skips[position]}")
            tell(f"{name} skipped ({opts.skips[position]})")
            continue
        args: dict[str, Any] = {
            "position": position,
            "timeout_s": opts.finger_timeout_s,
            "attempts": opts.attempts,
        }
        if opts.min_quality is not None:
            args["min_quality"] = opts.min_quality
        finger = cmd.request(
            "enrollment.finger", args, timeout=opts.finger_timeout_s * opts.attempts + 30
        )
        if finger.ok:
            r = finger.result
            _step(
                report,
                name,
                finger,
                quality=r.get("quality"),
                met=r.get("met"),
                attempts=r.get("attempts"),
                detail="sealed",
            )
            tell(f"{name} sealed, quality {r.get('quality')}")
            continue
        if finger.code in (ErrorCode.DEVICE_TIMEOUT, "quality_not_met") and opts.skip_unreadable:
            _step(report, name, finger, detail=str(finger.error.get("message", "")))
            skip = cmd.request(
                "enrollment.skip",
                {"position": position, "reason": "unreadable", "detail": finger.code},
            )
            skip.raise_for_error()
            _step(report, name, skip, detail="skipped: unreadable")
            tell(f"{name} unreadable after {opts.attempts} attempts: skipped")
            continue
        finger.raise_for_error()


def _parsed(model: type[_M], msg: Message, kind: str) -> _M | None:
    """``msg`` parsed with the contract's model; None (logged, naming the fields) if it does
    not parse."""
    try:
        return parse_message(model, msg.payload, kind)
    except MessageInvalid as exc:
        log.warning("%s: %s (%s; ignored)", msg.topic, exc, ErrorCode.MALFORMED_MESSAGE)
        return None


def _follow_upload(
    report: EnrollmentReport,
    opts: EnrollOptions,
    acks: queue.Queue[Message],
    receipts: queue.Queue[Message],
    events: queue.Queue[Message],
    root_public_key: bytes | None,
    tell: Callable[[str], None],
) -> None:
    t0 = time.perf_counter()
    deadline = time.monotonic() + opts.upload_timeout_s
    report.upload_status = "timeout"
    while time.monotonic() < deadline:
        try:
            msg = acks.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        ack = _parsed(UploadAck, msg, "upload ack")
        if ack is None or ack.package_id != report.package_id or ack.status is None:
            continue
        report.upload_status = ack.status
        report.upload_reason = ack.reason or ""
        break
    report.upload_s = time.perf_counter() - t0
    report.steps.append(
        Step(
            "upload",
            report.upload_status,
            report.upload_s,
            detail=report.upload_reason or ("verified by the centre" if report.ok else ""),
        )
    )
    tell(f"upload {report.upload_status} after {report.upload_s:.1f} s")
    if not report.ok:
        return
    try:
        receipt = receipts.get(timeout=max(1.0, deadline - time.monotonic()))
    except queue.Empty:
        report.receipt = {"status": "missing"}
        return
    info: dict[str, Any] = {"status": "received", "bytes": len(receipt.payload)}
    if root_public_key is not None:
        try:
            verified = verify_ack(
                receipt.payload, [root_public_key], device_id=report.device, now=time.time()
            )
            info.update(status="verified", issuer=verified.issuer, records=len(verified.records))
        except TrustError as exc:
            info.update(status=f"invalid: {exc.code}")
    report.receipt = info
    purge_deadline = time.monotonic() + opts.purge_timeout_s
    report.purged = False
    while time.monotonic() < purge_deadline:
        try:
            ev = _parsed(
                EventMessage,
                events.get(timeout=max(0.0, purge_deadline - time.monotonic())),
                "event",
            )
        except queue.Empty:
            break
        if ev is not None and ev.data.get("package_id") == report.package_id:
            report.purged = True
            break
    tell("kiosk purged its sealed copy" if report.purged else "no purge event from the kiosk")


def format_report(report: EnrollmentReport) -> str:
    """The human summary: steps, qualities, timings, the package's verification."""
    lines = [
        f"Enrollment on {report.device} for citizen {report.citizen_ref} "
        f"(session {report.session_id[:12]})",
        f"  {'step':<26} {'result':<10} {'quality':>7} {'tries':>5} {'time':>8}  detail",
    ]
    for s in report.steps:
        q = "" if s.quality is None else f"{s.quality}{'' if s.met is not False else '!'}"
        a = "" if s.attempts is None else str(s.attempts)
        sig = "" if s.verified in ("", "ok") else f" [reply {s.verified}]"
        lines.append(
            f"  {s.name:<26} {s.status:<10} {q:>7} {a:>5} {s.seconds:>7.2f}s  {s.detail}{sig}"
        )
    v = report.verification
    if v is not None and v.get("status") == "complete":
        summ = v.get("summary", {})
        recs = summ.get("records", [])
        fingers = [r for r in recs if r.get("kind") == "finger"]
        faces = [r for r in recs if r.get("kind") == "face"]
        face = faces[0] if faces else {}
        lines.append(
            f"Package verified by the centre: device signature ok (key "
            f"{summ.get('signer_key_id')}), {len(recs)} sealed records opened, hash chain ok "
            f"(head {str(summ.get('chain_head', ''))[:16]}...), records parsed: "
            f"{len(faces)} portrait {face.get('width')}x{face.get('height')}, "
            f"{len(fingers)} fingers; exceptions "
            + (
                ", ".join(f"{e['position']}:{e['reason']}" for e in summ.get("exceptions", []))
                or "none"
            )
        )
    elif v is not None:
        lines.append(f"Package REJECTED by the centre: {v.get('code')}: {v.get('reason')}")
    elif report.ok:
        lines.append("Package verified by the centre (status complete; details in its store)")
    else:
        lines.append(f"Package not confirmed: {report.upload_status} {report.upload_reason}")
    if report.receipt:
        r = report.receipt
        lines.append(
            f"Receipt: {r.get('status')}"
            + (
                f", signed by ingest key {r['issuer']}, {r['records']} records"
                if "issuer" in r
                else ""
            )
            + ("; the kiosk purged its sealed copy" if report.purged else "")
        )
    if report.unverified_replies:
        lines.append(
            f"WARNING: {report.unverified_replies} replies without a valid device signature"
        )
    lines.append(f"Enrollment total {report.total_s:.1f} s")
    return "\n".join(lines)


def parse_positions(text: str) -> str | list[int]:
    """``4-4-2``, ``all`` or ``2,3,7``."""
    if text in ("4-4-2", "all"):
        return text
    try:
        out = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ApplianceError(
            f"finger policy {text!r}: use 4-4-2, all or 2,3,7", code=ErrorCode.USAGE
        ) from None
    if not out or any(not 1 <= p <= 10 for p in out):
        raise ApplianceError("finger positions are 1-10", code=ErrorCode.USAGE)
    return out


def parse_skip(text: str) -> tuple[int, str]:
    """``POSITION:REASON``, reason one of missing, bandaged, unreadable, other."""
    pos, _, reason = text.partition(":")
    try:
        position = int(pos)
    except ValueError:
        position = 0
    if not 1 <= position <= 10 or reason not in SKIP_REASONS:
        raise ApplianceError(
            f"{text!r}: use POSITION:REASON with POSITION 1-10 and REASON one of "
            + ", ".join(SKIP_REASONS),
            code=ErrorCode.USAGE,
        )
    return position, reason
