"""What the daemon knows of a hardware device, whatever its capability or backend.

Each capability (camera, fingerprint sensor, chip encoder) defines its own interface in its
driver package; every backend also satisfies :class:`Device`, which is all the daemon's core
needs: start it, stop it, ask its health. Backends are created by :mod:`appliance.drivers`'s
lazy factory from configuration.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

HealthState = Literal["ok", "starting", "disconnected", "error", "disabled"]


class DeviceHealth(BaseModel):
    """One device's health as reported in status, heartbeat and diagnostics."""

    state: HealthState
    backend: str
    detail: str | None = None
    since: float = Field(default_factory=time.time, description="Unix time of the last change")
    info: dict[str, Any] = Field(default_factory=dict)


# Callback a device uses to report something worth an event: (event type, data). The daemon's
# sink stores the event durably (its return value, the (seq, id), may be ignored).
EventSink = Callable[[str, dict[str, Any]], object]


@runtime_checkable
class Device(Protocol):
    """The core's view of a device."""

    kind: str

    def start(self) -> None:
        """Open the device. Must not raise for absent hardware: report it through health."""

    def stop(self) -> None:
        """Release the device; idempotent."""

    def health(self) -> DeviceHealth:
        """The current health, cheap to call (no I/O)."""


class HealthTracker:
    """Thread-safe health holder that emits a ``device.health`` event on every state change.

    Backends embed one; the daemon reads ``current`` without touching the hardware.
    """

    def __init__(self, kind: str, backend: str, sink: EventSink | None = None) -> None:
        self.kind = kind
        self._sink = sink
        self._lock = threading.Lock()
        self._health = DeviceHealth(state="starting", backend=backend)

    @property
    def current(self) -> DeviceHealth:
        with self._lock:
            return self._health

    def set(self, state: HealthState, detail: str | None = None, **info: Any) -> None:
        with self._lock:
            old = self._health
            changed = old.state != state or old.detail != detail
            self._health = DeviceHealth(
                state=state,
                backend=old.backend,
                detail=detail,
                since=time.time() if changed else old.since,
                info={**old.info, **info},
            )
            new = self._health
        if changed and self._sink is not None:
            self._sink(
                "device.health",
                {
                    "device": self.kind,
                    "state": new.state,
                    "detail": new.detail,
                    "previous": old.state,
                },
            )
