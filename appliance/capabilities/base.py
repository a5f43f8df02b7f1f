"""What every capability service takes: a :class:`Job` (deadline, cancellation, progress).

A job is the service's view of whoever asked: an MQTT command (:meth:`Job.from_context`), the
enrollment session (which passes its own command's job on), or the kiosk's local screen
(:meth:`Job.local`). Services check it at safe points only (between attempts, between frames,
never in the middle of a serial or APDU exchange), so a cancelled job never leaves a device
half-driven (docs/architecture.md, "Capability services").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..commands import CommandContext
from ..errors import CommandTimeout

# A progress report: the step's name and its data (no biometric bytes, ever).
Progress = Callable[[str, Mapping[str, Any]], None]

# Steps that go out as events of their own rather than as ``command.progress`` (what the wire
# carried before the services existed: docs/protocol.md, "Events").
STEP_EVENTS: Mapping[str, str] = {"guidance": "camera.guidance"}


def no_progress(step: str, data: Mapping[str, Any]) -> None:
    """A progress sink that drops every report."""


@dataclass(frozen=True)
class Job:
    """One unit of work for a service: a monotonic ``deadline``, a ``cancelled`` flag set by
    whoever gave up on it, and a ``progress`` sink."""

    deadline: float  # time.monotonic() seconds
    cancelled: threading.Event = field(default_factory=threading.Event)
    progress: Progress = no_progress

    @property
    def remaining(self) -> float:
        """Seconds left before the deadline (never negative)."""
        return max(0.0, self.deadline - time.monotonic())

    def check(self) -> None:
        """Raise :class:`~appliance.errors.CommandTimeout` if the job was cancelled or its
        deadline passed; call it between steps, where stopping leaves nothing half done."""
        if self.cancelled.is_set():
            raise CommandTimeout("the job was cancelled", details={"reason": "cancelled"})
        if time.monotonic() >= self.deadline:
            raise CommandTimeout("the job's deadline passed", details={"reason": "deadline"})

    def within(self, timeout_s: float) -> float:
        """The earlier of this job's deadline and ``timeout_s`` from now."""
        return min(self.deadline, time.monotonic() + timeout_s)

    @classmethod
    def local(cls, timeout_s: float, progress: Progress | None = None) -> Job:
        """A job for a caller that is not an MQTT command (the local screen, a tool)."""
        return cls(
            deadline=time.monotonic() + timeout_s,
            cancelled=threading.Event(),
            progress=progress or no_progress,
        )

    @classmethod
    def from_context(cls, ctx: CommandContext) -> Job:
        """The job of an MQTT command: its deadline and cancellation flag, and progress as the
        wire has always carried it (``command.progress`` with the command's id and name; the
        steps in :data:`STEP_EVENTS` as their own transient events)."""

        def progress(step: str, data: Mapping[str, Any]) -> None:
            event = STEP_EVENTS.get(step)
            if event is not None:
                ctx.emit(event, {"command_id": ctx.command_id, **data}, durable=False)
            else:
                ctx.progress(step, **data)

        return cls(deadline=ctx.deadline, cancelled=ctx.cancelled, progress=progress)
