"""The centre's answer to a station's card request: a signed document carrying the issuance
package of one enrollment, or why there is none (docs/local-api.md "Card issuance").

A station that offered instant issuance asks, after its package was submitted, on
``{prefix}/{device}/card/request`` with ``{"enrollment": "<package id>"}`` (plain JSON: the
broker's ACL lets a kiosk ask only as itself). The centre answers on
``{prefix}/{device}/card/issuance`` with a document of the shared fleet shape
(:mod:`appliance.trust.signeddoc`; type ``appliance.card-issuance.v1``, context
``appliance/card-issuance/v1``, role ``ingest``: the key that signs the enrollment receipts)::

    body = {"device", "issued_at", "issuer", "enrollment": "<package id>",
            "status": "ready" | "pending" | "refused",
            "citizen_ref": "...",                # ready
            "package": {IssuancePackage},        # ready (EF.SOD signed by the Document Signer)
            "code": "...", "message": "..."}     # refused

Before the station writes anything it checks, in this order: the document (chain to a fleet
root, signature, role, this device), that it answers *this* enrollment, that it names the
citizen whose data the station confirmed, and that DG1's document number and DG13's personal
id are that citizen's number (:func:`check_belongs`). The encoder then checks the package
itself against the CSCA trust bundle before any card I/O (ICAO Doc 9303 Part 11, Passive
Authentication; :meth:`CardIssuer.encode`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from ..errors import ApplianceError, TrustError
from ..lds.package import IssuancePackage
from ..protocol.codes import ErrorCode
from ..trust.certs import OperatorKey
from ..trust.signeddoc import sign_document, verify_document

ISSUANCE_TYPE = "appliance.card-issuance.v1"
CTX_ISSUANCE = b"appliance/card-issuance/v1"
ISSUANCE_ROLES = frozenset({"ingest"})
MAX_ISSUANCE_BYTES = 1024 * 1024  # a package is ~30 KB of base64 (DG2 ~21 KB)

Status = Literal["ready", "pending", "refused"]


@dataclass(frozen=True)
class IssuanceAnswer:
    """A verified answer of the centre."""

    issuer: str
    enrollment: str
    status: Status
    citizen_ref: str | None = None
    package: IssuancePackage | None = None
    code: str | None = None
    message: str | None = None


def build_issuance_answer(
    key: OperatorKey,
    device_id: str,
    *,
    enrollment: str,
    status: Status,
    citizen_ref: str | None = None,
    package: IssuancePackage | None = None,
    code: str | None = None,
    message: str | None = None,
) -> bytes:
    """Centre side: the signed answer for ``device_id``."""
    fields: dict[str, Any] = {"enrollment": enrollment, "status": status}
    if status == "ready":
        if package is None or not citizen_ref:
            raise ValueError("a ready answer carries the package and the citizen_ref")
        fields["citizen_ref"] = citizen_ref
        fields["package"] = package.model_dump(mode="json")
    elif status == "refused":
        fields["code"] = code or ErrorCode.ISSUANCE_REFUSED
        fields["message"] = message or "the centre refused the issuance"
    return sign_document(key, ISSUANCE_TYPE, CTX_ISSUANCE, device_id, fields)


def verify_issuance_answer(
    data: bytes,
    roots: Sequence[bytes],
    *,
    device_id: str,
    now: float,
    revoked: Collection[str] = (),
) -> IssuanceAnswer:
    """Kiosk side: the verified answer. ``TrustError`` with the codes of
    :func:`~appliance.trust.signeddoc.verify_document` (never unsigned: an issuance package
    is never taken from an unsigned answer, development mode or not), or
    ``malformed_envelope`` naming the field of a body that is not an answer."""
    doc = verify_document(
        data,
        roots,
        typ=ISSUANCE_TYPE,
        context=CTX_ISSUANCE,
        device_id=device_id,
        roles=ISSUANCE_ROLES,
        now=now,
        revoked=revoked,
        max_bytes=MAX_ISSUANCE_BYTES,
        what="issuance answer",
    )
    body = doc.body
    enrollment, status = body.get("enrollment"), body.get("status")
    if not isinstance(enrollment, str) or not enrollment:
        raise _malformed("enrollment", "must be the enrollment's package id")
    if status not in ("ready", "pending", "refused"):
        raise _malformed("status", "must be ready, pending or refused")
    if status != "ready":
        return IssuanceAnswer(
            issuer=doc.issuer,
            enrollment=enrollment,
            status=status,
            code=str(body.get("code") or "") or None,
            message=str(body.get("message") or "") or None,
        )
    citizen_ref = body.get("citizen_ref")
    if not isinstance(citizen_ref, str) or not citizen_ref:
        raise _malformed("citizen_ref", "a ready answer names the citizen")
    try:
        package = IssuancePackage.model_validate(body.get("package"))
    except ValidationError as exc:
        raise _malformed("package", str(exc.errors()[0]["msg"])) from None
    return IssuanceAnswer(
        issuer=doc.issuer,
        enrollment=enrollment,
        status="ready",
        citizen_ref=citizen_ref,
        package=package,
    )


def _malformed(field: str, message: str) -> TrustError:
    return TrustError(
        f"issuance answer: {field} {message}",
        code=ErrorCode.MALFORMED_ENVELOPE,
        details={"field": field},
    )


def check_belongs(
    answer: IssuanceAnswer, *, enrollment: str, citizen_ref: str, personal_id: str
) -> IssuancePackage:
    """The package of ``answer`` if it is this enrollment's and this citizen's: the
    enrollment, the citizen reference, DG1's document number (ICAO Doc 9303 Part 5 §4.2.2, a
    12-digit number with its overflow) and DG13's personal id (Circular 16/2024/TT-BCA field
    1). Otherwise ``issuance_mismatch`` naming the field; nothing is written."""
    from ..lds.files import decode_dg1, decode_dg13

    def mismatch(field: str, message: str) -> ApplianceError:
        return ApplianceError(
            f"the issuance package's {message} is not this enrollment's",
            code=ErrorCode.ISSUANCE_MISMATCH,
            details={"field": field},
        )

    if answer.status != "ready" or answer.package is None:
        raise ValueError("only a ready answer carries a package")
    if answer.enrollment != enrollment:
        raise mismatch("enrollment", "enrollment")
    if answer.citizen_ref != citizen_ref:
        raise mismatch("citizen_ref", "citizen")
    files = answer.package.files
    try:
        document_number = decode_dg1(files["DG1"]).document_number
        dg13 = decode_dg13(files["DG13"]) if "DG13" in files else None
    except (ApplianceError, ValueError) as exc:
        raise ApplianceError(
            f"the issuance package does not parse: {exc}",
            code=ErrorCode.LDS_MALFORMED,
            details={"field": "package"},
        ) from None
    if document_number != personal_id:
        raise mismatch("DG1", "document number")
    if dg13 is not None and dg13.personal_id != personal_id:
        raise mismatch("DG13", "personal id")
    return answer.package
