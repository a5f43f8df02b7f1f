"""Fleet jobs: a command, a configuration or an update for many kiosks, rolled out in stages,
with each kiosk's state kept on the fleet side (docs/updates.md, "Fleet jobs").

:class:`JobStore` is the persistence (one SQLite file, ``<fleet home>/jobs.db``): the jobs and
one row per (job, device). It is deliberately small and free of MQTT so that a long-running
fleet service can take it over.

:class:`JobRunner` drives a job over MQTT: it publishes each released device's signed job
document **retained** on ``{prefix}/{device}/jobs/desired`` (a kiosk offline at the time gets
it when it returns, until the document's expiry), reads the kiosks' reports on
``{prefix}/+/jobs/reported`` (verified with the approved device keys), and releases the
rollout's next wave:

* a canary share first (``canary``, at least one device); the next waves wait until every
  canary device reached a final state;
* then waves of ``wave_size`` devices every ``wave_interval_s`` seconds;
* abort when the share of bad outcomes (failed, rolled back, timed out) among the finished
  devices exceeds ``abort_ratio`` once at least ``abort_min`` devices finished: nothing more is
  released, the retained documents of devices that did not start are cleared and those
  devices are ``canceled``.

Cancel does the same by hand. A device that has not reached a final state when the job
expires is ``timed_out``.

The runner works on any :class:`JobStorage`: this module's SQLite :class:`JobStore` (the
default) or, when the fleet service is configured, the service's database
(``appliance.fleetsvc.jobstore.ServiceJobStore``, the same tables there, docs/fleet-service.md).
"""

from __future__ import annotations

import json
import logging
import math
import queue
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import ApplianceError
from ..mqttclient import FleetMqtt, Message
from ..protocol.codes import ErrorCode
from ..protocol.topics import Topics
from ..trust.certs import OperatorKey
from ..update import topics
from ..update.jobdoc import BAD, FINAL, KINDS, STATES, sign_job

log = logging.getLogger(__name__)

