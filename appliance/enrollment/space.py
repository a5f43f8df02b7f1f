"""Disk space first: an enrollment starts only if its worst case fits (docs/enrollment.md
"Disk space").

A mobile team's kiosk queues a whole day of packages on its own storage. An enrollment that
ran out of space halfway would lose the citizen's time and leave half-written records, so
before a session opens :func:`check_room` compares the session's worst-case size
(:func:`worst_case`) with the space free on the file system of the state directory, and
refuses with ``no_room`` (details: ``needed_bytes``, ``free_bytes``, ``path``) when it would
not fit. Nothing is written before the check, so a refusal loses nothing.

The worst case, per enrollment:

* the portrait: the camera's full frame uncompressed (``width x height x 3`` bytes), more than
  any ISO/IEC 19794-5 record made from it (JPEG) can be;
* ten fingers: each the sensor's 256 x 288 image at 8 bits a pixel, uncompressed (ISO/IEC
  19794-4 records are at most that plus their headers);
* each record sealed (its header, at most :data:`~appliance.trust.sealed.MAX_HEADER` bytes);
* the package, which copies every sealed record once more, and its manifest;
* a headroom that must stay free after the enrollment (``reserve_bytes``): the SQLite journal,
  the logs, and the receipts that let the queue drain.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import StoreError
from ..protocol.codes import ErrorCode

# ZhianTec image buffer: 256 x 288 px (the sensor manual, "Image upload (UpImage)").
FINGER_IMAGE_BYTES = 256 * 288
RECORD_HEADER_BYTES = 1024  # ISO/IEC 19794-4/-5 general and view headers, with margin
SEALED_HEADER_BYTES = 4096 + 64  # trust.sealed MAX_HEADER, the length prefix and the tag
MANIFEST_BYTES = 64 * 1024
FINGERS = 10
DEFAULT_RESERVE = 64 * 1024 * 1024

DiskUsage = Callable[[Path], int]


@dataclass(frozen=True)
class Estimate:
    """The worst-case bytes of one enrollment, by part."""

    portrait: int
    fingers: int
    sealing: int
    package: int
    reserve: int

    @property
    def total(self) -> int:
        return self.portrait + self.fingers + self.sealing + self.package + self.reserve

    def as_dict(self) -> dict[str, int]:
        return {
            "portrait": self.portrait,
            "fingers": self.fingers,
            "sealing": self.sealing,
            "package": self.package,
            "reserve": self.reserve,
            "total": self.total,
        }


def worst_case(
    *, width: int = 640, height: int = 480, fingers: int = FINGERS, reserve: int = DEFAULT_RESERVE
) -> Estimate:
    """The most one enrollment can take with a ``width x height`` camera."""
    portrait = width * height * 3 + RECORD_HEADER_BYTES
    finger_bytes = fingers * (FINGER_IMAGE_BYTES + RECORD_HEADER_BYTES)
    sealing = (1 + fingers) * SEALED_HEADER_BYTES
    package = portrait + finger_bytes + sealing + MANIFEST_BYTES
    return Estimate(portrait, finger_bytes, sealing, package, reserve)


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged process may still write on ``path``'s file system."""
    return shutil.disk_usage(path).free


def check_room(path: Path, estimate: Estimate, *, free: DiskUsage = free_bytes) -> dict[str, int]:
    """Raise ``StoreError`` ``no_room`` unless ``estimate.total`` bytes are free on ``path``'s
    file system; returns ``{"needed_bytes", "free_bytes"}`` when they are."""
    available = free(path)
    needed = estimate.total
    if available < needed:
        raise StoreError(
            f"not enough room for an enrollment: {needed:,} bytes needed (worst case, with "
            f"{estimate.reserve:,} kept free), {available:,} free on {path}: upload or export "
            "the queued packages first",
            code=ErrorCode.NO_ROOM,
            retryable=True,
            details={
                "needed_bytes": needed,
                "free_bytes": available,
                "path": str(path),
                "estimate": estimate.as_dict(),
            },
        )
    return {"needed_bytes": needed, "free_bytes": available}
