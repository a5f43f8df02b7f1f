"""Instant issuance from a verified enrollment (``appliance fleet issue``; issue 7 item 5).

The LDS is built on the fleet side, where the Document Signer key is: DG1 (TD1 MRZ from the
citizen's details), DG2 (the ISO/IEC 19794-5 portrait record exactly as the centre received
and verified it), DG13 (cccd-dg13.md), EF.COM and EF.SOD signed by the Document Signer
(:func:`appliance.lds.issuance.build_issuance_package`). The kiosk checks the package against its
CSCA trust bundle, writes a blank chip, reads it back and runs Passive Authentication before it
reports ``issued`` (``card.encode``, docs/card.md).

The same package reaches a kiosk station that offered the card on its screen through the
issuance desk (:class:`IssuanceDeskCore`): the station asks once its enrollment was submitted,
the desk answers with the signed package once the centre verified that enrollment.

Document Signer files (``--ds-dir``, default ``<home>/issuer``): ``ds.key`` (PEM, PKCS#8, mode
0600, refused otherwise) and ``ds.pem``. The simulated kit's test PKI is
``<state>/sim/pki`` (its CSCA is the simulated kiosk's trust bundle).
"""

from __future__ import annotations

import collections
import json
import logging
import stat
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..capabilities.card_delivery import Status, build_issuance_answer
from ..citizen.validation import validate_citizen
from ..errors import ApplianceError, TrustError
from ..lds.package import IssuancePackage
from ..protocol.codes import ErrorCode
from ..protocol.topics import TopicKind, Topics, parse, validate_segment
from ..trust.certs import OperatorKey
from .citizens import Citizen, CitizenUnknown
from .commander import Commander, Reply
from .package import valid_package_id
from .service import SubscribedService
from .store import PackageStore

log = logging.getLogger(__name__)


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


# --- the issuance desk: stations ask, the centre answers ---------------------------------------

CitizenSource = Callable[[str], Citizen]


def directory_citizens(directory: Any) -> CitizenSource:
    """Citizens by reference from the central directory's store
    (:class:`~appliance.central.directory.DirectoryStore`): the data the card carries is the
    directory's, the same the station showed the citizen to confirm."""

    def get(citizen_ref: str) -> Citizen:
        record = directory.find_ref(citizen_ref)
        if record is None:
            raise CitizenUnknown(
                f"citizen {citizen_ref!r} is not in the directory",
                details={"citizen_ref": citizen_ref},
            )
        return Citizen.model_validate(record)

    return get


