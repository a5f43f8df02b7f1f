"""In-memory holding area for captured finger records until the trust layer seals them.

Biometric data never touches disk unencrypted (project rule): records live here, in RAM only,
bounded in number and age. A record leaves by :meth:`FingerRecordStore.take` (the sealing
code takes it), by expiry, or by eviction of the oldest; its buffer is overwritten with zeros
when it goes, so the bytes do not linger in this process's heap longer than needed.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any


@dataclass
class HeldRecord:
    """One ISO/IEC 19794-4 record and what may be said about it without its bytes."""

    record_id: str
    position: int
    quality: int
    compression: str
    created_at: float  # Unix time
    _data: bytearray = field(repr=False)
    sha256: str = ""

    @property
    def data(self) -> bytes:
        """A copy of the record's bytes (biometric: never log it)."""
        return bytes(self._data)

    def wipe(self) -> None:
        self._data[:] = bytes(len(self._data))

    def describe(self) -> dict[str, Any]:
        """Metadata safe for replies and logs."""
        return {
            "record_id": self.record_id,
            "position": self.position,
            "quality": self.quality,
            "compression": self.compression,
            "created_at": self.created_at,
            "size": len(self._data),
            "sha256": self.sha256,
        }


class FingerRecordStore:
    """Thread-safe, bounded (count and age) map of record id to record."""

    def __init__(self, max_records: int = 64, ttl_s: float = 1800.0) -> None:
        if max_records < 1 or ttl_s <= 0:
            raise ValueError("max_records must be >= 1 and ttl_s > 0")
        self.max_records = max_records
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._items: OrderedDict[str, HeldRecord] = OrderedDict()

    def put(self, data: bytes, *, position: int, quality: int, compression: str) -> str:
        """Hold ``data``; returns its new record id (a random UUID, hex)."""
        record_id = uuid.uuid4().hex
        held = HeldRecord(
            record_id=record_id,
            position=position,
            quality=quality,
            compression=compression,
            created_at=time.time(),
            _data=bytearray(data),
            sha256=hashlib.sha256(data).hexdigest().upper(),
        )
        with self._lock:
            self._expire()
            self._items[record_id] = held
            while len(self._items) > self.max_records:
                _, old = self._items.popitem(last=False)
                old.wipe()
        return record_id

    def get(self, record_id: str) -> HeldRecord | None:
        with self._lock:
            self._expire()
            return self._items.get(record_id)

    def take(self, record_id: str) -> HeldRecord | None:
        """Remove and return a record (the caller seals it, then wipes it)."""
        with self._lock:
            self._expire()
            return self._items.pop(record_id, None)

    def discard(self, record_id: str) -> bool:
        with self._lock:
            held = self._items.pop(record_id, None)
        if held is None:
            return False
        held.wipe()
        return True

    def clear(self) -> None:
        with self._lock:
            items = list(self._items.values())
            self._items.clear()
        for held in items:
            held.wipe()

    def ids(self) -> list[str]:
        with self._lock:
            self._expire()
            return list(self._items)

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._items)

    def _expire(self) -> None:
        cutoff = time.time() - self.ttl_s
        while self._items:
            first = next(iter(self._items.values()))
            if first.created_at >= cutoff:
                break
            self._items.popitem(last=False)
            first.wipe()
