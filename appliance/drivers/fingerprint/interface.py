"""The fingerprint capability's one interface, whatever the backend."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from ...devices import DeviceHealth
from .config import FingerprintConfig
from .device import CapturedImage
from .records import FingerRecordStore


@runtime_checkable
class FingerprintScanner(Protocol):
    """What the daemon and the command handlers use of a fingerprint sensor."""

    kind: str
    config: FingerprintConfig
    records: FingerRecordStore

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def health(self) -> DeviceHealth: ...

    def capture(
        self,
        deadline: float,
        cancelled: threading.Event | None = None,
        *,
        on_image: Callable[[], None] | None = None,
        extract: bool = False,
    ) -> CapturedImage:
        """Wait for a finger (until ``deadline``, monotonic seconds) and read its image;
        ``on_image`` when the image is in the sensor, before the upload; with ``extract``,
        the sensor's character file of it too (``template``)."""
        ...

    @property
    def can_match(self) -> bool:
        """Whether the sensor extracts and matches 1:1 on board."""
        ...

    def match_templates(
        self, probe: bytes | bytearray, references: Sequence[bytes | bytearray]
    ) -> list[int | None]:
        """1:1 match of ``probe`` against each reference: scores, None for no match."""
        ...

    def wait_finger_removed(
        self, deadline: float, cancelled: threading.Event | None = None
    ) -> bool:
        """Wait until the finger is lifted; False if the deadline passed first."""
        ...

    def exclusive(self) -> AbstractContextManager[None]:
        """Hold the sensor for a capture session; raises Busy if another session holds it."""
        ...

    @property
    def busy(self) -> bool:
        """True while a capture session holds the sensor."""
        ...

    def template_num(self) -> int: ...

    def info(self) -> dict[str, Any]:
        """Status facts without biometric content."""
        ...
