"""Citizen lookup against the central directory: the protocol and the kiosk's side.

The kiosk asks the directory (the stand-in for the national population database,
``appliance/central/directory.py``) for a citizen by 12-digit CCCD number or 9-digit CMND
number, over MQTT request/response (docs/protocol.md "Citizen lookup"):

* request on ``{prefix}/{device}/lookup/request`` (QoS 1), ``{"request_id", "nonce",
  "number"}``; on MQTT 5 with the response topic ``{prefix}/{device}/lookup/response`` and the
  request id as correlation data. The broker's ACL lets a kiosk publish only under its own id,
  so the device in the topic is the certificate's identity;
* answer on ``{prefix}/{device}/lookup/response``: a signed document
  (:mod:`appliance.trust.signeddoc`) of type :data:`ANSWER_TYPE`, signed under
  :data:`ANSWER_CONTEXT` by a key whose fleet certificate has the ``directory`` role and covers
  the device. Its body repeats the request id, the nonce and the number, and says ``status``
  (``found`` / ``not_found`` / ``invalid_request`` / ``record_invalid``), the ``citizen``
  record when found, and ``enrollment`` (``none`` / ``pending`` / ``completed``: what the
  centre already holds for this citizen).

:class:`LookupClient.lookup` is the typed function the screen calls; the ``citizen.lookup``
command (role ``operator``) wraps it. An answer is accepted only when the signature, the role,
the device, the request id, the nonce and the number all hold, and the record passes the
validation (``Stage.DIRECTORY``, docs/citizen-data.md); anything else is refused with its
code and the request keeps waiting for a valid answer until its time is up.

Corrections the citizen asks for (:class:`CorrectionRequest`) are validated here
(:func:`check_corrections`) and travel in the enrollment package's manifest; the centre records
them for a decision. The kiosk never edits the directory.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ApplianceError, CommandError, TrustError
from ..protocol.codes import ErrorCode
from ..protocol.topics import Topics
from ..trust.signeddoc import verify_document
from .batch import BATCH_ID_RE, BatchDownload, CitizenBatch, verify_chunk
from .validation import CitizenDataInvalid, CitizenRecord, Problem, Rule, Stage, validate_citizen

if TYPE_CHECKING:
    from ..commands import CommandRegistry

log = logging.getLogger(__name__)

ANSWER_TYPE = "appliance.citizen-lookup.v1"
ANSWER_CONTEXT = b"appliance/citizen-lookup/v1"
ANSWER_ROLES = ("directory",)

#: A CCCD number (12 digits) or an old CMND number (9 digits).
NUMBER_RE = re.compile(r"^(?:[0-9]{12}|[0-9]{9})$")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
NONCE_RE = re.compile(r"^[0-9a-f]{32}$")

Status = Literal["found", "not_found", "invalid_request", "record_invalid"]
EnrollmentState = Literal["none", "pending", "completed"]
STATUSES: tuple[str, ...] = ("found", "not_found", "invalid_request", "record_invalid")
ENROLLMENT_STATES: tuple[str, ...] = ("none", "pending", "completed")

#: Fields a citizen may ask to correct (the record's fields except the number and the
#: reference, which identify the record).
CORRECTABLE = (
    "full_name",
    "date_of_birth",
    "sex",
    "nationality",
    "ethnicity",
    "religion",
    "place_of_origin",
    "permanent_residence",
    "identifying_marks",
    "father",
    "mother",
    "spouse",
    "old_id_number",
)


class LookupFailed(ApplianceError):
    """A lookup that got no acceptable answer; ``code`` says why (docs/protocol.md)."""

    code = ErrorCode.LOOKUP_FAILED


def request_topic(prefix: str, device: str) -> str:
    return Topics(prefix, device).lookup_request


def response_topic(prefix: str, device: str) -> str:
    return Topics(prefix, device).lookup_response


def check_number(number: object) -> str:
    """The number as given, if it is 12 or 9 digits; else ``CommandError`` naming ``number``."""
    if not isinstance(number, str) or not NUMBER_RE.match(number):
        raise CommandError(
            "number: a 12-digit CCCD number or a 9-digit CMND number is required",
            code=ErrorCode.INVALID_ARGS,
            details={"problems": ["number: must be 12 or 9 digits"]},
        )
    return number


def record_to_json(record: CitizenRecord) -> dict[str, Any]:
    """A validated record as JSON (dates ``YYYY-MM-DD``, absent fields left out)."""
    out: dict[str, Any] = {}
    for k, v in record.as_dict().items():
        if v is None or (k == "citizen_ref" and not v):
            continue
        out[k] = v.isoformat() if isinstance(v, dt.date) else v
    return out


# --- corrections ------------------------------------------------------------------------------


class CorrectionRequest(BaseModel):
    """One correction the citizen asks for: the field, the value the directory answered
    (``original``, so the centre sees what the citizen was shown), and the value asked for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str = Field(
        description="The record field to correct: " + ", ".join(CORRECTABLE) + " (the numbers "
        "and the reference identify the record and are not corrected here)"
    )
    original: str | None = Field(description="The value in the directory's signed answer")
    requested: str | None = Field(max_length=250, description="The value the citizen asks for")


