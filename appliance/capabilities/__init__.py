"""Capability services: what the kiosk can do, as typed services over its devices.

The layer sits above the drivers and below the enrollment session: each service takes its
device (and the device's configuration), a :class:`Job` (deadline, cancellation, progress) and
returns a result model. Its callers are the MQTT command adapters (``drivers/*/commands.py``),
the enrollment session and the kiosk's local screen (docs/architecture.md, "Capability
services"). Importing this package loads no device library: OpenCV, numpy and pyscard load with
the first capture.
"""

from __future__ import annotations

from .base import Job, Progress
from .card import CardIssuer, EncodeResult
from .finger import (
    DUPLICATE_FINGER,
    OFFICER_FINGER,
    FingerCapture,
    FingerResult,
    ReferenceTemplate,
)
from .kit import Capabilities
from .portrait import Guidance, PortraitCapture, PortraitResult

__all__ = [
    "DUPLICATE_FINGER",
    "OFFICER_FINGER",
    "Capabilities",
    "CardIssuer",
    "EncodeResult",
    "FingerCapture",
    "FingerResult",
    "Guidance",
    "Job",
    "PortraitCapture",
    "PortraitResult",
    "Progress",
    "ReferenceTemplate",
]
