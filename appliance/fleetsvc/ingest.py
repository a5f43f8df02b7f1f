"""Ingest into the fleet database, and the alarm evaluator.

:class:`ServiceIngest` subscribes like ``fleet controller`` (MQTT 5 shared subscriptions
``$share/GROUP/...``, MQTT 5.0 section 4.8.2, so several service instances split the fleet) to
status, heartbeats, events, configuration reports and fleet-job reports (``jobs/reported``),
verifies each message's device signature with the approved key (``fleet watch``'s
:class:`EventStream` does both), and hands the messages to one writer thread that stores
them in batches (one transaction every ``flush_s`` or ``batch`` messages: at 10,000 kiosks
beating every 10 s that is 1,000 messages a second).

A message whose device signature fails (``bad``) is stored as seen (its verdict shown) but is
no contact with the kiosk: it never moves ``last_seen`` and never changes its state. A job report
changes the kiosk's state in the job only when it verifies (``ok``), as the job runner requires.

:class:`AlarmEvaluator` checks the database every ``interval_s`` (so every instance can run one:
an open alarm is unique per device and kind in the database) for kiosks lost or silent longer
than ``lost_after_s``, unhealthy, or with an outbox over ``outbox_limit``; package rejections
and configuration roll-backs raise their alarm as they arrive.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ..configpush import peek_version
from ..fleet.conn import BrokerOptions, FleetMqtt, Message
from ..fleet.tools import Verification, collect_retained, device_of, verify_from
from ..fleet.watch import EventStream, Seen, status_last_seen, status_state
from ..protocol.topics import TopicKind, Topics, parse, shared
from .db import FleetDB, WriteBatch, devices, job_devices, jobs
from .jobstore import REPORT, complete_finished, report_rows

log = logging.getLogger(__name__)

SAMPLE_EVERY_S = 60.0  # at most one health-timeline sample per kiosk and minute (and changes)
PACKAGE_REJECTED = ("enrollment.rejected",)


def health_of(devs: Any) -> str:
    """``ok`` or the devices that are not (``fingerprint:error``); ``-`` when none reported."""
    if not isinstance(devs, dict) or not devs:
        return "-"
    bad = [f"{k}:{v}" for k, v in sorted(devs.items()) if v not in ("ok", "disabled")]
    return "ok" if not bad else " ".join(bad)[:200]


def status_values(body: dict[str, Any], state: str) -> dict[str, Any]:
    """The device row's columns a status states (the daemon's birth: daemon.py)."""
    values: dict[str, Any] = {"state": state}
    if isinstance(body.get("version"), str):
        values["version"] = body["version"][:64]
    if isinstance(body.get("site"), str):
        values["site"] = body["site"][:200]
    groups = body.get("groups")
    if isinstance(groups, list) and all(isinstance(g, str) for g in groups):
        values["groups"] = ("," + ",".join(groups) + "," if groups else "")[:500]
    if state == "online":
        values["health"] = health_of(body.get("devices"))
        values["devices_json"] = json.dumps(body.get("devices") or {})
    if isinstance(body.get("connected_at"), int | float):
        values["connected_at"] = float(body["connected_at"])
    return values


def _is_job_report(prefix: str, topic: str) -> bool:
    parsed = parse(prefix, topic)
    return parsed is not None and parsed.kind is TopicKind.JOBS_REPORTED


def _is_config(prefix: str, topic: str) -> bool:
    """A kiosk's retained desired or reported configuration."""
    parsed = parse(prefix, topic)
    return parsed is not None and parsed.kind in (
        TopicKind.CONFIG_DESIRED,
        TopicKind.CONFIG_REPORTED,
    )


