"""PcscEncoder: the chip encoder backend on PC/SC (pcscd + any reader, or vpcd + the emulator).

Layers: :mod:`.apdu`/:mod:`.sm` (pure codecs) -> :mod:`.link` (pyscard) -> :mod:`.device`
(typed applet commands) -> this module (the capability: monitoring, checking packages against
the trust bundle, writing, locking, verifying). Card insert/remove is watched in a thread with
its own PC/SC context and reported as ``card.inserted`` / ``card.removed`` events.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from smartcard import scard

from ...devices import DeviceHealth, EventSink, HealthTracker
from ...errors import (
    ApplianceError,
    Busy,
    CommandTimeout,
    ConfigError,
    DeviceDisconnected,
    DeviceError,
    DeviceStatusError,
    DeviceTimeout,
    TrustError,
)
from ...lds.files import FILE_FIDS
from ...lds.tlv import malformed
from ...protocol.codes import ErrorCode
from .apdu import SW_FILE_NOT_FOUND, SW_SECURITY_STATUS
from .config import CardConfig
from .device import EmrtdCard, StepError, personalise, read_back
from .interface import Progress
from .link import PcscLink
from .profile import CardProfile, load_profile

if TYPE_CHECKING:  # the LDS crypto loads with the first card operation (see trust_anchors)
    from cryptography import x509

    from ...lds.issuance import VerifiedPackage
    from ...lds.package import IssuancePackage

log = logging.getLogger(__name__)

MONITOR_WAIT_MS = 500
RETRY_S = 1.0


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _masked(number: str) -> str:
    """A personal/document number for logs: last 3 characters only."""
    return "*" * max(0, len(number) - 3) + number[-3:]


@contextlib.contextmanager
def _at_step(step: str) -> Iterator[None]:
    """Errors raised inside carry ``details.step`` (where ``card.encode`` stopped), as a
    spoiled card's error does; the error itself is unchanged otherwise."""
    try:
        yield
    except ApplianceError as exc:
        exc.details.setdefault("step", step)
        raise


def check_capacity(profile: CardProfile, files: dict[str, bytes]) -> None:
    """Refuse, before any card I/O, an LDS this card stock cannot hold whole: a file it has no
    place for (``profile_mismatch``), a file larger than its largest EF or more bytes than its
    EEPROM, counting the per-file overhead (``card_capacity``). A card that ran out of memory
    half-way would be spoiled; one refused here is still blank."""
    total = 0
    for name, data in files.items():
        if name not in profile.files:
            raise DeviceError(
                f"card profile {profile.name} has no place for {name}",
                device="card",
                code=ErrorCode.PROFILE_MISMATCH,
                details={"file": name, "profile": profile.name},
            )
        if len(data) > profile.max_file_size:
            raise DeviceError(
                f"{name} ({len(data)} bytes) exceeds the card's largest file "
                f"({profile.max_file_size} bytes)",
                device="card",
                code=ErrorCode.CARD_CAPACITY,
                details={"file": name, "size": len(data), "max_file_size": profile.max_file_size},
            )
        total += len(data) + profile.file_overhead
    if total > profile.memory:
        raise DeviceError(
            f"the LDS needs {total} bytes of card memory, card profile {profile.name} has "
            f"{profile.memory}",
            device="card",
            code=ErrorCode.CARD_CAPACITY,
            details={"needed": total, "memory": profile.memory, "profile": profile.name},
        )


