"""Fleet jobs in the simulator: every virtual kiosk takes its retained job document and
reports ``in_progress``, then a final state, like the daemon's job agent, so a rollout across
thousands of kiosks can be rehearsed against a real broker (``FleetSim.extensions``).

Like the rest of the simulator it does not verify signatures (the daemon does; tested there):
it reads the document's body, honours its device and expiry, and remembers the jobs it
finished so a re-delivered retained document is not run twice. Its reports are not signed, so
the runner that reads them must be told to accept unsigned reports (a test/benchmark switch).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from ..trust.keys import b64decode
from ..update import topics
from .sim import Publish, VirtualKiosk, _Lost

#: (device id, job body) -> the final state the kiosk reports.
Outcome = Callable[[str, dict[str, Any]], str]


def always(state: str) -> Outcome:
    return lambda _device, _body: state


class SimJobs:
    def __init__(self, outcome: Outcome | None = None, *, work_s: float = 0.0) -> None:
        self.outcome = outcome or always("succeeded")
        self.work_s = work_s
        self.done: dict[str, set[str]] = {}  # device -> jobs finished
        self.received = 0
        self.reports = 0

    def subscriptions(self, k: VirtualKiosk) -> list[str]:
        return [topics.job_desired(k.cfg.topic_prefix, k.id)]

    def on_message(self, k: VirtualKiosk, msg: Publish) -> None:
        if msg.topic != topics.job_desired(k.cfg.topic_prefix, k.id) or not msg.payload:
            return
        try:
            env = json.loads(msg.payload)
            body = json.loads(b64decode(env["body"], what="body"))
        except Exception:  # any malformed document is ignored, like the daemon
            return
        if not isinstance(body, dict) or body.get("device") != k.id:
            return
        job = str(body.get("job"))
        done = self.done.setdefault(k.id, set())
        if job in done or time.time() > float(body.get("expires_at", 0)):
            return
        self.received += 1
        self._report(k, job, "in_progress", "")
        final = self.outcome(k.id, body)

        def finish() -> None:
            done.add(job)
            self._report(k, job, final, f"simulated {body.get('kind')}")

        if self.work_s > 0:
            asyncio.get_running_loop().call_later(self.work_s, finish)
        else:
            finish()

    def _report(self, k: VirtualKiosk, job: str, state: str, detail: str) -> None:
        body = {"job": job, "device": k.id, "state": state, "detail": detail, "ts": time.time()}
        with contextlib.suppress(_Lost):
            k._publish(topics.job_reported(k.cfg.topic_prefix, k.id), body, qos=1, retain=True)
            self.reports += 1
