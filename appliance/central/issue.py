"""Instant issuance from a verified enrollment (``appliance fleet issue``; issue 7 item 5).

The LDS is built on the fleet side, where the Document Signer key is: DG1 (TD1 MRZ from the
citizen's details), DG2 (the ISO/IEC 19794-5 portrait record exactly as the centre received
and verified it), DG13 (cccd-dg13.md), EF.COM and EF.SOD signed by the Document Signer
(:func:`appliance.lds.issuance.build_issuance_package`). The kiosk checks the package against its
CSCA trust bundle, writes a blank chip, reads it back and runs Passive Authentication before it
reports ``issued`` (``card.encode``, docs/card.md).

Document Signer files (``--ds-dir``, default ``<home>/issuer``): ``ds.key`` (PEM, PKCS#8, mode
0600, refused otherwise) and ``ds.pem``. The simulated kit's test PKI is
``<state>/sim/pki`` (its CSCA is the simulated kiosk's trust bundle).
"""

from __future__ import annotations

import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..citizen.validation import validate_citizen
from ..errors import ApplianceError, TrustError
from ..protocol.codes import ErrorCode
from .citizens import Citizen
from .commander import Commander, Reply
from .store import PackageStore


@dataclass
class DocumentSigner:
    key: Any  # ec / rsa private key (cryptography)
    cert: Any  # x509.Certificate

    @classmethod
    def load(cls, directory: Path) -> DocumentSigner:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        directory = Path(directory).expanduser()
        key_path, cert_path = directory / "ds.key", directory / "ds.pem"
        try:
            st = key_path.stat()
        except FileNotFoundError:
            raise TrustError(
                f"no Document Signer key {key_path} (the simulated kit's is in <state>/sim/pki)",
                code=ErrorCode.KEY_MISSING,
            ) from None
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise TrustError(
                f"{key_path} is readable by group or others: chmod 600 it",
                code=ErrorCode.KEY_PERMISSIONS,
            )
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError, TypeError) as exc:
            raise TrustError(
                f"cannot load the Document Signer from {directory}: {exc}",
                code=ErrorCode.KEY_MALFORMED,
            ) from None
        return cls(key, cert)


@dataclass
class IssueReport:
    device: str
    enrollment_package: str
    issuance_package: str
    citizen_ref: str
    document: str
    outcome: str = ""
    error: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)
    build_ms: float = 0.0
    verified_reply: str = ""

    @property
    def ok(self) -> bool:
        pa = self.result.get("passive_authentication") or {}
        return self.outcome == "issued" and pa.get("passed") is True

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def build_for_enrollment(
    store: PackageStore,
    device: str,
    package_id: str,
    citizen: Citizen,
    signer: DocumentSigner,
) -> Any:
    """The IssuancePackage for a verified enrollment of ``device``.

    The citizen's details are validated first (docs/citizen-data.md, stage issuance: the card's
    dates included) and the MRZ and DG13 made from them checked against each other, so nothing
    inconsistent reaches a chip; :class:`CitizenDataInvalid` lists every problem.
    """
    from ..lds.issuance import build_issuance_package, check_issuance_data

    record = validate_citizen(citizen.model_dump(), where=f"citizen {citizen.citizen_ref!r}")
    citizen = Citizen.model_validate(record.as_dict())  # names in NFC, spaces collapsed
    mrz, dg13 = citizen.td1(), citizen.dg13()
    check_issuance_data(mrz, dg13)
    portrait = store.portrait(device, package_id)
    try:
        return build_issuance_package(
            package_id=f"iss-{package_id[:24]}-{uuid.uuid4().hex[:8]}",
            mrz=mrz,
            dg13=dg13,
            face_records=[portrait],
            ds_key=signer.key,
            ds_cert=signer.cert,
        )
    except ValueError as exc:
        raise ApplianceError(
            f"cannot build the LDS: {exc}", code=ErrorCode.ISSUANCE_INVALID
        ) from None


def issue_card(
    cmd: Commander,
    store: PackageStore,
    enrollment: dict[str, Any],
    citizen: Citizen,
    signer: DocumentSigner,
    *,
    timeout: float = 90.0,
) -> IssueReport:
    """Build the package for ``enrollment`` (a store result) and have the kiosk encode it."""
    import time

    device, package_id = enrollment["device"], enrollment["package_id"]
    t0 = time.perf_counter()
    pkg = build_for_enrollment(store, device, package_id, citizen, signer)
    build_ms = (time.perf_counter() - t0) * 1000
    report = IssueReport(
        device=device,
        enrollment_package=package_id,
        issuance_package=pkg.package_id,
        citizen_ref=citizen.citizen_ref,
        document=citizen.masked_id(),
        build_ms=round(build_ms, 1),
    )
    reply: Reply = cmd.request("card.encode", pkg.model_dump(mode="json"), timeout=timeout)
    report.seconds = reply.seconds
    report.verified_reply = "" if reply.verification is None else reply.verification.status
    if reply.ok:
        report.outcome = str(reply.result.get("outcome", ""))
        report.result = reply.result
    else:
        report.outcome = "failed"
        report.error = reply.error
    return report


def format_issue(report: IssueReport) -> str:
    if not report.ok:
        err = report.error
        return (
            f"Card NOT issued on {report.device}: {err.get('code')}: {err.get('message')} "
            f"(issuance package {report.issuance_package})"
        )
    r = report.result
    pa = r.get("passive_authentication") or {}
    pa_ok = pa.get("passed") is True
    files = ", ".join(f"{n} {v.get('size')} B" for n, v in (r.get("files") or {}).items())
    return (
        f"Card issued and verified on {report.device} for citizen {report.citizen_ref} "
        f"(document {report.document}): read back identical, passive authentication "
        f"{'ok' if pa_ok else 'FAILED ' + str(pa.get('errors'))}; {r.get('apdus')} APDUs, "
        f"{report.seconds:.1f} s (LDS built and signed in {report.build_ms:.0f} ms)\n"
        f"  files: {files}"
    )
