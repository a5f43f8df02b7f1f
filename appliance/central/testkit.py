"""A reference builder of enrollment packages, exactly as docs/enrollment.md specifies them,
for the centre's tests and benchmarks (the kiosk builds its own in appliance/enrollment/).

Records are real: a JPEG portrait (Pillow) in an ISO/IEC 19794-5 record, synthetic ridges
(the fingerprint emulator's generator) in ISO/IEC 19794-4 PNG records; they are sealed with the
production :class:`~appliance.trust.sealed.SealedStore` and the manifest is signed with a real
:class:`~appliance.trust.keys.DeviceIdentity`. Tamper hooks let tests break one thing at a time.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..enrollment.package import FACE_FORMAT, FINGER_FORMAT, encode_container
from ..trust.keys import DeviceIdentity
from ..trust.sealed import SealedStore
from .package import HASH_0, chain_next

POLICY_4_4_2 = (2, 3, 4, 5, 7, 8, 9, 10, 1, 6)


def portrait_record(seed: int = 1, size: tuple[int, int] = (240, 320)) -> bytes:
    """A small ISO/IEC 19794-5 record around a generated JPEG (not a real face)."""
    import numpy as np
    from PIL import Image

    from ..lds.files import face_record_from_jpeg

    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = ((xx * 255 // w + yy * 128 // h + rng.integers(0, 40)) % 256).astype(np.uint8)
    rgb = np.stack([base, base[::-1], np.full_like(base, 128)], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=80)
    return face_record_from_jpeg(buf.getvalue(), w, h)


def finger_record(position: int, seed: int = 1) -> bytes:
    """An ISO/IEC 19794-4 PNG record of a synthetic finger at ``position``."""
    from ..biometrics.finger_record import Compression, FingerRecord, FingerView, encode
    from ..drivers.fingerprint.synth import FingerSpec, generate

    img = generate(FingerSpec(seed, position))
    return encode(FingerRecord([FingerView(img, position, 70)], Compression.PNG))


@dataclass
class BuiltPackage:
    package_id: str
    data: bytes
    manifest: dict[str, Any]
    plaintexts: list[bytes]


def build_package(
    identity: DeviceIdentity,
    enrollment_public_key: bytes,
    *,
    device: str,
    records: Sequence[tuple[str, int, bytes]],
    package_id: str | None = None,
    citizen_ref: str = "citizen-001",
    exceptions: Sequence[dict[str, Any]] = (),
    workdir: Path | None = None,
    tamper_manifest: Callable[[dict[str, Any]], None] | None = None,
    tamper_sealed: Callable[[list[bytes]], None] | None = None,
) -> BuiltPackage:
    """Seal ``records`` (``(kind, position, plaintext)`` in capture order), chain, sign, frame.

    ``tamper_manifest`` edits the manifest before signing (a device-signed lie);
    ``tamper_sealed`` edits the list of sealed files after signing (damage in transit).
    """
    package_id = package_id or f"pkg-{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        store = SealedStore(Path(tmp), enrollment_public_key, device_id=device)
        entries: list[dict[str, Any]] = []
        sealed_files: list[bytes] = []
        prev = HASH_0
        for seq, (kind, position, plaintext) in enumerate(records, start=1):
            digest = hashlib.sha256(plaintext).hexdigest().upper()
            prev = chain_next(prev, digest)
            record_id = f"{package_id}-r{seq:02d}"
            rec = store.put(record_id, bytearray(plaintext), kind=kind)
            sealed_files.append((Path(tmp) / f"{record_id}.sealed").read_bytes())
            entries.append(
                {
                    "seq": seq,
                    "record_id": record_id,
                    "kind": kind,
                    "position": position,
                    "format": FACE_FORMAT if kind == "face" else FINGER_FORMAT,
                    "quality": 70,
                    "met": True,
                    "attempts": 1,
                    "captured_at": time.time(),
                    "timings": {"capture_s": 0.5},
                    "sha256": digest,
                    "hash": prev,
                    "sealed_sha256": rec.sha256,
                    "sealed_size": rec.size,
                }
            )
    manifest: dict[str, Any] = {
        "typ": "appliance.enrollment-package.v1",
        "package_id": package_id,
        "session_id": f"s-{package_id}",
        "device": device,
        "software": "test",
        "citizen_ref": citizen_ref,
        "policy": "4-4-2",
        "issuance": False,
        "started_at": time.time() - 60,
        "finished_at": time.time(),
        "records": entries,
        "exceptions": list(exceptions),
        "chain_head": prev,
    }
    if tamper_manifest is not None:
        tamper_manifest(manifest)
    manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode("utf-8")
    signature = identity.sign(manifest_bytes).to_header()
    if tamper_sealed is not None:
        tamper_sealed(sealed_files)
    data = encode_container(manifest_bytes, signature, sealed_files)
    return BuiltPackage(package_id, data, manifest, [r[2] for r in records])


def standard_records(
    positions: Sequence[int] = POLICY_4_4_2, seed: int = 1
) -> list[tuple[str, int, bytes]]:
    """A portrait then one finger record per position, in capture order."""
    out: list[tuple[str, int, bytes]] = [("face", 0, portrait_record(seed))]
    out += [("finger", p, finger_record(p, seed)) for p in positions]
    return out
