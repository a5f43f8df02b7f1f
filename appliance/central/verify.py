"""Every check the central service makes on an enrollment package, in the order of
docs/enrollment.md ("The package"): container framing; the device signature with the device's
registered key; each sealed blob against the manifest; unsealing with the enrollment private
key; each record's SHA-256 and the whole hash chain to ``chain_head``; then parsing each record
(ISO/IEC 19794-5 portrait, ISO/IEC 19794-4 finger).

Any failure raises :class:`~appliance.errors.TrustError` whose ``code`` is the refusal reason
(``package_malformed``, ``bad_signature``, ``wrong_device``, ``sealed_malformed``,
``sealed_mismatch``, ``unseal_failed``, ``record_hash_mismatch``, ``chain_broken``,
``record_malformed``). The signature is checked over the exact manifest bytes before they are
parsed (docs/trust.md "Signatures over exact bytes").
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

from ..enrollment.package import FACE_FORMAT, FINGER_FORMAT
from ..errors import ApplianceError, TrustError
from ..protocol.codes import ErrorCode
from ..protocol.package import Manifest, RecordEntry
from ..timekeeping import check_time_source
from ..trust.keys import DeviceSignature, verify_device_message
from ..trust.sealed import EnrollmentKeyPair
from .package import (
    HASH_0,
    chain_next,
    decode_container,
    decode_sealed_file,
    parse_manifest,
)

log = logging.getLogger(__name__)


def _bad(code: str, message: str, **details: Any) -> TrustError:
    return TrustError(message, code=code, details=details)


@dataclass
class VerifiedRecord:
    """One record that passed every check. ``plaintext`` is the ISO record (central only)."""

    entry: RecordEntry
    plaintext: bytes
    parsed: dict[str, Any]

    def __repr__(self) -> str:  # never show biometric bytes
        return (
            f"VerifiedRecord({self.entry.record_id!r}, {self.entry.kind}, {len(self.plaintext)} B)"
        )


@dataclass
class VerifiedPackage:
    """A package whose signature, seals, hashes, chain and records all held."""

    manifest: Manifest
    manifest_bytes: bytes
    signer_key_id: str
    records: list[VerifiedRecord] = field(default_factory=list)

    @property
    def receipt_records(self) -> list[tuple[str, str]]:
        """``(record id, ciphertext SHA-256)`` pairs for the signed receipt (docs/trust.md)."""
        return [(r.entry.record_id, r.entry.sealed_sha256.lower()) for r in self.records]

    def summary(self) -> dict[str, Any]:
        """Metadata only (no biometric byte): what the centre logs and reports."""
        m = self.manifest
        return {
            "package_id": m.package_id,
            "device": m.device,
            "session_id": m.session_id,
            "citizen_ref": m.citizen_ref,
            "signer_key_id": self.signer_key_id,
            "chain_head": m.chain_head,
            "records": [
                {
                    "seq": r.entry.seq,
                    "record_id": r.entry.record_id,
                    "kind": r.entry.kind,
                    "position": r.entry.position,
                    "quality": r.entry.quality,
                    "bytes": len(r.plaintext),
                    **r.parsed,
                }
                for r in self.records
            ],
            "exceptions": [e.model_dump() for e in m.exceptions],
            # Who ran it at the kiosk (attended: the officer), when the kiosk said so.
            "station": None if m.station is None else m.station.model_dump(),
        }


def _parse_record(entry: RecordEntry, data: bytes) -> dict[str, Any]:
    """Decode a record with the production decoders and check it against the manifest."""
    try:
        if entry.kind == "face":
            from ..biometrics.face_record import FaceRecord

            if entry.format != FACE_FORMAT:
                raise _bad(
                    ErrorCode.RECORD_MALFORMED, f"record {entry.seq}: format {entry.format!r}"
                )
            face = FaceRecord.decode(data)
            img = face.images[0]
            return {"images": len(face.images), "width": img.width, "height": img.height}
        from ..biometrics import finger_record

        if entry.format != FINGER_FORMAT:
            raise _bad(ErrorCode.RECORD_MALFORMED, f"record {entry.seq}: format {entry.format!r}")
        rec = finger_record.decode(data)
        positions = {v.position for v in rec.views}
        if positions != {entry.position}:
            raise _bad(
                ErrorCode.RECORD_MALFORMED,
                f"record {entry.seq}: finger position {sorted(positions)} but the manifest "
                f"says {entry.position}",
            )
        h, w = rec.views[0].image.shape
        return {
            "views": len(rec.views),
            "width": int(w),
            "height": int(h),
            "compression": rec.compression.name,
            "iso_quality": rec.views[0].quality,
        }
    except TrustError:
        raise
    except ApplianceError as exc:
        raise _bad(
            ErrorCode.RECORD_MALFORMED,
            f"record {entry.seq} ({entry.kind}) does not parse: {exc.message}",
        ) from None


def _check_time(manifest: Manifest) -> None:
    """The kiosk's time fields (docs/enrollment.md "Time"): their shape, not their truth."""
    problems = check_time_source(manifest.model_dump())
    if problems:
        raise _bad(
            ErrorCode.PACKAGE_MALFORMED,
            f"manifest time fields: {'; '.join(problems)}",
            field=problems[0].split(":", 1)[0],
        )


