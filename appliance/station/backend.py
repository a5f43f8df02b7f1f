"""The station's only door to the enrollment manager and the citizen lookup.

Every call the flow makes into :class:`~appliance.enrollment.session.EnrollmentManager` and
:class:`~appliance.citizen.lookup.LookupClient` is here, so the flow never sees a command
context, an MQTT handler or a registry. The manager's methods take a
:class:`~appliance.commands.CommandContext`; this module builds a local one per call whose
``emit`` passes every event on to the fleet unchanged and also hands the camera's guidance and
the sensor's progress steps to the flow (the live guidance on the screen).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from ..commands import CommandContext
from ..enrollment.session import (
    CancelArgs,
    EnrollmentManager,
    FingerArgs,
    NoArgs,
    PortraitArgs,
    SkipArgs,
    StartArgs,
)
from ..errors import CommandError

Listener = Callable[[str, Mapping[str, Any]], None]


class Backend:
    """Typed calls for the flow; ``on_event(type, data)`` sees the manager's events."""

    def __init__(
        self,
        *,
        services: Any,
        manager: EnrollmentManager,
        lookup: Any | None,
    ) -> None:
        self.services = services
        self.manager = manager
        self.lookup_client = lookup
        self._listeners: list[Listener] = []
        self._running: CommandContext | None = None  # the capture under way, if any
        # The manager's events (started, record_sealed, cancelled by the fleet...) reach the
        # flow too: it follows a session the fleet cancels or that ends while it shows it.
        fleet_emit = manager.emit

        def tee(type_: str, data: dict[str, Any], **kw: Any) -> object:
            out = fleet_emit(type_, data, **kw)
            for fn in list(self._listeners):
                fn(type_, data)
            return out

        manager.emit = tee

    def add_listener(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def _ctx(self, name: str, timeout_s: float, on_event: Listener | None) -> CommandContext:
        svc_emit = self.services.emit

        def emit(type_: str, data: dict[str, Any], *, durable: bool = True) -> Any:
            if on_event is not None:
                on_event(type_, data)
            return svc_emit(type_, data, durable=durable)

        ctx = CommandContext(
            command_id=f"station-{uuid.uuid4().hex[:12]}",
            name=name,
            deadline=time.monotonic() + timeout_s,
            emit=emit,
            services=self.services,
            cancelled=threading.Event(),
        )
        self._running = ctx
        return ctx

    def abort(self) -> None:
        """Ask the running capture (if any) to stop at its next safe point."""
        ctx = self._running
        if ctx is not None:
            ctx.cancelled.set()

    # -- calls ------------------------------------------------------------------------------

    def lookup(self, number: str, timeout_s: float = 10.0) -> dict[str, Any]:
        if self.lookup_client is None:
            raise CommandError("citizen lookup unavailable", code="directory_offline")
        result: dict[str, Any] = self.lookup_client.lookup(number, timeout_s=timeout_s).to_dict()
        return result

    def start(
        self, citizen_ref: str, corrections: list[dict[str, Any]], issuance: bool
    ) -> dict[str, Any]:
        args = StartArgs.model_validate(
            {"citizen_ref": citizen_ref, "corrections": corrections, "issuance": issuance}
        )
        return self.manager.start(self._ctx("station.start", 10, None), args)

    def portrait(self, on_guidance: Listener, timeout_s: float = 30.0) -> dict[str, Any]:
        args = PortraitArgs(timeout_s=timeout_s)
        return self.manager.portrait(
            self._ctx("station.portrait", timeout_s + 30, on_guidance), args
        )

    def finger(
        self, position: int, on_progress: Listener, timeout_s: float = 40.0
    ) -> dict[str, Any]:
        args = FingerArgs(position=position, timeout_s=timeout_s)
        return self.manager.finger(self._ctx("station.finger", timeout_s + 110, on_progress), args)

    def skip(self, position: int, reason: str, detail: str) -> dict[str, Any]:
        args = SkipArgs.model_validate({"position": position, "reason": reason, "detail": detail})
        return self.manager.skip(self._ctx("station.skip", 10, None), args)

    def review(self) -> dict[str, Any]:
        return self.manager.review(self._ctx("station.review", 10, None), NoArgs())

    def finish(self) -> dict[str, Any]:
        return self.manager.finish(self._ctx("station.finish", 60, None), NoArgs())

    def cancel(self, reason: str) -> dict[str, Any]:
        return self.manager.cancel(self._ctx("station.cancel", 30, None), CancelArgs(reason=reason))

    def active_session(self) -> str | None:
        s = self.manager.active()
        return None if s is None else s.id