def check_corrections(
    record: dict[str, Any],
    corrections: Sequence[CorrectionRequest],
    *,
    today: dt.date | None = None,
) -> list[Problem]:
    """The problems of a set of corrections against the record they correct (empty: valid).

    Each field once, among :data:`CORRECTABLE`; ``original`` must be the record's value; the
    record with every correction applied must pass the validation (``Stage.DIRECTORY``), and a
    refusal names ``corrections.<field>`` and the rule."""
    problems: list[Problem] = []
    seen: set[str] = set()
    changed = dict(record)
    for c in corrections:
        where = f"corrections.{c.field}"
        if c.field not in CORRECTABLE:
            problems.append(Problem(where, Rule.UNKNOWN_FIELD, "this field cannot be corrected"))
            continue
        if c.field in seen:
            problems.append(Problem(where, Rule.UNKNOWN_FIELD, "the field is corrected twice"))
            continue
        seen.add(c.field)
        if record.get(c.field) != c.original:
            problems.append(
                Problem(where, Rule.TYPE, "original is not the value of the directory's answer")
            )
        if c.requested == c.original:
            problems.append(Problem(where, Rule.TYPE, "requested is the same as original"))
        changed[c.field] = c.requested
    if problems:
        return problems
    try:
        validate_citizen(
            {k: v for k, v in changed.items() if v is not None}, today=today, stage=Stage.DIRECTORY
        )
    except CitizenDataInvalid as exc:
        fields = {c.field for c in corrections}
        for p in exc.problems:
            name = f"corrections.{p.field}" if p.field in fields else p.field
            problems.append(Problem(name, p.rule, p.message))
    return problems


# --- the kiosk's client -----------------------------------------------------------------------


@dataclass(frozen=True)
class LookupResult:
    """A verified answer: what the screen shows for confirmation."""

    status: Status
    number: str
    request_id: str
    issuer: str  # the directory key's id
    citizen: dict[str, Any] | None  # the validated record (JSON form) when found
    enrollment: EnrollmentState
    enrollments: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)
    issued_at: float | None = None  # the directory's signed time (docs/enrollment.md "Time")
    source: Literal["directory", "batch"] = "directory"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "issued_at": self.issued_at,
            "status": self.status,
            "number": self.number,
            "request_id": self.request_id,
            "issuer": self.issuer,
            "citizen": self.citizen,
            "enrollment": self.enrollment,
            "enrollments": self.enrollments,
            "problems": self.problems,
        }


@dataclass
class _Waiter:
    request_id: str
    nonce: str
    number: str
    done: threading.Event = field(default_factory=threading.Event)
    result: LookupResult | None = None
    refusals: list[TrustError] = field(default_factory=list)


PublishRequest = Callable[[str, bytes, str, bytes], bool]