class IssuanceDeskCore:
    """Answers the stations' card requests (docs/local-api.md "Card issuance").

    A request ``{"enrollment": "<package id>"}`` on ``{prefix}/{device}/card/request`` gets one
    signed answer (:mod:`appliance.capabilities.card_delivery`) on that device's
    ``card/issuance``: ``pending`` while the package is not verified yet (the station asks
    again), ``refused`` with the cause (the package was rejected, it did not ask for a card,
    the citizen's data cannot make a card), or ``ready`` with the issuance package built from
    the *verified* enrollment exactly as ``appliance fleet issue`` builds it
    (:func:`build_for_enrollment`). The package is built once per enrollment and kept in
    memory (the newest :attr:`BUILT_KEPT`), so a repeated request gets the same package.
    """

    BUILT_KEPT = 256

    def __init__(
        self,
        store: PackageStore,
        signer: DocumentSigner,
        ingest_key: OperatorKey,
        citizens: CitizenSource,
        publish: Callable[[str, bytes], bool],
        *,
        prefix: str = "kiosk",
    ) -> None:
        validate_segment(prefix, "topic prefix")
        self.store = store
        self.signer = signer
        self.ingest_key = ingest_key
        self.citizens = citizens
        self.publish = publish
        self.prefix = prefix
        # The newest BUILT_KEPT packages (a station asking again gets the same one); older ones
        # are built again if asked for.
        self._built: collections.OrderedDict[tuple[str, str], tuple[str, IssuancePackage]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "ready": 0, "pending": 0, "refused": 0, "malformed": 0}

    def filter(self) -> str:
        return Topics.anyone(self.prefix).card_request

    def handle(self, topic: str, payload: bytes) -> None:
        parsed = parse(self.prefix, topic)
        if parsed is None or parsed.kind is not TopicKind.CARD_REQUEST:
            return
        device = parsed.device
        try:
            request = json.loads(payload)
            enrollment = request["enrollment"]
            if not isinstance(enrollment, str) or not valid_package_id(enrollment):
                raise ValueError("enrollment")
        except (ValueError, KeyError, TypeError):
            self.stats["malformed"] += 1
            log.warning("card request from %s: not {enrollment: <package id>}", device)
            return
        self.stats["requests"] += 1
        answer = self.answer(device, enrollment)
        self.publish(Topics(self.prefix, device).card_issuance, answer)

    def answer(self, device: str, enrollment: str) -> bytes:
        """The signed answer to ``device``'s request for ``enrollment``."""

        def reply(status: Status, **kw: Any) -> bytes:
            self.stats[status] += 1
            return build_issuance_answer(
                self.ingest_key, device, enrollment=enrollment, status=status, **kw
            )

        result = self.store.result(device, enrollment)
        if result is None:
            return reply("pending")
        if result.get("status") != "complete":
            return reply(
                "refused",
                code=str(result.get("code") or ErrorCode.ISSUANCE_REFUSED),
                message=f"the enrollment was rejected: {result.get('reason', '')}",
            )
        key = (device, enrollment)
        with self._lock:
            built = self._built.get(key)
            if built is not None:
                self._built.move_to_end(key)
        if built is None:
            manifest_path = self.store.package_dir(device, enrollment) / "manifest.json"
            try:
                manifest = json.loads(manifest_path.read_text())
            except (OSError, ValueError):
                return reply("refused", message="the verified manifest cannot be read")
            if not manifest.get("issuance"):
                return reply(
                    "refused",
                    code=ErrorCode.ISSUANCE_DISABLED,
                    message="the enrollment did not ask for a card",
                )
            citizen_ref = str(result["summary"].get("citizen_ref"))
            try:
                citizen = self.citizens(citizen_ref)
                pkg = build_for_enrollment(self.store, device, enrollment, citizen, self.signer)
            except ApplianceError as exc:
                log.warning("no card for %s/%s: %s: %s", device, enrollment, exc.code, exc)
                return reply("refused", code=exc.code, message=exc.message)
            built = (citizen_ref, pkg)
            with self._lock:
                built = self._built.setdefault(key, built)
                while len(self._built) > self.BUILT_KEPT:
                    self._built.popitem(last=False)
            log.info("issuance package %s built for %s/%s", pkg.package_id, device, enrollment)
        citizen_ref, pkg = built
        return reply("ready", citizen_ref=citizen_ref, package=pkg)


class IssuanceDesk(SubscribedService):
    """:class:`IssuanceDeskCore` on a paho MQTT 5 client (identity ``central`` under the
    shipped ACL, which lets it read ``+/card/request`` and write ``+/card/issuance``)."""

    name = "issuance desk"

    def __init__(
        self,
        core: IssuanceDeskCore,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        client_id: str = "central-issuance",
        tls: dict[str, Any] | None = None,
        insecure: bool = False,
    ) -> None:
        super().__init__(host=host, port=port, client_id=client_id, tls=tls, insecure=insecure)
        self.core = core
        core.publish = self._publish

    def _filter(self) -> str:
        return self.core.filter()

    def start(self, timeout: float = 10.0) -> IssuanceDesk:
        self._connect(timeout, clean_start=True)
        log.info("issuance desk on %s:%d serving %s", self.host, self.port, self.core.filter())
        return self

    def stop(self) -> None:
        self._close()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            self.core.handle(msg.topic, bytes(msg.payload))
        except Exception:
            log.exception("issuance desk: request on %s not handled", msg.topic)

    def _publish(self, topic: str, payload: bytes) -> bool:
        import paho.mqtt.client as paho

        info = self.client.publish(topic, payload, qos=1)
        return info.rc == paho.MQTT_ERR_SUCCESS
