"""Job documents: what the fleet asks one kiosk to do, signed, with an expiry (docs/updates.md).

The document is the signed envelope every fleet document shares (trust/signeddoc.py) of type
:data:`JOB_TYPE` under the context :data:`CTX_JOB`, signed by a key with the ``admin`` role,
naming one device. Body fields besides ``device``, ``issued_at``, ``issuer``:

===============  ============================================================================
``job``          job id (``j-`` + 12 hex), the key of the kiosk's report
``kind``         ``command``, ``config`` or ``update``
``spec``         ``command``: ``{"cmd", "args"}``; ``config``: ``{"document", "version"}``
                 (a configuration document signed for this device, base64, verified again
                 by the configuration push);
                 ``update``: ``{"version", "sha256", "size", "url"?}`` (the bundle, fetched in
                 chunks over MQTT or from the URL, verified by bundle.py)
``expires_at``   Unix seconds: a kiosk that returns later ignores it (``job_expired``)
===============  ============================================================================

Per-kiosk states (the kiosk reports all but ``pending``/``canceled``, which the fleet sets):
:data:`STATES`.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import TrustError
from ..protocol.codes import ErrorCode
from ..trust.certs import OperatorKey
from ..trust.signeddoc import sign_document, verify_document

JOB_TYPE = "appliance.job.v1"
CTX_JOB = b"appliance/job/v1"
JOB_ROLES = ("admin",)
KINDS = ("command", "config", "update")

#: pending: not yet released by the rollout; queued: published, not yet started by the kiosk.
STATES = (
    "pending",
    "queued",
    "in_progress",
    "succeeded",
    "failed",
    "rolled_back",
    "timed_out",
    "canceled",
)
FINAL = ("succeeded", "failed", "rolled_back", "timed_out", "canceled")
#: What counts against a rollout's abort threshold.
BAD = ("failed", "rolled_back", "timed_out")


@dataclass(frozen=True)
class Job:
    job: str
    kind: str
    spec: dict[str, Any]
    expires_at: int
    issuer: str
    device: str


def sign_job(
    key: OperatorKey,
    device: str,
    job_id: str,
    kind: str,
    spec: dict[str, Any],
    expires_at: int,
) -> bytes:
    if kind not in KINDS:
        raise TrustError(f"job kind must be one of {KINDS}", code=ErrorCode.MALFORMED_ENVELOPE)
    fields = {"job": job_id, "kind": kind, "spec": spec, "expires_at": int(expires_at)}
    return sign_document(key, JOB_TYPE, CTX_JOB, device, fields)


def verify_job(
    data: bytes,
    roots: Sequence[bytes],
    *,
    device: str,
    now: float | None = None,
    revoked: Collection[str] = (),
    allow_unsigned: bool = False,
) -> Job:
    """Verify a job document for ``device``. Raises ``TrustError`` (the envelope's codes, and
    ``job_expired``)."""
    t = time.time() if now is None else now
    doc = verify_document(
        data,
        roots,
        typ=JOB_TYPE,
        context=CTX_JOB,
        device_id=device,
        roles=JOB_ROLES,
        now=t,
        revoked=revoked,
        allow_unsigned=allow_unsigned,
        what="job document",
    )
    b = doc.body
    job_id, kind, spec, expires = b.get("job"), b.get("kind"), b.get("spec"), b.get("expires_at")
    if not isinstance(job_id, str) or kind not in KINDS or not isinstance(spec, dict):
        raise TrustError("job document needs job, kind and spec", code=ErrorCode.MALFORMED_ENVELOPE)
    if not isinstance(expires, int) or isinstance(expires, bool):
        raise TrustError(
            "job document field 'expires_at' must be an integer", code=ErrorCode.MALFORMED_ENVELOPE
        )
    if t > expires:
        raise TrustError(
            f"job {job_id} expired at {expires}",
            code=ErrorCode.JOB_EXPIRED,
            details={"job": job_id},
        )
    return Job(job_id, str(kind), spec, expires, doc.issuer, device)
