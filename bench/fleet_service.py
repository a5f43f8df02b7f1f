"""The fleet service under a simulated fleet (issue 18, benchmarks), on SQLite and PostgreSQL:

* ingest: N simulated kiosks (appliance/fleet/sim.py) beat every ``--heartbeat`` seconds into
  one service instance through mosquitto; latency = the heartbeat's own ``ts`` -> the batch
  holding it committed to the database (kiosk, broker, ingest and database together), and its
  stages (``Stages``, recorded around the writer in this process, not in the product): ``net``
  = ``ts`` -> paho's callback (simulator, broker, the service's network thread), ``queue`` = ->
  the batch's transaction begins (the batch window and any commit ahead of it), ``write`` = the
  transactions of its batch; ``simulator``: how late the simulator's process stamped its beats
  (each beat is due one period after the previous one) and how many stayed unsent in a full
  socket buffer after the write (``sim_child``), over the same window;
* overview page with a filter: the server time of ``GET /?state=online&q=...&sort=last_seen``
  (the ``Server-Timing`` header: queries and template rendering), in the ingesting instance,
  and over HTTP from a web instance on the same database (``serve --no-ingest``, its own
  process);
* lost-kiosk alarm: ``--kill`` kiosks end without DISCONNECT (the broker sends their Last Will);
  the alarm is due ``--lost-after`` seconds after the kiosk's last contact (its last heartbeat):
  reported as raised - last contact, and raised - kill.

Baseline, measured in the same run on the same engine: 50 kiosks beating every second (the
unloaded path); ratio = full fleet p99 / baseline p99. The fleet runs in its own process
(``appliance fleet sim``), the service (ingest, alarms, web) in this one; mosquitto is the
third. PostgreSQL is a private cluster with its default durability (fsync on, synchronous
commit); SQLite runs in WAL mode, synchronous=NORMAL.

    .venv/bin/python bench/fleet_service.py [--devices 1000] [--heartbeat 10] [--steady 30]
        [--engines sqlite,postgresql] [--lost-after 10] [--kill 5] [--ingest-only]

Writes bench/results/fleet_service_<devices>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

try:
    import httpx
except ImportError:  # starlette 1.x's TestClient brings httpx2 (pyproject.toml), same API
    import httpx2 as httpx  # type: ignore[no-redef]
from _common import ROOT, emit, pct

sys.path.insert(0, str(ROOT))

from appliance.devtools.broker import Mosquitto, free_port
from appliance.fleet.conn import BrokerOptions
from appliance.fleet.sim import FleetConfig, FleetSim
from appliance.fleetsvc.auth import add_user, issue_token
from appliance.fleetsvc.db import FleetDB
from appliance.fleetsvc.servecli import FleetService, WebServer
from tests.fleetsvc.conftest import private_cluster
from tests.helpers import wait_for


def ms(v: float) -> float:
    return round(v * 1000, 2)


@contextlib.contextmanager
def service(url: str, broker: Mosquitto, prefix: str, lost_after: float) -> Iterator[Any]:
    db = FleetDB(url)
    svc = FleetService(
        db,
        BrokerOptions(host=broker.host, port=broker.port, prefix=prefix),
        {},
        share_group=f"g{prefix}",
        lost_after_s=lost_after,
        alarm_interval_s=1.0,
    ).start()
    port = free_port()
    web = WebServer(svc.app, "127.0.0.1", port).start()
    add_user(db, "bench", "viewer", "benchmark password")
    token = issue_token(db, "bench")
    try:
        yield svc, db, f"http://127.0.0.1:{port}", token
    finally:
        web.stop()
        svc.stop()
        db.close()


@contextlib.contextmanager
def sim_process(
    broker: Mosquitto, prefix: str, devices: int, heartbeat: float, report: Path | None = None
) -> Iterator[None]:
    """The simulated fleet in a process of its own (``appliance fleet sim``), as in the field
    the kiosks do not share the service's interpreter. With ``report``: run through
    :func:`sim_child` (this file), which writes the simulator's own publish lag there."""
    head = ["-m", "appliance.fleet.simcli"]
    if report is not None:
        head = [str(Path(__file__).resolve()), "--sim-child", str(report), "--"]
    proc = subprocess.Popen(
        [
            sys.executable,
            *head,
            "--host",
            broker.host,
            "--port",
            str(broker.port),
            "--devices",
            str(devices),
            "--heartbeat",
            str(heartbeat),
            "--topic-prefix",
            prefix,
            "--no-ingest",
            "--duration",
            "100000",
            "--connect-rate",
            "1000",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def victims(broker: Mosquitto, prefix: str, n: int, heartbeat: float) -> FleetSim:
    """The kiosks to kill, in this process (so their tasks can be cancelled)."""
    return FleetSim(
        FleetConfig(
            host=broker.host,
            port=broker.port,
            devices=n,
            topic_prefix=prefix,
            id_prefix="victim",
            heartbeat_s=heartbeat,
            keepalive_s=30,
        )
    ).start()


STEADY: dict[str, Any] = {}


def sim_child(report: Path, argv: list[str]) -> int:
    """``appliance fleet sim`` with its heartbeats timed (the simulator's share of the latency).

    A kiosk schedules its next beat one period after the last (sim.py ``_tick``), so a beat's
    lag = (its ``ts`` - the previous beat's ``ts``) - the period: how late the loaded
    simulator stamped it. ``unsent``: heartbeats whose bytes stayed in the transport's buffer
    after the write (the socket was full: stamped, then waiting behind the others)."""
    import atexit
    import json

    from appliance.fleet import sim, simcli

    period = float(argv[argv.index("--heartbeat") + 1])
    last: dict[str, float] = {}
    lags: list[tuple[float, float]] = []  # (when, lag)
    unsent: list[tuple[float, bool]] = []  # (when, the bytes stayed in the buffer)
    original = sim.VirtualKiosk._heartbeat

    def timed(self: Any) -> None:
        original(self)
        now = time.time()
        prev = last.get(self.id)
        last[self.id] = now
        if prev is not None:
            lags.append((now, now - prev - period))
        w = self.writer
        unsent.append((now, w is not None and w.transport.get_write_buffer_size() > 0))

    sim.VirtualKiosk._heartbeat = timed  # type: ignore[method-assign]

    def dump() -> None:
        report.write_text(json.dumps({"lags": lags[-300_000:], "unsent": unsent[-300_000:]}))

    atexit.register(dump)
    return simcli.main(argv)


class Stages:
    """One heartbeat's way through the service, recorded around ``ServiceIngest.write`` (in the
    benchmark, not the product): ``ts`` (stamped by the kiosk) -> received (paho's callback,
    after JSON and signature) -> queued -> the writer's batch begins -> committed."""

    def __init__(self, svc: FleetService) -> None:
        assert svc.ingest is not None
        ingest = svc.ingest
        self.net: list[float] = []  # ts -> received: simulator send, broker, paho's thread
        self.queue: list[float] = []  # received -> the batch's transaction begins
        self.write: list[float] = []  # the batch's transaction, begin -> commit
        self.total: list[float] = []
        original = ingest.write

        def write(items: list[tuple[float, str, Any]]) -> None:
            begin = time.time()
            original(items)
            done = time.time()
            for _arrived, what, obj in items:
                if what != "seen" or obj.kind != "telemetry":
                    continue
                ts = obj.body.get("ts")
                if not isinstance(ts, float):
                    continue
                self.net.append(obj.received_at - ts)
                self.queue.append(begin - obj.received_at)
                self.write.append(done - begin)
                self.total.append(done - ts)

        ingest.write = write  # type: ignore[method-assign]

    def mark(self) -> int:
        return len(self.total)

    def summary(self, start: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        total = self.total[start:]
        if not total:
            return out
        # the stages of the slowest 1 %: where the tail's time goes
        cut = pct(total, 99)
        tail = [i for i in range(start, len(self.total)) if self.total[i] >= cut]
        for name in ("net", "queue", "write"):
            part = getattr(self, name)[start:]
            out[name] = {
                "p50_ms": ms(pct(part, 50)),
                "p99_ms": ms(pct(part, 99)),
                "tail_mean_ms": ms(sum(getattr(self, name)[i] for i in tail) / len(tail)),
            }
        return out


def steady(svc: FleetService, seconds: float, stages: Stages | None = None) -> list[float]:
    assert svc.ingest is not None
    c = svc.ingest.counters
    start, b0 = len(c.heartbeat_latency), len(c.batch_seconds)
    s0 = stages.mark() if stages is not None else 0
    STEADY["window"] = (time.time(), time.time() + seconds)
    time.sleep(seconds)  # a benchmark's measuring window, not a wait for a condition
    if stages is not None:
        STEADY["stages"] = stages.summary(s0)
    batches, sizes = c.batch_seconds[b0:], c.batch_sizes[b0:]
    STEADY["writer"] = {
        "batches": len(batches),
        "mean_size": round(sum(sizes) / max(1, len(sizes)), 1),
        "commit_p50_ms": ms(pct(batches, 50)),
        "commit_p99_ms": ms(pct(batches, 99)),
        "commit_max_ms": ms(max(batches)),
        "busy_share": round(sum(batches) / seconds, 2),
    }
    return list(c.heartbeat_latency[start:])


def page_times(svc: FleetService, n: int = 30) -> list[float]:
    """Server time of the overview page with a filter (Server-Timing), through the ASGI app."""
    from fastapi.testclient import TestClient

    from appliance.fleetsvc import auth

    db: FleetDB = svc.db
    token, _csrf = auth.open_session(db, "bench")
    out = []
    with TestClient(svc.app, base_url="https://bench") as http:
        http.cookies.set("fleet_session", token)
        for i in range(n):
            r = http.get(
                "/",
                params={
                    "state": "online",
                    "q": f"sim-0{i % 10}",
                    "sort": "last_seen",
                    "desc": "true",
                },
            )
            r.raise_for_status()
            timing = r.headers["server-timing"]
            out.append(float(timing.split("dur=")[1]) / 1000)
    return out


@contextlib.contextmanager
def web_instance(url: str, broker: Mosquitto, home: Path) -> Iterator[str]:
    """``appliance fleet serve --no-ingest`` on the same database, in its own process."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "appliance.fleetsvc.servecli",
            "--db",
            url,
            "--no-ingest",
            "--home",
            str(home),
            "--host",
            broker.host,
            "--port",
            str(broker.port),
            "--http-port",
            str(port),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(base + "/login", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 30, "the web instance")
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def page_times_http(db: FleetDB, base: str, n: int = 30) -> list[float]:
    from appliance.fleetsvc import auth

    token, _csrf = auth.open_session(db, "bench")
    out = []
    # the cookie by hand: httpx keeps Secure cookies for https only, a browser also for 127.0.0.1
    with httpx.Client(base_url=base, headers={"cookie": f"fleet_session={token}"}) as http:
        for i in range(n):
            r = http.get(
                "/",
                params={
                    "state": "online",
                    "q": f"sim-0{i % 10}",
                    "sort": "last_seen",
                    "desc": "true",
                },
            )
            r.raise_for_status()
            out.append(float(r.headers["server-timing"].split("dur=")[1]) / 1000)
    return out


def kill(fleet: FleetSim, names: list[str]) -> None:
    def cancel() -> None:
        for task in fleet._tasks:
            if task.get_name() in names:
                task.cancel()

    fleet.call(cancel)


def run_engine(
    engine: str, fresh: Callable[[], str], broker: Mosquitto, args: argparse.Namespace
) -> dict[str, Any]:
    out: dict[str, Any] = {"engine": engine}
    # Baseline: 50 kiosks beating every second, same engine, same run.
    prefix = f"b{uuid.uuid4().hex[:6]}"
    with (
        service(fresh(), broker, prefix, args.lost_after) as (svc, db, _base, _tok),
        sim_process(broker, prefix, 50, 1.0),
    ):
        wait_for(lambda: db.counts()["online"] == 50, 60, "baseline online")
        base = steady(svc, min(args.steady, 15))
    out["baseline_p99_ms"] = ms(pct(base, 99))

    prefix = f"f{uuid.uuid4().hex[:6]}"
    lag_report = args.home.parent / f"sim-{prefix}.json"
    with (
        service(fresh(), broker, prefix, args.lost_after) as (svc, db, _base, _tok),
        sim_process(broker, prefix, args.devices, args.heartbeat, lag_report),
    ):
        stages = Stages(svc)
        t0 = time.time()
        doomed = victims(broker, prefix, args.kill, args.heartbeat)
        total = args.devices + args.kill
        wait_for(lambda: db.counts()["online"] == total, 300, "fleet online")
        out["all_online_s"] = round(time.time() - t0, 1)
        lat = steady(svc, args.steady, stages)
        out["ingest"] = {
            "n": len(lat),
            "p50_ms": ms(pct(lat, 50)),
            "p99_ms": ms(pct(lat, 99)),
            "max_ms": ms(max(lat)),
        }
        out["ratio"] = round(pct(lat, 99) / max(pct(base, 99), 1e-6), 2)
        out["writer"] = STEADY["writer"]
        out["stages"] = STEADY["stages"]
        if not args.ingest_only:
            pages = page_times(svc)
            out["overview_filtered"] = {
                "n": len(pages),
                "p50_ms": ms(pct(pages, 50)),
                "p99_ms": ms(pct(pages, 99)),
            }
            with web_instance(svc.db.url, broker, args.home) as web:
                apart = page_times_http(svc.db, web)
            out["overview_filtered_web_instance"] = {
                "n": len(apart),
                "p50_ms": ms(pct(apart, 50)),
                "p99_ms": ms(pct(apart, 99)),
            }
            names = [k.id for k in doomed.kiosks]
            killed = time.time()
            kill(doomed, names)

            def raised() -> dict[str, float] | None:
                got = {
                    a["device_id"]: a["raised_at"]
                    for a in db.list_alarms()
                    if a["kind"] == "lost" and a["device_id"] in names
                }
                return got if len(got) == len(names) else None

            got = wait_for(raised, args.lost_after + 60, "lost alarms")
            delays = [t - killed for t in got.values()]
            # "lost for more than N": counted from the kiosk's last contact (its last heartbeat,
            # up to one heartbeat period before the kill), not from the kill
            contact = [got[d] - float((db.device(d) or {}).get("last_seen") or 0) for d in names]
            out["lost_alarm"] = {
                "configured_s": args.lost_after,
                "kiosks": len(names),
                "after_kill_s": [round(min(delays), 2), round(max(delays), 2)],
                "after_last_contact_s": [round(min(contact), 2), round(max(contact), 2)],
            }
        doomed.stop()
    if lag_report.exists():  # written by the simulator's process at its exit
        import json

        sim = json.loads(lag_report.read_text())
        a, b = STEADY["window"]  # the steady window only, as the ingest's figures
        lags = [lag for when, lag in sim["lags"] if a <= when <= b]
        unsent = [u for when, u in sim["unsent"] if a <= when <= b]
        out["simulator"] = {
            "beat_lag_p50_ms": ms(pct(lags, 50)) if lags else None,
            "beat_lag_p99_ms": ms(pct(lags, 99)) if lags else None,
            "unsent_after_write": [sum(unsent), len(unsent)],
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--heartbeat", type=float, default=10.0)
    ap.add_argument("--steady", type=float, default=30.0)
    ap.add_argument("--lost-after", type=float, default=10.0)
    ap.add_argument("--kill", type=int, default=5)
    ap.add_argument("--engines", default="sqlite,postgresql")
    ap.add_argument(
        "--ingest-only",
        action="store_true",
        help="the ingest only: no overview pages, web instance or lost alarm (investigation)",
    )
    args = ap.parse_args()
    engines = args.engines.split(",")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fleetsvc-bench-") as tmp, contextlib.ExitStack() as st:
        broker = Mosquitto(Path(tmp) / "broker").start()
        args.home = Path(tmp) / "home"
        st.callback(broker.stop)
        for engine in engines:
            if engine == "sqlite":

                def fresh() -> str:
                    return f"sqlite:///{Path(tmp) / f'fleet-{uuid.uuid4().hex[:6]}.db'}"

            else:
                fresh = st.enter_context(private_cluster(durable=True)).create_db
            results.append(run_engine(engine, fresh, broker, args))
            print(results[-1], flush=True)
    emit(
        f"fleet_service_{args.devices}",
        {"devices": args.devices, "heartbeat_s": args.heartbeat, "runs": results},
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--sim-child":
        sys.exit(sim_child(Path(sys.argv[2]), sys.argv[4:]))
    sys.exit(main())
