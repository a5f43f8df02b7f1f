"""The capability services one kiosk has (what the daemon builds from its devices)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .card import CardIssuer
    from .finger import FingerCapture
    from .portrait import PortraitCapture


@dataclass
class Capabilities:
    """A service per working device; None where the device is disabled or failed to load."""

    portraits: PortraitCapture | None = None
    fingers: FingerCapture | None = None
    cards: CardIssuer | None = None