class LookupClient:
    """The kiosk's side: publish a request, wait for its verified answer.

    ``publish(topic, payload, response_topic, correlation_data) -> bool`` sends the request
    (False: not connected). Answers arrive through :meth:`on_message` (the network thread).
    """

    def __init__(
        self,
        *,
        prefix: str,
        device_id: str,
        publish: PublishRequest,
        roots: Sequence[bytes],
        revoked: Collection[str] = (),
        allow_unsigned: bool = False,
        now: Callable[[], float] = time.time,
        on_signed_time: Callable[[float, float], object] | None = None,
        batch: CitizenBatch | None = None,
    ) -> None:
        # the stored directory batch: the answer when the directory cannot be reached
        self.batch = batch
        self._downloads: dict[str, BatchDownload] = {}
        # on_signed_time(issued_at, round_trip_s): each verified answer's signed time, bound
        # to this kiosk's request by its nonce (timekeeping.Clock.observe_signed).
        self.on_signed_time = on_signed_time
        self.prefix = prefix
        self.device_id = device_id
        self.request_topic = request_topic(prefix, device_id)
        self.response_topic = response_topic(prefix, device_id)
        self._publish = publish
        self.roots = list(roots)
        self.revoked = list(revoked)
        self.allow_unsigned = allow_unsigned
        self._now = now
        self._lock = threading.Lock()
        self._waiting: dict[str, _Waiter] = {}
        self.refused = 0  # answers refused (bad signature, other request...), all time
        # citizen_ref -> the last verified record (what corrections are checked against);
        # in memory only, the newest RECENT kept.
        self._recent: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()

    RECENT = 32

    def looked_up(self, citizen_ref: str) -> dict[str, Any] | None:
        """The record of this kiosk's last verified lookup of ``citizen_ref``, if any."""
        with self._lock:
            return self._recent.get(citizen_ref)

    def lookup(self, number: str, *, timeout_s: float = 10.0) -> LookupResult:
        """The directory's verified answer; when the directory cannot be reached
        (``directory_offline`` / ``directory_timeout``) and the number is in the stored,
        unexpired batch, the batch's record (``source: "batch"``, the batch's signed
        ``issued_at``). Otherwise as :meth:`ask`."""
        try:
            return self.ask(number, timeout_s=timeout_s)
        except LookupFailed as exc:
            if (
                exc.code not in (ErrorCode.DIRECTORY_OFFLINE, ErrorCode.DIRECTORY_TIMEOUT)
                or self.batch is None
            ):
                raise
            found = self.batch.find(number)
            if found is None:
                raise
            item, summary = found
            citizen = dict(item["citizen"])
            log.info("directory unreachable (%s): batch %s answers", exc.code, summary["batch_id"])
            ref = citizen.get("citizen_ref")
            if ref:
                with self._lock:
                    self._recent[ref] = citizen
            state = item.get("enrollment", "none")
            return LookupResult(
                status="found",
                number=number,
                request_id=f"batch:{summary['batch_id']}",
                issuer=str(summary.get("issuer", "")),
                citizen=citizen,
                enrollment=state if state in ENROLLMENT_STATES else "none",
                issued_at=summary.get("issued_at"),
                source="batch",
            )

    def ask(self, number: str, *, timeout_s: float = 10.0) -> LookupResult:
        """Ask the directory for ``number`` (12 or 9 digits) and return its verified answer.

        Raises ``CommandError`` (``invalid_args``) for a bad number, ``LookupFailed`` with code
        ``directory_offline`` (not connected), ``directory_timeout`` (no answer in time), or
        the refusal code of the last refused answer (``bad_signature``, ``forbidden_role``,
        ``untrusted_issuer``, ``wrong_target``, ``wrong_request``, ``citizen_invalid``...)."""
        check_number(number)
        if not self.roots and not self.allow_unsigned:
            raise LookupFailed(
                "no fleet root key configured (trust.root_keys): a lookup answer could not be "
                "verified",
                code=ErrorCode.NOT_PROVISIONED,
            )
        w = _Waiter(
            request_id=f"lk-{secrets.token_hex(8)}", nonce=secrets.token_hex(16), number=number
        )
        body = json.dumps(
            {"request_id": w.request_id, "nonce": w.nonce, "number": number},
            separators=(",", ":"),
        ).encode()
        with self._lock:
            self._waiting[w.request_id] = w
        sent = time.monotonic()
        try:
            if not self._publish(
                self.request_topic, body, self.response_topic, w.request_id.encode()
            ):
                raise LookupFailed(
                    "the kiosk is not connected to the broker: the directory cannot be asked",
                    code=ErrorCode.DIRECTORY_OFFLINE,
                    retryable=True,
                )
            if not w.done.wait(timeout_s):
                if w.refusals:
                    last = w.refusals[-1]
                    raise LookupFailed(
                        f"lookup answer refused: {last.message}",
                        code=last.code,
                        details={"request_id": w.request_id, "refused": len(w.refusals)},
                    )
                raise LookupFailed(
                    f"no answer from the directory within {timeout_s:g} s",
                    code=ErrorCode.DIRECTORY_TIMEOUT,
                    retryable=True,
                    details={"request_id": w.request_id},
                )
            result = w.result
            assert result is not None
            if self.on_signed_time is not None and result.issued_at is not None:
                self.on_signed_time(result.issued_at, time.monotonic() - sent)
            ref = (result.citizen or {}).get("citizen_ref")
            if result.citizen is not None and ref:
                with self._lock:
                    self._recent[ref] = result.citizen
                    self._recent.move_to_end(ref)
                    while len(self._recent) > self.RECENT:
                        self._recent.popitem(last=False)
            return result
        finally:
            with self._lock:
                self._waiting.pop(w.request_id, None)

    def fetch_batch(self, batch_id: str, *, timeout_s: float = 60.0) -> dict[str, Any]:
        """Download batch ``batch_id`` from the directory, verify every chunk and store it
        (:class:`~appliance.citizen.batch.CitizenBatch`); returns its summary. Raises
        ``LookupFailed`` (``directory_offline``, ``directory_timeout`` with the chunks
        received, ``batch_not_found``, or the code of the last refused chunk)."""
        if self.batch is None:
            raise LookupFailed("this kiosk keeps no citizen batch", code=ErrorCode.NOT_PROVISIONED)
        if not BATCH_ID_RE.match(batch_id):
            raise CommandError(
                "batch_id: 1-64 letters, digits, '_', '.', '-'", code=ErrorCode.INVALID_ARGS
            )
        if not self.roots and not self.allow_unsigned:
            raise LookupFailed("no fleet root key configured", code=ErrorCode.NOT_PROVISIONED)
        d = BatchDownload(f"bt-{secrets.token_hex(8)}", secrets.token_hex(16), batch_id)
        body = json.dumps(
            {"request_id": d.request_id, "nonce": d.nonce, "batch": batch_id},
            separators=(",", ":"),
        ).encode()
        with self._lock:
            self._downloads[d.request_id] = d
        try:
            if not self._publish(
                self.request_topic, body, self.response_topic, d.request_id.encode()
            ):
                raise LookupFailed(
                    "the kiosk is not connected to the broker: the batch cannot be fetched",
                    code=ErrorCode.DIRECTORY_OFFLINE,
                    retryable=True,
                )
            if not d.done.wait(timeout_s):
                if d.refusals:
                    last = d.refusals[-1]
                    raise LookupFailed(
                        f"batch chunk refused: {last.message}",
                        code=last.code,
                        details={"refused": len(d.refusals)},
                    )
                raise LookupFailed(
                    f"batch {batch_id}: {len(d.chunks)} chunk(s) in {timeout_s:g} s, not all",
                    code=ErrorCode.DIRECTORY_TIMEOUT,
                    retryable=True,
                    details={"received": len(d.chunks)},
                )
            if d.status == "not_found":
                raise LookupFailed(f"no batch {batch_id!r} here", code=ErrorCode.BATCH_NOT_FOUND)
            summary = self.batch.store(d)
            if self.on_signed_time is not None and d.issued_at:
                # not bound to a fresh time (the chunks may be old): raises the floor only
                self.on_signed_time(d.issued_at, float("inf"))
            return summary
        finally:
            with self._lock:
                self._downloads.pop(d.request_id, None)

    def _on_batch_chunk(self, payload: bytes, request_id: str | None) -> None:
        with self._lock:
            d = self._downloads.get(request_id or "")
        if d is None:
            self.refused += 1
            return
        try:
            chunk, issuer = verify_chunk(
                payload,
                self.roots,
                device_id=self.device_id,
                now=self._now(),
                revoked=self.revoked,
                allow_unsigned=self.allow_unsigned,
            )
            d.add(chunk, issuer)
        except TrustError as exc:
            self.refused += 1
            d.refusals.append(exc)
            log.warning("batch chunk for %s refused: %s [%s]", d.request_id, exc.message, exc.code)

    def on_message(self, topic: str, payload: bytes) -> None:
        """An answer on our response topic: verified, then given to its request."""
        if topic != self.response_topic:
            return
        request_id = _peek_request_id(payload)
        if request_id is not None and request_id.startswith("bt-"):
            self._on_batch_chunk(payload, request_id)
            return
        with self._lock:
            w = self._waiting.get(request_id or "")
        if w is None:
            self.refused += 1
            log.warning("lookup answer for no pending request (%r) ignored", request_id)
            return
        try:
            w.result = self.verify(payload, w)
        except TrustError as exc:
            self.refused += 1
            w.refusals.append(exc)
            log.warning(
                "lookup answer for %s refused: %s [%s]", w.request_id, exc.message, exc.code
            )
            return
        w.done.set()

    def verify(self, payload: bytes, w: _Waiter) -> LookupResult:
        doc = verify_document(
            payload,
            self.roots,
            typ=ANSWER_TYPE,
            context=ANSWER_CONTEXT,
            device_id=self.device_id,
            roles=ANSWER_ROLES,
            now=self._now(),
            revoked=self.revoked,
            allow_unsigned=self.allow_unsigned,
            what="lookup answer",
        )
        return parse_answer(doc.body, doc.issuer, w.request_id, w.nonce, w.number)


