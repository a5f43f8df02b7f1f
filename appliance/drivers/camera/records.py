"""In-memory store of captured portraits, keyed by record id.

Portraits are biometrics: they never touch disk here, never appear in a log or a command
reply. The store is small (``records_kept``) and forgets a portrait after ``record_ttl_s``; the
enrollment flow takes the record it needs (:meth:`PortraitStore.take`) for the card's DG2.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Portrait:
    """One captured portrait: the 19794-5 record, its token image encodings and a summary."""

    record_id: str
    record: bytes  # ISO/IEC 19794-5 face record
    jpeg: bytes
    jpeg2000: bytes | None
    width: int
    height: int
    score: int
    met: bool
    created: float = field(default_factory=time.time)

    @property
    def record_sha256(self) -> str:
        return hashlib.sha256(self.record).hexdigest().upper()

    def describe(self) -> dict[str, Any]:
        """Metadata safe for a reply or a log: sizes, score and a digest, never the pixels."""
        return {
            "record_id": self.record_id,
            "score": self.score,
            "met": self.met,
            "token": {"width": self.width, "height": self.height},
            "formats": {
                "jpeg": len(self.jpeg),
                "jpeg2000": None if self.jpeg2000 is None else len(self.jpeg2000),
            },
            "record": {
                "format": "ISO/IEC 19794-5:2005",
                "bytes": len(self.record),
                "sha256": self.record_sha256,
            },
            "created": round(self.created, 3),
        }

    def __repr__(self) -> str:  # keep bytes out of any accidental log line
        return (
            f"Portrait(record_id={self.record_id!r}, score={self.score}, bytes={len(self.record)})"
        )


def new_record_id() -> str:
    return uuid.uuid4().hex


class PortraitStore:
    """Bounded, expiring, thread-safe map ``record_id -> Portrait``."""

    def __init__(
        self,
        capacity: int = 4,
        ttl_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[float, Portrait]] = OrderedDict()

    def put(self, portrait: Portrait) -> None:
        with self._lock:
            self._expire()
            self._items[portrait.record_id] = (self._clock(), portrait)
            self._items.move_to_end(portrait.record_id)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, record_id: str) -> Portrait | None:
        with self._lock:
            self._expire()
            item = self._items.get(record_id)
            return None if item is None else item[1]

    def take(self, record_id: str) -> Portrait | None:
        """Remove and return a portrait (the enrollment consumes it)."""
        with self._lock:
            self._expire()
            item = self._items.pop(record_id, None)
            return None if item is None else item[1]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._items)

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            self._expire()
            return [p.describe() for _, p in self._items.values()]

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, (t, _) in self._items.items() if now - t > self.ttl_s]:
            del self._items[key]