@dataclass
class IngestCounters:
    messages: int = 0
    stored: int = 0
    forged: int = 0
    job_reports: int = 0  # verified kiosk reports of a job's state
    batches: int = 0  # transactions written (a batch is one, or two: durable and soft)
    latency: list[float] = field(default_factory=list)  # arrival -> committed, seconds
    # a heartbeat's own ``ts`` -> committed (kiosk, broker, ingest and database together)
    heartbeat_latency: list[float] = field(default_factory=list)
    batch_seconds: list[float] = field(default_factory=list)  # one transaction, start -> commit
    batch_sizes: list[int] = field(default_factory=list)


def _beat(what: str, obj: Any) -> bool:
    """A heartbeat (soft state) among the writer's items."""
    return what == "seen" and obj.kind == "telemetry"


def _device_of_item(what: str, obj: Any) -> str:
    if what == "seen":
        return str(obj.device)
    return str(obj[1] if what == "job" else obj[0])


class _Stream(EventStream):
    """``fleet watch``'s stream plus the kiosks' configuration and job reports."""

    def __init__(self, *a: Any, on_report: Any, on_job: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.on_report, self.on_job = on_report, on_job

    def filters(self) -> list[str]:
        out = super().filters()
        every = Topics.anyone(self.opts.prefix)
        for extra in (every.config_reported, every.config_desired, every.jobs_reported):
            out.append(shared(self.share_group, extra) if self.share_group else extra)
        return out

    def _on_message(self, msg: Message) -> None:
        if _is_job_report(self.opts.prefix, msg.topic):
            self.on_job(msg)
            return
        if _is_config(self.opts.prefix, msg.topic):
            self.on_report(msg)
            return
        super()._on_message(msg)


class ServiceIngest:
    def __init__(
        self,
        db: FleetDB,
        opts: BrokerOptions,
        keys: dict[str, bytes],
        *,
        share_group: str | None = "fleet-service",
        instance: str | None = None,
        flush_s: float = 0.1,
        batch: int = 1000,
    ) -> None:
        self.db = db
        self.opts = opts
        self.keys = keys
        self.flush_s, self.batch = flush_s, batch
        self.q: queue.Queue[tuple[float, str, Any]] = queue.Queue()
        self.counters = IngestCounters()
        self.alarms_raised = 0
        self._last_sample: dict[str, tuple[float, str]] = {}
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._run, name="fleetsvc-writer", daemon=True)
        self.stream = _Stream(
            opts,
            keys,
            self._on_seen,
            status=True,
            telemetry=True,
            share_group=share_group,
            client_id=instance,
            on_report=self._on_report,
            on_job=self._on_job,
        )

    def start(self, timeout: float = 10.0, retained_s: float = 1.0) -> ServiceIngest:
        self._writer.start()
        self.stream.start(timeout)
        if retained_s > 0:
            self.load_retained(retained_s)
        return self

    def load_retained(self, listen_s: float) -> int:
        """Read the retained status and configuration reports once, without sharing: a broker
        never sends retained messages to a shared subscription (MQTT 5.0 section 4.8.2), so
        without this a kiosk lost before the service started would stay unknown."""
        p = self.opts.prefix
        every = Topics.anyone(p)
        with FleetMqtt(self.opts) as mqtt:
            msgs = collect_retained(
                mqtt,
                [every.status, every.config_reported, every.config_desired, every.jobs_reported],
                listen_s,
            )
        for topic, msg in msgs.items():
            dev = device_of(topic, p)
            if dev is None:
                continue
            if _is_job_report(p, topic):
                self._on_job(msg)
                continue
            if _is_config(p, topic):
                self._on_report(msg)
                continue
            try:
                body = json.loads(msg.payload)
            except ValueError:
                continue
            if isinstance(body, dict):
                verdict = verify_from(self.keys, dev, msg)
                seen_at = status_last_seen(body) if verdict.status != "bad" else None
                self._on_seen(
                    Seen("status", dev, "status", topic, body, verdict, last_seen=seen_at)
                )
        return len(msgs)

    def stop(self) -> None:
        self.stream.stop()
        self._stop.set()
        self._writer.join(10)

    # -- broker side ---------------------------------------------------------------------------

    def _on_seen(self, seen: Seen) -> None:
        self.q.put((time.time(), "seen", seen))

    def _on_report(self, msg: Message) -> None:
        dev = device_of(msg.topic, self.opts.prefix)
        if dev is not None and msg.payload:
            self.q.put((time.time(), "report", (dev, msg, verify_from(self.keys, dev, msg))))

    def _on_job(self, msg: Message) -> None:
        """A kiosk's signed report of its state in a job (``{"job", "device", "state",
        "detail", "ts"}``, docs/updates.md): recorded only when it verifies."""
        dev = device_of(msg.topic, self.opts.prefix)
        if dev is None or not msg.payload:
            return
        if not verify_from(self.keys, dev, msg).ok:
            self.counters.forged += 1
            log.warning("job report of %s does not verify: ignored", dev)
            return
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(body, dict) or body.get("device", dev) != dev:
            return
        job, state = body.get("job"), body.get("state")
        if isinstance(job, str) and isinstance(state, str):
            detail = str(body.get("detail") or "")
            self.q.put((time.time(), "job", (job[:32], dev, state, detail)))

    # -- writer --------------------------------------------------------------------------------

    def _run(self) -> None:
        while not (self._stop.is_set() and self.q.empty()):
            items: list[tuple[float, str, Any]] = []
            try:
                items.append(self.q.get(timeout=self.flush_s))
            except queue.Empty:
                continue
            # By size or by time, whichever first, the time counted from the oldest message's
            # arrival: one that waited behind a slow commit does not wait another flush_s.
            deadline = time.monotonic() + self.flush_s - max(0.0, time.time() - items[0][0])
            while len(items) < self.batch:  # past the deadline: what is there, no waiting
                left = deadline - time.monotonic()
                try:
                    items.append(self.q.get(timeout=left) if left > 0 else self.q.get_nowait())
                except queue.Empty:
                    break
            try:
                self.write(items)
            except Exception:  # the writer must outlive a database outage: log, go on
                log.exception("fleet service: could not store %d message(s)", len(items))

    def write(self, items: list[tuple[float, str, Any]]) -> None:
        """Store one batch: the kiosks that sent only heartbeats in it in one soft transaction
        (``FleetDB.tx(soft=True)``: soft state, the next heartbeat replaces it), everything else
        (statuses, events, alarms, configuration and job reports, and the heartbeats of a kiosk
        that sent one of those in the batch, so its messages stay in order) in a durable one."""
        durable_devs = {
            _device_of_item(what, obj) for _a, what, obj in items if not _beat(what, obj)
        }
        soft = [it for it in items if _device_of_item(it[1], it[2]) not in durable_devs]
        durable = [it for it in items if _device_of_item(it[1], it[2]) in durable_devs]
        if durable:
            self._write_tx(durable, soft=False)
        if soft:
            self._write_tx(soft, soft=True)

    def _write_tx(self, items: list[tuple[float, str, Any]], *, soft: bool) -> None:
        now = time.time()
        t0 = time.perf_counter()
        with self.db.tx(soft=soft) as conn:
            batch = WriteBatch(self.db, conn)
            job_rows: list[dict[str, Any]] = []
            for _arrived, what, obj in items:
                if what == "seen":
                    self._store_seen(batch, obj, now)
                elif what == "job":
                    job, dev, state, detail = obj
                    job_rows += report_rows(job, [(dev, state, detail)], now)
                else:
                    dev, msg, verdict = obj
                    self._store_report(batch, dev, msg, verdict, now)
            batch.flush()
            if job_rows:
                self._store_job_reports(conn, job_rows, now)
        done = time.time()
        c = self.counters
        c.messages += len(items)
        c.batches += 1
        c.batch_seconds.append(time.perf_counter() - t0)
        c.batch_sizes.append(len(items))
        c.latency.extend(done - arrived for arrived, _w, _o in items)
        for _a, what, obj in items:
            if what == "seen" and obj.kind == "telemetry":
                ts = obj.body.get("ts")
                if isinstance(ts, int | float) and not isinstance(ts, bool):
                    c.heartbeat_latency.append(done - ts)
        for samples in (c.latency, c.heartbeat_latency, c.batch_seconds, c.batch_sizes):
            if len(samples) > 200_000:
                del samples[:100_000]

    def _store_job_reports(self, conn: Any, rows: list[dict[str, Any]], now: float) -> None:
        """In arrival order (a kiosk's ``in_progress`` before its final state): runs of plain
        reports as one executemany; a ``rolled_back`` alone, so that an update's roll-back
        that changed its row (not a re-delivered retained report) raises its alarm."""
        run: list[dict[str, Any]] = []
        for row in [*rows, None]:
            if row is not None and row["b_state"] != "rolled_back":
                run.append(row)
                continue
            if run:
                conn.execute(REPORT, run)
                run = []
            if row is None:
                break
            if conn.execute(REPORT.returning(job_devices.c.job_id), row).first() is None:
                continue
            kind = conn.execute(
                sa.select(jobs.c.kind).where(jobs.c.job_id == row["b_job"])
            ).scalar()
            if kind == "update":
                detail = f"job {row['b_job']}: {row['b_detail']}"[:500]
                self.alarms_raised += self.db.raise_alarm(
                    conn, row["b_dev"], "update_rolled_back", detail, now
                )
        complete_finished(conn, [r["b_job"] for r in rows], now)
        self.counters.job_reports += len(rows)

    def _sample(
        self, batch: WriteBatch, dev: str, ts: float, state: str, health: str, depth: Any
    ) -> None:
        last = self._last_sample.get(dev)
        if last is None or ts - last[0] >= SAMPLE_EVERY_S or last[1] != f"{state}/{health}":
            self._last_sample[dev] = (ts, f"{state}/{health}")
            batch.add_sample(
                device_id=dev,
                ts=ts,
                state=state,
                health=health,
                outbox_depth=depth if isinstance(depth, int) else None,
            )

    def _store_seen(self, batch: WriteBatch, seen: Seen, now: float) -> None:
        dev, body, sig = seen.device, seen.body, seen.verified.status
        forged = sig == "bad"
        if forged:
            self.counters.forged += 1
            batch.upsert_device(dev, now, signature="bad")
            return
        if seen.kind == "status":
            state = status_state(body)
            values = status_values(body, state)
            values["signature"] = sig
            seen_at = seen.last_seen or status_last_seen(body)
            if seen_at is not None:
                values["last_seen"] = seen_at
            batch.upsert_device(dev, now, **values)
            self._sample(batch, dev, seen_at or now, state, values.get("health", "-"), None)
            self.counters.stored += 1
        elif seen.kind == "telemetry":
            devs = body.get("devices")
            health = health_of(devs)
            values = {"last_seen": seen.received_at, "signature": sig, "state": "online"}
            if isinstance(body.get("outbox_depth"), int):
                values["outbox_depth"] = body["outbox_depth"]
            if health != "-":
                values["health"] = health
                values["devices_json"] = json.dumps(devs)
            batch.upsert_device(dev, now, **values)
            self._sample(batch, dev, seen.received_at, "online", health, body.get("outbox_depth"))
            self.counters.stored += 1
        elif seen.kind == "event":
            eid = body.get("id")
            ts = body.get("ts")
            batch.upsert_device(dev, now, last_seen=seen.received_at, signature=sig)
            if not isinstance(eid, str):
                return
            event = {
                "event_id": eid[:64],
                "device_id": dev,
                "seq": body.get("seq") if isinstance(body.get("seq"), int) else None,
                "type": seen.type[:100],
                "ts": float(ts) if isinstance(ts, int | float) else seen.received_at,
                "data": json.dumps(body.get("data"), default=str),
                "verified": sig,
            }
            self.counters.stored += 1
            if seen.type not in PACKAGE_REJECTED:
                batch.insert_event(**event)
            elif self.db.insert_event(batch.conn, **event):  # new: alarm (a re-send is not)
                raw = body.get("data")
                data: dict[str, Any] = raw if isinstance(raw, dict) else {}
                detail = f"{data.get('package_id', '?')}: {data.get('reason', '')}"
                self.alarms_raised += self.db.raise_alarm(
                    batch.conn, dev, "package_rejected", detail, now
                )

    def _store_report(
        self, batch: WriteBatch, dev: str, msg: Message, v: Verification, now: float
    ) -> None:
        parsed = parse(self.opts.prefix, msg.topic)
        if parsed is not None and parsed.kind is TopicKind.CONFIG_DESIRED:
            # the administrators' signed document (the kiosk verifies it): its version only
            version = peek_version(msg.payload)
            if version is not None:
                batch.upsert_device(dev, now, config_desired=version)
            return
        if v.status == "bad":
            self.counters.forged += 1
            return
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        status = str(body.get("status") or "")[:32]
        values: dict[str, Any] = {"config_status": status}
        applied = body.get("applied_version")
        if isinstance(applied, int):
            values["config_applied"] = applied
        if status == "applied" and isinstance(body.get("version"), int):
            values["config_applied"] = body["version"]
        batch.upsert_device(dev, now, **values)
        self.counters.stored += 1
        if status == "rolled_back":
            detail = f"v{body.get('version')}: {body.get('reason', '')}"
            self.alarms_raised += self.db.raise_alarm(
                batch.conn, dev, "config_rolled_back", detail, now
            )


