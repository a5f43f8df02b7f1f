"""Fleet jobs in the fleet service's database: :class:`ServiceJobStore` is the fleet tools'
:class:`~appliance.fleet.jobs.JobStorage` on the tables ``jobs`` and ``job_devices`` of
:class:`~appliance.fleetsvc.db.FleetDB` (SQLite or PostgreSQL, migration 4).

``appliance fleet jobs`` uses it instead of its own ``jobs.db`` when the service's database is
configured (``--db URL`` or ``$APPLIANCE_FLEET_DB``, loaded by name: the fleet tools never import
the service), so ``jobs create|list|show|run|cancel``, the service's ingest (which records the
kiosks' signed reports from ``{prefix}/+/jobs/reported``), its dashboard and its API read and
write the same rows: one code path, the :class:`~appliance.fleet.jobs.JobRunner`'s.

The semantics are :class:`~appliance.fleet.jobs.JobStore`'s (tests/fleetsvc/test_jobs.py runs
the same checks on both): a report moves only a released device that is not yet final, a final
state is never overwritten, ``set_devices`` moves devices between states in one transaction.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import StoreError
from ..fleet.jobs import JOB_STATES, REPORTABLE, JobError, JobRecord, Rollout
from ..protocol.codes import ErrorCode
from ..update.jobdoc import FINAL, KINDS
from .db import FleetDB, job_devices, jobs

#: The schema version that has the job tables (db.py MIGRATIONS).
JOBS_SCHEMA = 4

_J, _D = jobs.c, job_devices.c

# One kiosk's report (the ingest's and the runner's): only a released device that is not final.
# Plain comparisons, not NOT IN: an expanding IN cannot run as an executemany (the ingest's).
REPORT = (
    job_devices.update()
    .where(
        _D.job_id == sa.bindparam("b_job"),
        _D.device_id == sa.bindparam("b_dev"),
        *(_D.state != s for s in ("pending", *FINAL)),
    )
    .values(
        state=sa.bindparam("b_state"),
        detail=sa.bindparam("b_detail"),
        updated_at=sa.bindparam("b_now"),
    )
)


def report_rows(
    job_id: str, reports: Iterable[tuple[str, str, str]], now: float
) -> list[dict[str, Any]]:
    """Bind rows of :data:`REPORT` for ``(device, state, detail)``; states a kiosk may not
    report (``pending``, ``canceled``...) are dropped."""
    return [
        {"b_job": job_id, "b_dev": d, "b_state": st, "b_detail": det[:500], "b_now": now}
        for d, st, det in reports
        if st in REPORTABLE
    ]


def complete_finished(conn: Connection, job_ids: Iterable[str], now: float) -> None:
    """Running jobs among ``job_ids`` whose every device is final become ``completed`` (what
    the runner's next step would do: nothing is left to release or wait for)."""
    ids = sorted(set(job_ids))
    if not ids:
        return
    open_devices = (
        sa.select(sa.literal(1))
        .select_from(job_devices)
        .where(_D.job_id == _J.job_id, _D.state.not_in(FINAL))
        .exists()
    )
    conn.execute(
        jobs.update()
        .where(_J.job_id.in_(ids), _J.state == "running", ~open_devices)
        .values(state="completed", finished_at=now)
    )


class ServiceJobStore:
    """:class:`~appliance.fleet.jobs.JobStorage` on the fleet service's database."""

    def __init__(self, db: FleetDB, *, actor: str = "cli", owns_db: bool = False) -> None:
        self.db, self.actor, self._owns = db, actor, owns_db

    @classmethod
    def open(cls, url: str, *, actor: str) -> ServiceJobStore:
        """The store of the database at ``url``, which the service must have migrated (a
        command-line tool never changes a shared database's schema)."""
        db = FleetDB(url)
        try:
            have = (
                db.schema_version() if sa.inspect(db.engine).has_table("schema_migrations") else 0
            )
        except StoreError:
            db.close()
            raise
        except Exception as exc:  # an unreachable server, a missing file: name the URL
            db.close()
            raise StoreError(f"fleet database {url}: {exc}", code=ErrorCode.STORE_ERROR) from None
        if have < JOBS_SCHEMA:
            db.close()
            raise StoreError(
                f"the fleet database is at schema version {have}, jobs need {JOBS_SCHEMA}: "
                "run `appliance fleet serve --migrate` with it first",
                code=ErrorCode.STORE_ERROR,
                details={"field": "db", "schema_version": have},
            )
        return cls(db, actor=actor, owns_db=True)

    def close(self) -> None:
        if self._owns:
            self.db.close()

    # -- jobs --------------------------------------------------------------------------------

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
        with self.db.tx() as conn:
            conn.execute(
                jobs.insert().values(
                    job_id=job_id,
                    kind=kind,
                    spec=json.dumps(spec),
                    target=json.dumps(target),
                    rollout=json.dumps(asdict(rollout.validate())),
                    state="running",
                    created_by=self.actor[:64],
                    created_at=t,
                    expires_at=int(expires_at),
                )
            )
            rows = [{"job_id": job_id, "device_id": d, "state": "pending", "updated_at": t}
                    for d in devs]  # fmt: skip
            for i in range(0, len(rows), 1000):
                conn.execute(job_devices.insert(), rows[i : i + 1000])
        self.audit("job.create", job_id, kind=kind, devices=len(devs))
        rec = self.get(job_id)
        assert rec is not None
        return rec

    def _record(self, r: Any, counts: dict[str, int]) -> JobRecord:
        return JobRecord(
            id=r["job_id"],
            kind=r["kind"],
            spec=json.loads(r["spec"]),
            target=json.loads(r["target"]),
            rollout=Rollout(**json.loads(r["rollout"])),
            state=r["state"],
            reason=r["reason"],
            created_at=r["created_at"],
            expires_at=int(r["expires_at"]),
            finished_at=r["finished_at"],
            counts=counts,
        )

    def get(self, job_id: str) -> JobRecord | None:
        with self.db.tx() as conn:
            r = conn.execute(sa.select(jobs).where(_J.job_id == job_id)).mappings().first()
            if r is None:
                return None
            return self._record(r, self._counts(conn, [job_id]).get(job_id, {}))

    def created_by(self, job_id: str) -> str | None:
        with self.db.tx() as conn:
            v = conn.execute(sa.select(_J.created_by).where(_J.job_id == job_id)).scalar()
            return None if v is None else str(v)

    def jobs(self, *, state: str | None = None, limit: int | None = None) -> list[JobRecord]:
        """Jobs oldest first (as :class:`JobStore`), or the newest ``limit`` (still oldest
        first)."""
        q = sa.select(jobs)
        if state:
            q = q.where(_J.state == state)
        if limit is not None:
            q = q.order_by(_J.created_at.desc(), _J.job_id.desc()).limit(limit)
        else:
            q = q.order_by(_J.created_at, _J.job_id)
        with self.db.tx() as conn:
            rows = list(conn.execute(q).mappings())
            counts = self._counts(conn, [r["job_id"] for r in rows])
        out = [self._record(r, counts.get(r["job_id"], {})) for r in rows]
        return out[::-1] if limit is not None else out

    def job_counts(self) -> dict[str, int]:
        """Jobs by state (every state, zero included)."""
        with self.db.tx() as conn:
            rows = conn.execute(sa.select(_J.state, sa.func.count()).group_by(_J.state)).all()
        out = dict.fromkeys(JOB_STATES, 0)
        out.update({str(s): int(n) for s, n in rows})
        return out

    def _counts(self, conn: Connection, job_ids: list[str]) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {j: {} for j in job_ids}
        for i in range(0, len(job_ids), 500):
            rows = conn.execute(
                sa.select(_D.job_id, _D.state, sa.func.count())
                .where(_D.job_id.in_(job_ids[i : i + 500]))
                .group_by(_D.job_id, _D.state)
            )
            for job_id, state, n in rows:
                out[job_id][str(state)] = int(n)
        return out

    def counts(self, job_id: str) -> dict[str, int]:
        with self.db.tx() as conn:
            return self._counts(conn, [job_id])[job_id]

    def devices(
        self,
        job_id: str,
        *,
        state: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        q = sa.select(
            _D.device_id.label("device"),
            _D.state,
            _D.wave,
            _D.released_at,
            _D.updated_at,
            _D.detail,
        ).where(_D.job_id == job_id)
        if state:
            q = q.where(_D.state == state)
        q = q.order_by(_D.device_id).offset(offset)
        if limit is not None:
            q = q.limit(limit)
        with self.db.tx() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def jobs_of_device(self, device_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """The device's latest jobs: the job's kind and state, the device's state in it."""
        q = (
            sa.select(
                _J.job_id,
                _J.kind,
                _J.state.label("job_state"),
                _J.created_at,
                _D.state,
                _D.detail,
                _D.updated_at,
            )
            .join(jobs, _J.job_id == _D.job_id)
            .where(_D.device_id == device_id)
            .order_by(_J.created_at.desc())
            .limit(limit)
        )
        with self.db.tx() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def audit(self, action: str, job_id: str, **detail: Any) -> None:
        self.db.audit(self.actor, action, job_id, **detail)

    # -- the rollout's writes ----------------------------------------------------------------

    def release(self, job_id: str, devices: Iterable[str], wave: int, *, now: float) -> None:
        rows = [{"b_dev": d} for d in devices]
        if not rows:
            return
        with self.db.tx() as conn:
            conn.execute(
                job_devices.update()
                .where(
                    _D.job_id == job_id,
                    _D.device_id == sa.bindparam("b_dev"),
                    _D.state == "pending",
                )
                .values(state="queued", wave=wave, released_at=now, updated_at=now),
                rows,
            )

    def report(self, job_id: str, device: str, state: str, detail: str, *, now: float) -> bool:
        return self.report_many(job_id, [(device, state, detail)], now=now) == 1

    def report_many(
        self, job_id: str, reports: Iterable[tuple[str, str, str]], *, now: float
    ) -> int:
        """Reports ``(device, state, detail)`` in one transaction; rows changed (counted one
        statement at a time: a driver's count of an executemany is not reliable)."""
        rows = report_rows(job_id, reports, now)
        if not rows:
            return 0
        changed = 0
        with self.db.tx() as conn:
            for row in rows:
                changed += conn.execute(REPORT, row).rowcount
        return changed

    def set_devices(
        self, job_id: str, from_states: Iterable[str], state: str, detail: str, *, now: float
    ) -> list[str]:
        froms = list(from_states)
        where = sa.and_(_D.job_id == job_id, _D.state.in_(froms))
        with self.db.tx() as conn:
            if self.db.dialect == "postgresql":  # no other writer moves them in between
                conn.execute(sa.select(_J.job_id).where(_J.job_id == job_id).with_for_update())
            moved = list(conn.execute(sa.select(_D.device_id).where(where)).scalars())
            conn.execute(
                job_devices.update().where(where).values(state=state, detail=detail, updated_at=now)
            )
        return moved

    def finish(self, job_id: str, state: str, reason: str | None, *, now: float) -> None:
        if state not in JOB_STATES:
            raise JobError(f"unknown job state {state!r}")
        with self.db.tx() as conn:
            conn.execute(
                jobs.update()
                .where(_J.job_id == job_id, _J.state == "running")
                .values(state=state, reason=reason, finished_at=now)
            )

    def waves_released(self, job_id: str) -> int:
        with self.db.tx() as conn:
            v = conn.execute(sa.select(sa.func.max(_D.wave)).where(_D.job_id == job_id)).scalar()
        return int(v or 0)

    def wave_unfinished(self, job_id: str, wave: int) -> int:
        with self.db.tx() as conn:
            v = conn.execute(
                sa.select(sa.func.count()).where(
                    _D.job_id == job_id, _D.wave == wave, _D.state.not_in(FINAL)
                )
            ).scalar_one()
        return int(v)

    def last_released_at(self, job_id: str) -> float | None:
        with self.db.tx() as conn:
            v = conn.execute(
                sa.select(sa.func.max(_D.released_at)).where(_D.job_id == job_id)
            ).scalar()
        return None if v is None else float(v)