def _peek_request_id(payload: bytes) -> str | None:
    """The request id an answer claims (unverified: only to find its waiter)."""
    from ..trust.keys import b64decode

    try:
        env = json.loads(payload)
        body = json.loads(b64decode(env.get("body"), what="body"))
        rid = body.get("request_id")
    except (ValueError, AttributeError, TypeError, TrustError):
        return None
    return rid if isinstance(rid, str) else None


def _wrong(message: str, **details: Any) -> TrustError:
    return TrustError(message, code=ErrorCode.WRONG_REQUEST, details=details)


def parse_answer(
    body: dict[str, Any], issuer: str, request_id: str, nonce: str, number: str
) -> LookupResult:
    """Check the verified body's binding to the request and its content."""
    if body.get("request_id") != request_id:
        raise _wrong("the answer is for another request", request_id=body.get("request_id"))
    if body.get("nonce") != nonce:
        raise _wrong("the answer carries another request's nonce", request_id=request_id)
    if body.get("number") != number:
        raise _wrong("the answer is for another number", request_id=request_id)
    status = body.get("status")
    if status not in STATUSES:
        raise TrustError(
            f"lookup answer status {status!r} unknown", code=ErrorCode.MALFORMED_ENVELOPE
        )
    enrollment = body.get("enrollment", "none")
    if enrollment not in ENROLLMENT_STATES:
        raise TrustError(
            f"lookup answer enrollment {enrollment!r} unknown", code=ErrorCode.MALFORMED_ENVELOPE
        )
    citizen = body.get("citizen")
    record: dict[str, Any] | None = None
    if status == "found":
        if not isinstance(citizen, dict):
            raise TrustError("a found answer without its record", code=ErrorCode.MALFORMED_ENVELOPE)
        try:
            checked = validate_citizen(citizen, stage=Stage.DIRECTORY, where="lookup answer")
        except CitizenDataInvalid as exc:
            # The directory never answers an invalid record; one that does is refused here.
            raise TrustError(
                exc.message, code=ErrorCode.CITIZEN_INVALID, details=exc.details
            ) from None
        if number not in (checked.personal_id, checked.old_id_number):
            raise _wrong("the record has another number", request_id=request_id)
        record = record_to_json(checked)
    packages = body.get("enrollments", [])
    problems = body.get("problems", [])
    issued_at = body.get("issued_at")
    return LookupResult(
        status=status,
        number=number,
        request_id=request_id,
        issuer=issuer,
        citizen=record,
        enrollment=enrollment,
        enrollments=packages if isinstance(packages, list) else [],
        problems=problems if isinstance(problems, list) else [],
        issued_at=float(issued_at) if isinstance(issued_at, (int, float)) else None,
    )


