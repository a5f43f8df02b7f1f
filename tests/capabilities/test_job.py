"""The Job every capability service takes: deadline, cancellation, progress; and its mapping
from an MQTT command context onto the events the wire carried before the services existed."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from appliance.capabilities import Job
from appliance.commands import CommandContext
from appliance.errors import CommandTimeout


def test_check_raises_timeout_when_cancelled_or_past_the_deadline() -> None:
    job = Job.local(30)
    job.check()
    assert 29 < job.remaining <= 30
    job.cancelled.set()
    with pytest.raises(CommandTimeout) as cancelled:
        job.check()
    assert cancelled.value.code == "timeout" and cancelled.value.details["reason"] == "cancelled"
    late = Job(deadline=time.monotonic() - 1)
    assert late.remaining == 0.0
    with pytest.raises(CommandTimeout, match="deadline"):
        late.check()
    assert Job.local(5).within(60) <= time.monotonic() + 5


def test_local_job_reports_progress_to_its_caller() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    job = Job.local(5, progress=lambda step, data: seen.append((step, dict(data))))
    job.progress("lift", {"position": 2})
    assert seen == [("lift", {"position": 2})]
    Job.local(5).progress("anything", {})  # no sink: dropped


def test_from_context_shares_the_command_deadline_cancellation_and_wire_events() -> None:
    sent: list[tuple[str, dict[str, Any], bool]] = []

    def emit(kind: str, data: dict[str, Any], durable: bool = True) -> None:
        sent.append((kind, data, durable))

    ctx = CommandContext("c-7", "enrollment.portrait", time.monotonic() + 10, emit)
    job = Job.from_context(ctx)
    assert job.deadline == ctx.deadline and job.cancelled is ctx.cancelled
    job.progress("waiting_for_finger", {"attempt": 1})
    job.progress("guidance", {"frame": 3, "hints": ["look_at_camera"]})
    assert sent == [
        (
            "command.progress",
            {
                "command_id": "c-7",
                "command": "enrollment.portrait",
                "step": "waiting_for_finger",
                "attempt": 1,
            },
            False,
        ),
        ("camera.guidance", {"command_id": "c-7", "frame": 3, "hints": ["look_at_camera"]}, False),
    ]
    # The dispatcher's timeout sets the context's event: the service's job sees it.
    threading.Thread(target=ctx.cancelled.set).start()
    assert job.cancelled.wait(5)
    with pytest.raises(CommandTimeout):
        job.check()
