"""The chip encoder capability's one interface (every backend implements it)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from ...devices import DeviceHealth
from ...lds.package import IssuancePackage

Progress = Callable[[str], None]


@runtime_checkable
class CardEncoder(Protocol):
    """A chip encoder: the Device protocol plus status, BAC read and personalisation."""

    kind: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def health(self) -> DeviceHealth: ...

    def status(self) -> dict[str, Any]:
        """Reader, card presence, ATR, profile, trust bundle (no card I/O)."""

    def read(
        self,
        document_number: str,
        birth: str,
        expiry: str,
        *,
        cancelled: threading.Event | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """BAC read of the card in the reader, Passive Authentication, decoded DG1/DG13."""

    def encode(
        self,
        package: IssuancePackage,
        *,
        cancelled: threading.Event | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Check, write, lock and verify one card; raise ``card_spoiled`` on a mid-write
        failure and the checking error (nothing written) when the package is refused."""