class AlarmEvaluator:
    """Condition alarms from the device table, raised and cleared every ``interval_s``."""

    def __init__(
        self,
        db: FleetDB,
        *,
        lost_after_s: float = 300.0,
        outbox_limit: int = 100,
        interval_s: float = 1.0,
    ) -> None:
        self.db = db
        self.lost_after_s = lost_after_s
        self.outbox_limit = outbox_limit
        self.interval_s = interval_s
        self.raised = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleetsvc-alarms", daemon=True)

    def start(self) -> AlarmEvaluator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.evaluate()
            except Exception:
                log.exception("fleet service: alarm evaluation failed")

    def evaluate(self, now: float | None = None) -> int:
        """One pass; returns the number of alarms raised."""
        now = time.time() if now is None else now
        c = devices.c
        cutoff = now - self.lost_after_s
        conditions = {
            # lost (Last Will) or silent (no heartbeat) for longer than the delay
            "lost": sa.and_(
                c.state.in_(["online", "lost"]), sa.func.coalesce(c.last_seen, 0) < cutoff
            ),
            "unhealthy": sa.and_(c.state == "online", c.health != "ok", c.health != "-"),
            "outbox_growing": sa.and_(c.state == "online", c.outbox_depth > self.outbox_limit),
        }
        raised = 0
        with self.db.tx() as conn:
            for kind, cond in conditions.items():
                rows = conn.execute(
                    sa.select(c.device_id, c.state, c.last_seen, c.health, c.outbox_depth).where(
                        cond
                    )
                ).all()
                now_bad = {r.device_id: r for r in rows}
                was = self.db.open_alarm_devices(conn, kind)
                for dev in set(now_bad) - was:
                    r = now_bad[dev]
                    detail = _detail(kind, r, now)
                    raised += self.db.raise_alarm(conn, dev, kind, detail, now)
                self.db.clear_alarms(conn, sorted(was - set(now_bad)), kind, now)
        self.raised += raised
        return raised


def _detail(kind: str, r: Any, now: float) -> str:
    if kind == "lost":
        if r.last_seen is None:
            return f"{r.state}, last seen unknown"
        clock = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(r.last_seen))
        return f"{r.state}, last seen {clock} ({now - r.last_seen:.0f} s ago)"
    if kind == "unhealthy":
        return str(r.health)
    return f"outbox depth {r.outbox_depth}"