JOBS_DB = "jobs.db"
JOB_STATES = ("running", "completed", "aborted", "canceled")
#: States a kiosk may report (the fleet sets pending/queued/canceled/timed_out itself).
REPORTABLE = ("in_progress", "succeeded", "failed", "rolled_back")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    target TEXT NOT NULL,
    rollout TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    created_at REAL NOT NULL,
    expires_at INTEGER NOT NULL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS job_devices (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    device TEXT NOT NULL,
    state TEXT NOT NULL,
    wave INTEGER,
    released_at REAL,
    updated_at REAL NOT NULL,
    detail TEXT,
    PRIMARY KEY (job_id, device)
);
CREATE INDEX IF NOT EXISTS job_devices_state ON job_devices (job_id, state);
"""


class JobError(ApplianceError):
    code = ErrorCode.JOB_INVALID


@dataclass(frozen=True)
class Rollout:
    """Staging of a job; the defaults release everything at once and never abort."""

    canary: float = 0.0  # share of the devices in the first wave (0: no canary wave)
    wave_size: int = 0  # devices per later wave (0: all the rest at once)
    wave_interval_s: float = 0.0
    abort_ratio: float = 1.0  # abort when bad/finished exceeds this (1.0: never)
    abort_min: int = 1  # ... once at least this many devices finished

    def validate(self) -> Rollout:
        problems = []
        if not 0.0 <= self.canary <= 1.0:
            problems.append("canary must be a share between 0 and 1")
        if self.wave_size < 0:
            problems.append("wave_size must be >= 0")
        if self.wave_interval_s < 0:
            problems.append("wave_interval_s must be >= 0")
        if not 0.0 <= self.abort_ratio <= 1.0:
            problems.append("abort_ratio must be a share between 0 and 1")
        if self.abort_min < 1:
            problems.append("abort_min must be >= 1")
        if problems:
            raise JobError(
                "invalid rollout: " + "; ".join(problems), details={"problems": problems}
            )
        return self


@dataclass
class JobRecord:
    id: str
    kind: str
    spec: dict[str, Any]
    target: dict[str, Any]
    rollout: Rollout
    state: str
    reason: str | None
    created_at: float
    expires_at: int
    finished_at: float | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d["total"] = sum(self.counts.values())
        return d


class JobStorage(Protocol):
    """What :class:`JobRunner` and ``fleet jobs`` need of a store of jobs (two stores have it:
    :class:`JobStore` and the fleet service's ``ServiceJobStore``)."""

    def close(self) -> None: ...

    def create(
        self,
        kind: str,
        spec: dict[str, Any],
        target: dict[str, Any],
        devices: Iterable[str],
        rollout: Rollout,
        expires_at: int,
        *,
        now: float | None = None,
    ) -> JobRecord: ...

    def get(self, job_id: str) -> JobRecord | None: ...

    def jobs(self, *, state: str | None = None) -> list[JobRecord]: ...

    def counts(self, job_id: str) -> dict[str, int]: ...

    def devices(self, job_id: str, *, state: str | None = None) -> list[dict[str, Any]]: ...

    def release(self, job_id: str, devices: Iterable[str], wave: int, *, now: float) -> None: ...

    def report_many(
        self, job_id: str, reports: Iterable[tuple[str, str, str]], *, now: float
    ) -> int: ...

    def set_devices(
        self, job_id: str, from_states: Iterable[str], state: str, detail: str, *, now: float
    ) -> list[str]: ...

    def finish(self, job_id: str, state: str, reason: str | None, *, now: float) -> None: ...

    def waves_released(self, job_id: str) -> int: ...

    def wave_unfinished(self, job_id: str, wave: int) -> int: ...

    def last_released_at(self, job_id: str) -> float | None: ...

    def audit(self, action: str, job_id: str, **detail: Any) -> None:
        """Record an administrator's action on a job where the store keeps an audit log."""


class JobStore:
    """Jobs and per-device states in ``<home>/jobs.db`` (SQLite, WAL)."""

    def __init__(self, home: Path) -> None:
        path = Path(home).expanduser() / JOBS_DB
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(_SCHEMA)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def create(
        self,
        kind: str,
        spec: dict[str, Any],
        target: dict[str, Any],
        devices: Iterable[str],
        rollout: Rollout,
        expires_at: int,
        *,
        now: float | None = None,
    ) -> JobRecord:
        if kind not in KINDS:
            raise JobError(f"job kind must be one of {KINDS}", details={"field": "kind"})
        devs = sorted(set(devices))
        if not devs:
            raise JobError("the job's target matches no device", details={"field": "target"})
        t = time.time() if now is None else now
        job_id = f"j-{uuid.uuid4().hex[:12]}"
        with self._tx() as c:
            c.execute(
                "INSERT INTO jobs (id, kind, spec, target, rollout, state, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
                (
                    job_id,
                    kind,
                    json.dumps(spec),
                    json.dumps(target),
                    json.dumps(asdict(rollout.validate())),
                    t,
                    int(expires_at),
                ),
            )
            c.executemany(
                "INSERT INTO job_devices (job_id, device, state, updated_at)"
                " VALUES (?, ?, 'pending', ?)",
                [(job_id, d, t) for d in devs],
            )
        rec = self.get(job_id)
        assert rec is not None
        return rec

    def _record(self, row: tuple[Any, ...]) -> JobRecord:
        rec = JobRecord(
            id=row[0],
            kind=row[1],
            spec=json.loads(row[2]),
            target=json.loads(row[3]),
            rollout=Rollout(**json.loads(row[4])),
            state=row[5],
            reason=row[6],
            created_at=row[7],
            expires_at=row[8],
            finished_at=row[9],
        )
        rec.counts = self.counts(rec.id)
        return rec

    _COLS = "id, kind, spec, target, rollout, state, reason, created_at, expires_at, finished_at"

    def get(self, job_id: str) -> JobRecord | None:
        row = self.conn.execute(f"SELECT {self._COLS} FROM jobs WHERE id = ?", (job_id,)).fetchone()  # noqa: S608 - constant names, ? placeholders
        return self._record(row) if row else None

    def jobs(self, *, state: str | None = None) -> list[JobRecord]:
        sql = f"SELECT {self._COLS} FROM jobs"  # noqa: S608 - constant names, ? placeholders
        args: tuple[Any, ...] = ()
        if state:
            sql += " WHERE state = ?"
            args = (state,)
        return [self._record(r) for r in self.conn.execute(sql + " ORDER BY created_at", args)]

    def counts(self, job_id: str) -> dict[str, int]:
        rows = self.conn.execute(
            "SELECT state, COUNT(*) FROM job_devices WHERE job_id = ? GROUP BY state", (job_id,)
        )
        return {s: n for s, n in rows}

    def devices(self, job_id: str, *, state: str | None = None) -> list[dict[str, Any]]:
        sql = (
            "SELECT device, state, wave, released_at, updated_at, detail FROM job_devices "
            "WHERE job_id = ?"
        )
        args: tuple[Any, ...] = (job_id,)
        if state:
            sql += " AND state = ?"
            args += (state,)
        cols = ("device", "state", "wave", "released_at", "updated_at", "detail")
        return [
            dict(zip(cols, r, strict=True))
            for r in self.conn.execute(sql + " ORDER BY device", args)
        ]

    def release(self, job_id: str, devices: Iterable[str], wave: int, *, now: float) -> None:
        with self._tx() as c:
            c.executemany(
                "UPDATE job_devices SET state = 'queued', wave = ?, released_at = ?, "
                "updated_at = ? WHERE job_id = ? AND device = ? AND state = 'pending'",
                [(wave, now, now, job_id, d) for d in devices],
            )

    def report(self, job_id: str, device: str, state: str, detail: str, *, now: float) -> bool:
        """A kiosk's report; a final state is never overwritten. True if it changed a row."""
        return self.report_many(job_id, [(device, state, detail)], now=now) == 1

    _REPORT_SQL = (
        "UPDATE job_devices SET state = ?, detail = ?, updated_at = ? "  # noqa: S608 - constant states
        "WHERE job_id = ? AND device = ? AND state != 'pending' AND state NOT IN ("
        + ", ".join(f"'{s}'" for s in FINAL)
        + ")"
    )

    def report_many(
        self, job_id: str, reports: Iterable[tuple[str, str, str]], *, now: float
    ) -> int:
        """Reports ``(device, state, detail)`` in one transaction (one fsync); rows changed."""
        rows = [(st, det, now, job_id, dev) for dev, st, det in reports if st in REPORTABLE]
        if not rows:
            return 0
        with self._tx() as c:
            before = c.total_changes
            c.executemany(self._REPORT_SQL, rows)
            return c.total_changes - before

    def set_devices(
        self, job_id: str, from_states: Iterable[str], state: str, detail: str, *, now: float
    ) -> list[str]:
        """Move every device of the job in ``from_states`` to ``state``; the devices moved."""
        froms = tuple(from_states)
        marks = ",".join("?" for _ in froms)
        with self._tx() as c:
            moved = [
                r[0]
                for r in c.execute(
                    f"SELECT device FROM job_devices WHERE job_id = ? AND state IN ({marks})",  # noqa: S608 - constant names, ? placeholders
                    (job_id, *froms),
                )
            ]
            c.execute(
                f"UPDATE job_devices SET state = ?, detail = ?, updated_at = ? "  # noqa: S608 - constant names, ? placeholders
                f"WHERE job_id = ? AND state IN ({marks})",
                (state, detail, now, job_id, *froms),
            )
        return moved

    def finish(self, job_id: str, state: str, reason: str | None, *, now: float) -> None:
        if state not in JOB_STATES:
            raise JobError(f"unknown job state {state!r}")
        with self._tx() as c:
            c.execute(
                "UPDATE jobs SET state = ?, reason = ?, finished_at = ? WHERE id = ? "
                "AND state = 'running'",
                (state, reason, now, job_id),
            )

    def audit(self, action: str, job_id: str, **detail: Any) -> None:
        """``jobs.db`` keeps no audit log (the fleet service's database does)."""

    def waves_released(self, job_id: str) -> int:
        row = self.conn.execute(
            "SELECT MAX(wave) FROM job_devices WHERE job_id = ?", (job_id,)
        ).fetchone()
        return int(row[0] or 0)

    def wave_unfinished(self, job_id: str, wave: int) -> int:
        """Devices of one wave not yet in a final state."""
        row = self.conn.execute(
            "SELECT COUNT(*) FROM job_devices WHERE job_id = ? AND wave = ? AND state NOT IN "  # noqa: S608 - constant names, ? placeholders
            f"({','.join(repr(s) for s in FINAL)})",
            (job_id, wave),
        ).fetchone()
        return int(row[0])

    def last_released_at(self, job_id: str) -> float | None:
        row = self.conn.execute(
            "SELECT MAX(released_at) FROM job_devices WHERE job_id = ?", (job_id,)
        ).fetchone()
        return None if row[0] is None else float(row[0])


def cancel_job(
    store: JobStorage,
    clear: Callable[[list[str]], None],
    job_id: str,
    state: str,
    reason: str,
    *,
    now: float,
) -> None:
    """Stop a job (``aborted`` or ``canceled``): the devices that did not start are
    ``canceled`` (``clear`` empties the retained documents of those already released), nothing
    more is released. Kiosks already running it finish and report (their state is kept)."""
    moved = store.set_devices(job_id, ("queued",), "canceled", reason, now=now)
    clear(moved)
    store.set_devices(job_id, ("pending",), "canceled", reason, now=now)
    store.finish(job_id, state, reason, now=now)


# --- targeting --------------------------------------------------------------------------------


def match_query(status: dict[str, Any], query: dict[str, str]) -> bool:
    """``{"version": "0.1.0", "site": "hanoi-01"}`` against a kiosk's reported status: every
    key equal (text), ``*`` as a suffix wildcard (``version=0.1.*``)."""
    for k, want in query.items():
        have = status.get(k)
        if have is None:
            return False
        have_s = str(have)
        if want.endswith("*"):
            if not have_s.startswith(want[:-1]):
                return False
        elif have_s != want:
            return False
    return True


def parse_query(words: Iterable[str]) -> dict[str, str]:
    out = {}
    for w in words:
        k, sep, v = w.partition("=")
        if not sep or not k:
            raise JobError(f"query {w!r}: use key=value", details={"field": "where"})
        out[k] = v
    return out


# --- the runner -----------------------------------------------------------------------------


@dataclass
class Progress:
    job: str
    state: str
    counts: dict[str, int]
    wave: int

    def line(self) -> str:
        order = [s for s in STATES if self.counts.get(s)]
        parts = ", ".join(f"{self.counts[s]} {s}" for s in order)
        total = sum(self.counts.values())
        done = sum(self.counts.get(s, 0) for s in FINAL)
        return f"job {self.job} [{self.state}] wave {self.wave}: {done}/{total} final ({parts})"


class JobRunner:
    """Publishes, collects and stages one job (see the module docstring)."""

    def __init__(
        self,
        store: JobStorage,
        mqtt: FleetMqtt,
        signer: OperatorKey,
        *,
        prefix: str,
        verify: Callable[[str, Message], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.mqtt = mqtt
        self.signer = signer
        self.prefix = prefix
        self.verify = verify
        self.clock = clock
        self.rejected = 0  # reports whose device signature did not verify
        self._subscribed = False
        self._queue = mqtt.collector(Topics.anyone(prefix).jobs_reported)

    def _subscribe(self) -> None:
        if not self._subscribed:
            self.mqtt.subscribe([Topics.anyone(self.prefix).jobs_reported])
            self._subscribed = True

    # -- publishing ------------------------------------------------------------------------

    def _publish(self, job: JobRecord, devices: list[str], wave: int) -> None:
        now = self.clock()
        docs = [
            (d, sign_job(self.signer, d, job.id, job.kind, self._spec_for(job, d), job.expires_at))
            for d in devices
        ]
        # Queued before published: a kiosk's report can come back at once, and the fleet
        # service records it from the broker (not through this runner) only for a released
        # kiosk (a report of a pending one is dropped).
        self.store.release(job.id, devices, wave, now=now)
        for d, doc in docs:
            self.mqtt.publish(topics.job_desired(self.prefix, d), doc, retain=True)
        after = self.store.get(job.id)
        if after is not None and after.state != "running":
            # Canceled meanwhile (another administrator, the fleet service's dashboard): its
            # cancel cleared the documents of queued kiosks before these were published.
            gone = {d["device"] for d in self.store.devices(job.id, state="canceled")}
            self._clear([d for d in devices if d in gone])
            return
        log.info("job %s: wave %d released to %d device(s)", job.id, wave, len(devices))

    def _spec_for(self, job: JobRecord, device: str) -> dict[str, Any]:
        """What the kiosk gets: a configuration signed for it (the configuration push checks
        it like any desired configuration); an update without the fleet's local file name."""
        if job.kind == "config":
            from ..trust.configdoc import sign_config
            from ..trust.keys import b64decode, b64encode

            doc = sign_config(
                b64decode(job.spec["content"], what="content"),
                key=self.signer,
                version=int(job.spec["version"]),
                target=device,
                fmt=str(job.spec.get("format", "toml")),
            )
            return {"document": b64encode(doc), "version": int(job.spec["version"])}
        return {k: v for k, v in job.spec.items() if k != "bundle"}

    def _clear(self, devices: Iterable[str]) -> None:
        for d in devices:
            self.mqtt.publish(topics.job_desired(self.prefix, d), b"", retain=True)

    # -- reports ---------------------------------------------------------------------------

    def drain_reports(self, job_id: str, timeout: float = 0.0) -> int:
        """Apply every report waiting (waiting up to ``timeout`` for the first), in one
        transaction; the number of device states changed."""
        batch: list[tuple[str, str, str]] = []
        try:
            msg = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            while True:
                r = self._parse_report(job_id, msg)
                if r is not None:
                    batch.append(r)
                msg = self._queue.get_nowait()
        except queue.Empty:
            pass
        return self.store.report_many(job_id, batch, now=self.clock()) if batch else 0

    def _parse_report(self, job_id: str, msg: Message) -> tuple[str, str, str] | None:
        parts = msg.topic.split("/")
        if len(parts) < 4 or not msg.payload:
            return None
        device = parts[1]
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return None
        if not isinstance(body, dict) or body.get("job") != job_id:
            return None
        if self.verify is not None and not self.verify(device, msg):
            self.rejected += 1
            log.warning("job %s: report of %s does not verify: ignored", job_id, device)
            return None
        return device, str(body.get("state")), str(body.get("detail", ""))[:500]

    # -- staging ---------------------------------------------------------------------------

    def step(self, job_id: str) -> Progress:
        """One pass: time-outs, abort check, next wave, completion."""
        job = self.store.get(job_id)
        if job is None:
            raise JobError(f"no job {job_id}", code=ErrorCode.JOB_UNKNOWN)
        now = self.clock()
        wave = self._waves_released(job_id)
        if job.state != "running":
            return Progress(job.id, job.state, job.counts, wave)
        self._subscribe()
        if now > job.expires_at:
            moved = self.store.set_devices(
                job_id, ("queued", "in_progress"), "timed_out", "job expired", now=now
            )
            self._clear(moved)
            self.store.set_devices(job_id, ("pending",), "canceled", "job expired", now=now)
        c = self.store.counts(job_id)
        finished = sum(c.get(s, 0) for s in FINAL)
        bad = sum(c.get(s, 0) for s in BAD)
        r = job.rollout
        if finished >= r.abort_min and bad / max(1, finished) > r.abort_ratio:
            reason = (
                f"abort threshold crossed: {bad} of {finished} finished devices failed, rolled "
                f"back or timed out (> {r.abort_ratio:.0%})"
            )
            self.abort(job_id, "aborted", reason)
            job = self.store.get(job_id)
            assert job is not None
            return Progress(job.id, job.state, job.counts, wave)
        pending = [d["device"] for d in self.store.devices(job_id, state="pending")]
        if pending and self._may_release(job, wave, now):
            total = sum(c.values())
            if wave == 0 and r.canary > 0:
                n = max(1, math.ceil(total * r.canary))
            else:
                n = r.wave_size or len(pending)
            self._publish(job, pending[:n], wave + 1)
            wave += 1
        c = self.store.counts(job_id)
        if sum(c.get(s, 0) for s in FINAL) == sum(c.values()):
            self.store.finish(job_id, "completed", None, now=now)
        job = self.store.get(job_id)
        assert job is not None
        return Progress(job.id, job.state, job.counts, wave)

    def _waves_released(self, job_id: str) -> int:
        return self.store.waves_released(job_id)

    def _may_release(self, job: JobRecord, wave: int, now: float) -> bool:
        if wave == 0:
            return True
        r = job.rollout
        if wave == 1 and r.canary > 0 and self.store.wave_unfinished(job.id, 1):
            return False  # the canary wave must be over first
        last = self.store.last_released_at(job.id)
        return last is None or now - last >= r.wave_interval_s

    def abort(self, job_id: str, state: str, reason: str) -> None:
        """Stop the job (``aborted`` or ``canceled``): clear the documents of the devices that
        did not start, mark them canceled, release nothing more."""
        cancel_job(self.store, self._clear, job_id, state, reason, now=self.clock())
        log.warning("job %s %s: %s", job_id, state, reason)

    def run(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        poll_s: float = 0.2,
    ) -> Progress:
        """Step until the job is no longer running (or ``timeout``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = ""
        server = self._bundle_server(job_id)
        try:
            while True:
                p = self.step(job_id)
                if on_progress is not None and p.line() != last:
                    last = p.line()
                    on_progress(p)
                if p.state != "running":
                    return p
                if deadline is not None and time.monotonic() > deadline:
                    return p
                self.drain_reports(job_id, timeout=poll_s)
        finally:
            if server is not None:
                server.stop()

    def _bundle_server(self, job_id: str) -> Any:
        """An update job names its bundle file: serve it in chunks while the job runs."""
        job = self.store.get(job_id)
        if job is None or job.kind != "update" or not job.spec.get("bundle"):
            return None
        from .jobs_bundles import BundleServer

        server = BundleServer(self.mqtt, self.prefix)
        sha = server.add(Path(job.spec["bundle"]))
        if sha != job.spec.get("sha256"):
            raise JobError(
                f"bundle {job.spec['bundle']} changed since the job was created",
                details={"field": "bundle"},
            )
        return server.start()