def verify_package(
    data: bytes,
    *,
    device_id: str,
    device_public_key: bytes,
    enrollment_key: EnrollmentKeyPair,
    package_id: str | None = None,
    parse_records: bool = True,
) -> VerifiedPackage:
    """Verify a whole package; raises ``TrustError`` with the refusal code on the first fault."""
    container = decode_container(data)
    # 1. The device signature over the exact manifest bytes, with the registered key.
    try:
        sig = DeviceSignature.from_header(container.signature)
        verify_device_message(device_public_key, container.manifest_bytes, sig)
    except TrustError as exc:
        raise _bad(
            ErrorCode.BAD_SIGNATURE, f"device signature: {exc.message}", cause=exc.code
        ) from None
    manifest = parse_manifest(container.manifest_bytes)
    _check_time(manifest)
    if manifest.device != device_id:
        raise _bad(
            ErrorCode.WRONG_DEVICE,
            f"package names device {manifest.device!r}, uploaded by {device_id!r}",
        )
    if package_id is not None and manifest.package_id != package_id:
        raise _bad(ErrorCode.PACKAGE_MALFORMED, "manifest package_id differs from the upload's")
    if len(manifest.records) != len(container.sealed_files):
        raise _bad(
            ErrorCode.PACKAGE_MALFORMED,
            f"manifest lists {len(manifest.records)} records, container holds "
            f"{len(container.sealed_files)}",
        )
    seqs = [r.seq for r in manifest.records]
    if seqs != list(range(1, len(seqs) + 1)):
        raise _bad(ErrorCode.PACKAGE_MALFORMED, f"record sequence numbers {seqs} are not 1..n")
    ids = [r.record_id for r in manifest.records]
    if len(set(ids)) != len(ids):
        raise _bad(ErrorCode.PACKAGE_MALFORMED, "a record id appears twice")
    out = VerifiedPackage(manifest, container.manifest_bytes, sig.key_id)
    prev = HASH_0
    for entry, blob in zip(manifest.records, container.sealed_files, strict=True):
        what = f"record {entry.seq} ({entry.record_id})"
        # 2. The sealed blob is the one the signed manifest names.
        sealed = decode_sealed_file(blob, what=what)
        if sealed.record_id != entry.record_id:
            raise _bad(ErrorCode.SEALED_MISMATCH, f"{what}: sealed file holds {sealed.record_id!r}")
        if sealed.sha256 != entry.sealed_sha256.lower():
            raise _bad(ErrorCode.SEALED_MISMATCH, f"{what}: sealed_sha256 does not match the blob")
        if len(sealed.ciphertext) != entry.sealed_size:
            raise _bad(ErrorCode.SEALED_MISMATCH, f"{what}: sealed_size does not match the blob")
        # 3. Unseal with the enrollment private key.
        try:
            plaintext = enrollment_key.unseal(sealed.ciphertext)
        except TrustError:
            raise _bad(
                ErrorCode.UNSEAL_FAILED, f"{what} does not open with the enrollment key"
            ) from None
        # 4. The record's own hash and the chain, in capture order.
        if hashlib.sha256(plaintext).hexdigest().upper() != entry.sha256.upper():
            raise _bad(ErrorCode.RECORD_HASH_MISMATCH, f"{what}: SHA-256 of the record differs")
        prev = chain_next(prev, entry.sha256)
        if prev != entry.hash.upper():
            raise _bad(ErrorCode.CHAIN_BROKEN, f"{what}: hash chain value differs", seq=entry.seq)
        parsed = _parse_record(entry, plaintext) if parse_records else {}
        out.records.append(VerifiedRecord(entry, plaintext, parsed))
    if prev != manifest.chain_head.upper():
        raise _bad(ErrorCode.CHAIN_BROKEN, "chain_head is not the last record's chain value")
    log.info(
        "package %s from %s verified: %d records, chain head %s",
        manifest.package_id,
        device_id,
        len(out.records),
        manifest.chain_head[:16],
    )
    return out