# --- the command ------------------------------------------------------------------------------


class LookupArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    number: str = Field(
        pattern=NUMBER_RE.pattern, description="12-digit CCCD number or 9-digit CMND number"
    )
    timeout_s: float = Field(10.0, gt=0, le=60, description="Wait for the answer at most")


class BatchFetchArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_id: str = Field(pattern=BATCH_ID_RE.pattern, description="The batch to download")
    timeout_s: float = Field(120.0, gt=0, le=600, description="Wait for every chunk at most")


class BatchStatusArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


def register(registry: CommandRegistry, client: LookupClient) -> None:
    """``citizen.lookup`` (role operator): the directory's verified answer for a number."""

    def handler(_ctx: Any, args: LookupArgs) -> dict[str, Any]:
        """Look a citizen up in the central directory (signed answer, verified)."""
        return client.lookup(args.number, timeout_s=args.timeout_s).to_dict()

    def fetch(_ctx: Any, args: BatchFetchArgs) -> dict[str, Any]:
        """Download a directory batch for a day offline (signed chunks, verified, 0600)."""
        return client.fetch_batch(args.batch_id, timeout_s=args.timeout_s)

    def status(_ctx: Any, _args: BatchStatusArgs) -> dict[str, Any]:
        """The stored directory batch (no records), or none."""
        return {"batch": None if client.batch is None else client.batch.summary()}

    registry.add("citizen.batch.fetch", fetch, args=BatchFetchArgs, timeout_s=650, role="operator")
    registry.add("citizen.batch.status", status, args=BatchStatusArgs, timeout_s=5, role="operator")
    # The record goes to the operator's screen, not into the kiosk's command log.
    registry.add(
        "citizen.lookup",
        handler,
        args=LookupArgs,
        timeout_s=65,
        role="operator",
        unstored=("citizen",),
    )