class PcscEncoder:
    """Chip encoder on PC/SC. Constructed as ``PcscEncoder(config, sink)`` by the factory."""

    kind = "card"

    def __init__(self, config: CardConfig, sink: EventSink) -> None:
        self.config = config
        self._sink = sink
        self._health = HealthTracker("card", "pcsc", sink)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mon_link: PcscLink | None = None
        self._op_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._reader: str | None = None
        self._present = False
        self._atr = ""
        self.profile: CardProfile | None = None
        self._anchors: list[x509.Certificate] | None = None
        self._problems: list[str] = []
        self.last_apdu_count = 0

    # -- Device protocol ------------------------------------------------------------------------

    def start(self) -> None:
        """Load profile and trust bundle, start the monitor. Never raises for absent hardware."""
        self._problems = []
        try:
            self.profile = load_profile(self.config.card_profile, self.config.profile_dir)
        except ConfigError as exc:
            self._problems.append(f"card profile: {exc.message}")
        bundle = self.config.trust_bundle
        if bundle is not None and not bundle.exists():
            self._problems.append(f"trust bundle: {bundle} does not exist")
        if self.profile is None:
            self._health.set("error", "; ".join(self._problems))
            return
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._monitor, name="card-monitor", daemon=True)
        self._thread.start()

    @property
    def trust_anchors(self) -> list[x509.Certificate]:
        """The CSCA certificates, parsed on first use: cryptography and asn1crypto (~10 MB)
        load when a card is first read or written, not when an idle kiosk starts."""
        if self._anchors is None:
            from ...lds.sod import load_trust_bundle

            anchors: list[x509.Certificate] = []
            if self.config.trust_bundle is not None:
                try:
                    anchors = load_trust_bundle(self.config.trust_bundle)
                except ConfigError as exc:
                    self._problems.append(f"trust bundle: {exc.message}")
            self._anchors = anchors
        return self._anchors

    @trust_anchors.setter
    def trust_anchors(self, value: list[x509.Certificate]) -> None:
        self._anchors = list(value)

    def stop(self) -> None:
        self._stop.set()
        link = self._mon_link
        if link is not None:
            with contextlib.suppress(Exception):  # the context may already be gone
                link.cancel()
        t, self._thread = self._thread, None
        if t is not None:
            t.join(timeout=5)

    def health(self) -> DeviceHealth:
        return self._health.current

    # -- monitor ----------------------------------------------------------------------------------

    def _set_health_ok(self, reader: str) -> None:
        if self._problems:
            self._health.set("error", "; ".join(self._problems), reader=reader)
        else:
            self._health.set("ok", None, reader=reader)

    def _monitor(self) -> None:
        known = scard.SCARD_STATE_UNAWARE
        reader: str | None = None
        while not self._stop.is_set():
            try:
                if self._mon_link is None:
                    link = PcscLink()
                    link.establish()
                    self._mon_link = link
                    known = scard.SCARD_STATE_UNAWARE
                link = self._mon_link
                if reader is None:
                    reader = link.find_reader(self.config.reader)
                    with self._state_lock:
                        self._reader = reader
                    self._set_health_ok(reader)
                    log.info("card reader %s found", reader)
                try:
                    state, atr = link.card_state(reader, MONITOR_WAIT_MS, known)
                except DeviceTimeout:
                    continue
                known = state & ~scard.SCARD_STATE_CHANGED
                if state & (scard.SCARD_STATE_UNAVAILABLE | scard.SCARD_STATE_UNKNOWN):
                    raise DeviceDisconnected(
                        f"reader {reader} went away", device="card", code=ErrorCode.READER_ABSENT
                    )
                self._set_health_ok(reader)
                self._card_event(reader, bool(state & scard.SCARD_STATE_PRESENT), atr)
            except DeviceError as exc:
                if self._stop.is_set():
                    break
                reader = None
                self._card_event(None, False, b"")
                with self._state_lock:
                    self._reader = None
                if isinstance(exc, DeviceDisconnected):
                    self._health.set("disconnected", exc.message)
                else:
                    self._health.set("error", exc.message)
                gone = self._mon_link
                self._mon_link = None
                if gone is not None:
                    gone.close()
                self._stop.wait(RETRY_S)
        last = self._mon_link
        self._mon_link = None
        if last is not None:
            last.close()

    def _card_event(self, reader: str | None, present: bool, atr: bytes) -> None:
        with self._state_lock:
            was = self._present
            self._present = present
            self._atr = atr.hex().upper() if present else ""
        if present and not was:
            log.info("card inserted in %s, ATR %s", reader, atr.hex().upper())
            self._sink("card.inserted", {"reader": reader, "atr": atr.hex().upper()})
        elif was and not present:
            log.info("card removed from %s", reader)
            self._sink("card.removed", {"reader": reader})

    # -- capability -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self._state_lock:
            reader, present, atr = self._reader, self._present, self._atr
        h = self.health()
        return {
            "health": h.state,
            "detail": h.detail,
            "reader": reader,
            "card_present": present,
            "atr": atr or None,
            "profile": self.profile.name if self.profile else None,
            "extended_apdu": bool(
                self.config.extended_apdu and self.profile and self.profile.extended_length
            ),
            "trust_anchors": len(self.trust_anchors),
            "busy": self._op_lock.locked(),
        }

    def _require_profile(self) -> CardProfile:
        if self.profile is None:
            raise DeviceError(
                "card encoder is not configured: " + "; ".join(self._problems),
                device="card",
                code=ErrorCode.DEVICE_NOT_READY,
            )
        return self.profile

    def _connect(self, progress: Progress | None) -> tuple[PcscLink, EmrtdCard]:
        profile = self._require_profile()
        link = PcscLink()
        try:
            reader = link.find_reader(self.config.reader)
            if progress:
                progress("wait_card")
            link.wait_for_card(reader, self.config.card_wait_s)
            link.connect(reader)
        except BaseException:
            link.close()
            raise
        # ISO/IEC 7816-3 §12.2: T=0 carries extended-length APDUs only through ENVELOPE, which
        # the applet does not offer; extended length is used on T=1 only.
        extended = self.config.extended_apdu and link.protocol_name == "T=1"
        card = EmrtdCard(link, profile, extended=extended)
        try:
            # Before any write: the reader and this very card must take extended APDUs.
            card.negotiate_length(link.atr)
        except BaseException:
            link.close()
            raise
        return link, card

    def _exclusive(self) -> None:
        if not self._op_lock.acquire(blocking=False):
            raise Busy(
                "the card encoder is busy with another card operation", details={"device": "card"}
            )

    def read(
        self,
        document_number: str,
        birth: str,
        expiry: str,
        *,
        cancelled: threading.Event | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        self._exclusive()
        try:
            return self._read(document_number, birth, expiry, cancelled, progress)
        finally:
            self._op_lock.release()

    def _read(
        self,
        doc: str,
        birth: str,
        expiry: str,
        cancelled: threading.Event | None,
        progress: Progress | None,
    ) -> dict[str, Any]:
        from ...lds.files import decode_dg1, decode_dg2, decode_dg13, decode_ef_com
        from ...lds.sod import PaResult, passive_authentication

        t0 = time.perf_counter()

        def check() -> None:
            if cancelled is not None and cancelled.is_set():
                raise CommandTimeout("command deadline passed while reading the card")

        link, card = self._connect(progress)
        try:
            if progress:
                progress("bac")
            card.select_application()
            card.basic_access_control(doc, birth, expiry)
            log.info("BAC established for document %s", _masked(doc))
            if progress:
                progress("read")
            com = decode_ef_com(card.read_file(FILE_FIDS["EF.COM"], check))
            if 1 not in com.data_groups:
                raise malformed("EF.COM does not list DG1")
            names = [f"DG{n}" for n in com.data_groups if n != 3]  # DG3 needs EAC
            files = {n: card.read_file(FILE_FIDS[n], check) for n in names}
            sod = card.read_file(FILE_FIDS["EF.SOD"], check)
        finally:
            self.last_apdu_count = link.apdu_count
            link.close()
        dgs = {int(n[2:]): b for n, b in files.items()}
        if self.trust_anchors:
            # DG3 needs EAC, which this reader side does not do: listed as not read.
            pa = passive_authentication(sod, dgs, self.trust_anchors, require_all=False)
        else:
            pa = PaResult(errors=["no trust bundle configured: Passive Authentication not done"])
        mrz = decode_dg1(files["DG1"])
        out: dict[str, Any] = {
            "passive_authentication": pa.to_dict(),
            "lds_version": com.lds_version,
            "data_groups": list(com.data_groups),
            "dg1": {
                "document_code": mrz.document_code,
                "issuing_state": mrz.issuing_state,
                "document_number": mrz.document_number,
                "birth": mrz.birth,
                "sex": mrz.sex,
                "expiry": mrz.expiry,
                "nationality": mrz.nationality,
                "primary": mrz.primary,
                "secondary": mrz.secondary,
            },
            "apdus": self.last_apdu_count,
            "duration_ms": round((time.perf_counter() - t0) * 1000, 1),
        }
        if "DG2" in files:
            records = decode_dg2(files["DG2"])
            # Never the image: its hash and size only (security rule).
            out["dg2"] = {
                "sha256": _sha256(files["DG2"]),
                "size": len(files["DG2"]),
                "records": len(records),
            }
        if "DG13" in files:
            d13 = decode_dg13(files["DG13"])
            out["dg13"] = {
                k: v for k, v in d13.__dict__.items() if k != "unknown_fields" and v is not None
            }
        return out

    def encode(
        self,
        package: IssuancePackage,
        *,
        cancelled: threading.Event | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        self._exclusive()
        try:
            return self._encode(package, cancelled, progress)
        finally:
            self._op_lock.release()

    def _check_package(self, package: IssuancePackage) -> VerifiedPackage:
        from ...lds.issuance import verify_package

        profile = self._require_profile()
        if not self.trust_anchors:
            raise TrustError(
                "no CSCA trust bundle configured: refusing to write",
                code=ErrorCode.TRUST_BUNDLE_MISSING,
            )
        verified = verify_package(package, self.trust_anchors)
        check_capacity(profile, verified.files)
        return verified

    def _encode(
        self, package: IssuancePackage, cancelled: threading.Event | None, progress: Progress | None
    ) -> dict[str, Any]:
        from ...lds.sod import passive_authentication

        t0 = time.perf_counter()
        if progress:
            progress("check_package")
        verified = self._check_package(package)  # raises before any card I/O
        mrz = verified.mrz
        bac = (mrz.document_number, mrz.birth, mrz.expiry)
        with _at_step("wait_card"):
            link, card = self._connect(progress)
        try:
            if progress:
                progress("check_blank")
            with _at_step("check_blank"):
                self._require_blank(card)
            try:
                report = personalise(
                    card, verified.files, bac, progress=progress, cancelled=cancelled
                )
            except StepError as exc:
                if not exc.wrote:
                    # Nothing reached the card (pulled before the first write, say): the card
                    # is not spoiled; the cause is the answer, still naming the step.
                    exc.cause.details.setdefault("step", exc.step)
                    raise exc.cause from exc
                self._spoiled(package.package_id, exc.step, exc.cause)
            step = "verify:read"
            if progress:
                progress(step)
            names = list(verified.files)

            def check() -> None:
                if cancelled is not None and cancelled.is_set():
                    raise CommandTimeout("command deadline passed during verification")

            try:
                back = read_back(card, names, bac, check)
                step = "verify:compare"
                diff = [n for n in names if back.get(n) != verified.files[n]]
                if diff:
                    raise DeviceError(
                        f"read-back differs from the package in {diff}",
                        device="card",
                        code=ErrorCode.READBACK_MISMATCH,
                        details={"files": diff},
                    )
                step = "verify:passive_authentication"
                dgs = {int(n[2:]): b for n, b in back.items() if n.startswith("DG")}
                pa = passive_authentication(back["EF.SOD"], dgs, self.trust_anchors)
                pa.raise_for_failure()
            except ApplianceError as exc:
                self._spoiled(package.package_id, step, exc)
        finally:
            self.last_apdu_count = link.apdu_count
            link.close()
        result = {
            "outcome": "issued",
            "package_id": package.package_id,
            "document_number": _masked(mrz.document_number),
            "files": {n: {"size": len(b), "sha256": _sha256(b)} for n, b in verified.files.items()},
            "apdus": self.last_apdu_count,
            "extended_apdu": card.extended,
            "write_steps": len(report.steps),
            "passive_authentication": pa.to_dict(),
            "duration_ms": round((time.perf_counter() - t0) * 1000, 1),
        }
        log.info(
            "card issued for package %s (%d APDUs, %.0f ms)",
            package.package_id,
            result["apdus"],
            result["duration_ms"],
        )
        self._sink("card.issued", {"package_id": package.package_id, "apdus": result["apdus"]})
        return result

    def _require_blank(self, card: EmrtdCard) -> None:
        """A card we may write: the applet answers, has no EF.COM yet and is not locked."""
        card.select_application()
        try:
            card.select_file(FILE_FIDS["EF.COM"])
        except DeviceStatusError as exc:
            if exc.status == SW_FILE_NOT_FOUND:
                return
            if exc.status == SW_SECURITY_STATUS:
                raise DeviceError(
                    "card is already locked (issued)", device="card", code=ErrorCode.CARD_NOT_BLANK
                ) from exc
            raise
        raise DeviceError(
            "card already carries an EF.COM", device="card", code=ErrorCode.CARD_NOT_BLANK
        )

    def _spoiled(self, package_id: str, step: str, cause: ApplianceError) -> NoReturn:
        log.warning("card spoiled at step %s for package %s: %s", step, package_id, cause.code)
        self._sink("card.spoiled", {"package_id": package_id, "step": step, "cause": cause.code})
        raise DeviceError(
            f"card spoiled at step {step}: {cause.message}",
            device="card",
            code=ErrorCode.CARD_SPOILED,
            retryable=False,
            details={"package_id": package_id, "step": step, "cause": cause.to_dict()},
        ) from cause
