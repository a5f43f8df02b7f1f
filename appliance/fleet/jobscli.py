"""``appliance fleet jobs create|list|show|run|cancel``: jobs for many kiosks, staged, watched,
stoppable (docs/updates.md, "Fleet jobs").

``create KIND`` makes a job for the devices named (``--device``), the members of groups
(``--group``, from the fleet home's approved devices) and the kiosks whose retained status
matches a query (``--where version=0.1.0 --where site=hanoi-*``), then drives its rollout and
prints a progress line whenever it changes, until every kiosk reached a final state, the job
aborts, or ``--timeout`` (the job keeps its state: ``jobs run ID`` drives it on later). KIND:

* ``command``: ``--cmd NAME [--args JSON]``, run by each kiosk as a signed command of the job's
  signer;
* ``config``: ``--config FILE`` (TOML/JSON fragment, as ``push-config``), signed for each kiosk
  with ``--config-version``;
* ``update``: ``--bundle FILE`` (a release bundle, checked here against the fleet root), which
  the kiosks download in chunks over MQTT (``jobs run`` serves them) or from the bundle's URL.

Rollout: ``--canary 0.05`` (the share of kiosks in a first wave, which must finish before the
next), ``--wave-size 100 --wave-interval 60`` and ``--abort-ratio 0.1 --abort-min 5`` (abort when
more than 10 % of the finished kiosks failed, rolled back or timed out, once 5 finished).
``--expires 7d``: kiosks offline longer never run it (``timed_out``).

With the fleet service's database configured (``--db URL`` or ``$APPLIANCE_FLEET_DB``, as
``fleet devices``) every subcommand reads and writes the jobs there instead of
``<home>/jobs.db``: the service's dashboard and API show them, its ingest records the kiosks'
reports, and its audit log names who created or canceled one (docs/fleet-service.md, "Jobs").

Exit status: 0 completed with every kiosk succeeded; 1 completed with failures, aborted or
canceled; 2 bad usage; 4 still running at ``--timeout``.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import ApplianceError, MissingExtraError
from ..protocol.codes import ErrorCode
from ..protocol.messages import MessageInvalid, StatusMessage, parse_message
from ..protocol.topics import Topics
from ..trust.certs import ROOT_PUB_FILE
from ..trust.keys import b64encode, load_public_key
from ..update.bundle import verify_bundle
from ..update.jobdoc import BAD
from .conn import FleetMqtt, Message, add_broker_args, add_home_arg, broker_options, home_of
from .jobs import (
    JobRunner,
    JobStorage,
    JobStore,
    Progress,
    Rollout,
    match_query,
    parse_query,
)
from .keys import parse_not_after
from .tools import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    add_signer_arg,
    collect_retained,
    device_of,
    load_signer,
    registry,
    verify_from,
)


def _add_drive_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to drive the job (default 600)"
    )
    p.add_argument(
        "--accept-unsigned-reports",
        action="store_true",
        help="development only: accept kiosk reports without a verifiable device signature "
        "(the fleet simulator does not sign)",
    )
    add_signer_arg(p, "admin")
    add_broker_args(p)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_home_arg(p)
    p.add_argument(
        "--db",
        metavar="URL",
        default=os.environ.get("APPLIANCE_FLEET_DB"),
        help="keep the jobs in the fleet service's database (sqlite:///PATH or "
        "postgresql://...) instead of <home>/jobs.db (default $APPLIANCE_FLEET_DB)",
    )
    sub = p.add_subparsers(dest="jobs_command", metavar="COMMAND", required=True)

    c = sub.add_parser("create", help="create a job and drive its rollout")
    c.add_argument("kind", choices=("command", "config", "update"))
    c.add_argument("--device", action="append", default=[], metavar="ID")
    c.add_argument("--group", action="append", default=[], metavar="NAME")
    c.add_argument("--where", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--cmd", help="command name (kind command)")
    c.add_argument("--args", default="{}", help="command arguments as a JSON object")
    c.add_argument("--config", type=Path, metavar="FILE", help="configuration fragment")
    c.add_argument("--config-version", type=int, help="configuration version (kind config)")
    c.add_argument("--bundle", type=Path, metavar="FILE", help="release bundle (kind update)")
    c.add_argument("--canary", type=float, default=0.0)
    c.add_argument("--wave-size", type=int, default=0)
    c.add_argument("--wave-interval", type=float, default=0.0, metavar="S")
    c.add_argument("--abort-ratio", type=float, default=1.0)
    c.add_argument("--abort-min", type=int, default=1)
    c.add_argument("--expires", default="7d", help="job expiry (7d, 12h, a date)")
    c.add_argument("--listen", type=float, default=1.0, help="seconds to read retained status")
    c.add_argument("--no-wait", action="store_true", help="publish the first wave and exit")
    _add_drive_args(c)

    sub.add_parser("list", help="every job with its counts")
    s = sub.add_parser("show", help="one job and each kiosk's state")
    s.add_argument("job")
    r = sub.add_parser("run", help="drive a running job on (after --no-wait or a timeout)")
    r.add_argument("job")
    _add_drive_args(r)
    x = sub.add_parser("cancel", help="stop a job: kiosks that did not start never will")
    x.add_argument("job")
    add_broker_args(x)
    add_signer_arg(x, "admin")


def _targets(args: argparse.Namespace, mqtt: FleetMqtt, prefix: str) -> list[str]:
    devices = set(args.device)
    reg = registry(args)
    for g in args.group:
        devices.update(reg.members(g))
    if args.where:
        query = parse_query(args.where)
        msgs = collect_retained(mqtt, [Topics.anyone(prefix).status], args.listen)
        for topic, msg in msgs.items():
            dev = device_of(topic, prefix)
            try:
                status = parse_message(StatusMessage, msg.payload, "status")
            except MessageInvalid as exc:
                print(f"warning: {topic}: {exc} (skipped)", file=sys.stderr)
                continue
            if dev and match_query(status.model_dump(exclude_unset=True), query):
                devices.add(dev)
    return sorted(devices)


def _spec(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    if args.kind == "command":
        if not args.cmd:
            raise ApplianceError("kind command needs --cmd", code=ErrorCode.USAGE)
        cargs = json.loads(args.args)
        if not isinstance(cargs, dict):
            raise ApplianceError("--args must be a JSON object", code=ErrorCode.USAGE)
        return {"cmd": args.cmd, "args": cargs}
    if args.kind == "config":
        if args.config is None or args.config_version is None:
            raise ApplianceError(
                "kind config needs --config and --config-version", code=ErrorCode.USAGE
            )
        fmt = "json" if args.config.suffix.lower() == ".json" else "toml"
        return {"content": b64encode(args.config.read_bytes()), "format": fmt,
                "version": args.config_version}  # fmt: skip
    if args.bundle is None:
        raise ApplianceError("kind update needs --bundle", code=ErrorCode.USAGE)
    m = verify_bundle(args.bundle, [load_public_key(home / ROOT_PUB_FILE)])
    data = args.bundle.read_bytes()
    spec: dict[str, Any] = {
        "version": m.version,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "bundle": str(args.bundle.resolve()),
    }
    if m.url:
        spec["url"] = m.url
    return spec


def _print_progress(p: Progress) -> None:
    print(p.line(), flush=True)


def open_store(args: argparse.Namespace, home: Path) -> JobStorage:
    """The fleet service's database when configured, else ``<home>/jobs.db``. The service's
    store is loaded by name: the service imports the fleet tools, never the other way round
    (import contracts)."""
    url = getattr(args, "db", None)
    if not url:
        return JobStore(home)
    try:
        mod = importlib.import_module("appliance.fleetsvc.jobstore")
    except ImportError as exc:
        raise MissingExtraError("fleet service database", "fleet-service", str(exc.name)) from None
    store: JobStorage = mod.ServiceJobStore.open(url, actor=f"cli:{getpass.getuser()}")
    return store


def _drive(args: argparse.Namespace, store: JobStorage, job_id: str) -> int:
    opts = broker_options(args)
    signer = load_signer(args, "admin")
    keys = registry(args).device_keys()

    def verify(device: str, msg: Message) -> bool:
        return bool(args.accept_unsigned_reports) or verify_from(keys, device, msg).ok

    with FleetMqtt(opts) as mqtt:
        runner = JobRunner(store, mqtt, signer, prefix=opts.prefix, verify=verify)
        p = runner.run(job_id, timeout=args.timeout, on_progress=_print_progress)
        if runner.rejected:
            print(f"{runner.rejected} report(s) with a bad device signature ignored")
    return _exit(p)


def _exit(p: Progress) -> int:
    if p.state == "running":
        return EXIT_TIMEOUT
    if p.state == "completed" and not any(p.counts.get(s) for s in BAD):
        return EXIT_OK
    return EXIT_FAILED


def run(args: argparse.Namespace) -> int:
    home = home_of(args)
    try:
        store = open_store(args, home)
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.jobs_command == "list":
            for j in store.jobs():
                counts = ", ".join(f"{n} {s}" for s, n in sorted(j.counts.items()))
                print(f"{j.id}  {j.kind:<8} {j.state:<10} {counts}")
            return EXIT_OK
        if args.jobs_command == "show":
            job = store.get(args.job)
            if job is None:
                print(f"error (job_unknown): no job {args.job}", file=sys.stderr)
                return EXIT_USAGE
            print(json.dumps(job.summary(), indent=2, default=str))
            for d in store.devices(job.id):
                print(f"{d['device']:<24} {d['state']:<12} wave {d['wave'] or '-'}  "
                      f"{d['detail'] or ''}")  # fmt: skip
            return EXIT_OK
        if args.jobs_command == "cancel":
            job = store.get(args.job)
            if job is None:
                print(f"error (job_unknown): no job {args.job}", file=sys.stderr)
                return EXIT_USAGE
            if job.state != "running":
                print(f"job {job.id} is already {job.state}: nothing to cancel")
                return EXIT_FAILED
            opts = broker_options(args)
            with FleetMqtt(opts) as mqtt:
                runner = JobRunner(store, mqtt, load_signer(args, "admin"), prefix=opts.prefix)
                runner.abort(args.job, "canceled", "canceled by the administrator")
            store.audit("job.cancel", job.id)
            job = store.get(args.job)
            print(f"job {args.job} canceled: {job.counts if job else {}}")
            return EXIT_OK
        if args.jobs_command == "run":
            return _drive(args, store, args.job)
        # create
        opts = broker_options(args)
        spec = _spec(args, home)
        rollout = Rollout(
            canary=args.canary,
            wave_size=args.wave_size,
            wave_interval_s=args.wave_interval,
            abort_ratio=args.abort_ratio,
            abort_min=args.abort_min,
        ).validate()
        expires = parse_not_after(args.expires)
        with FleetMqtt(opts) as mqtt:
            devices = _targets(args, mqtt, opts.prefix)
            target = {"devices": args.device, "groups": args.group, "where": args.where}
            job = store.create(args.kind, spec, target, devices, rollout, expires)
            print(f"job {job.id}: {args.kind} for {len(devices)} kiosk(s)")
            if args.no_wait:
                JobRunner(store, mqtt, load_signer(args, "admin"), prefix=opts.prefix).step(job.id)
                return EXIT_OK
        return _drive(args, store, job.id)
    except (ApplianceError, ValueError) as exc:
        code = getattr(exc, "code", ErrorCode.USAGE)
        print(f"error ({code}): {getattr(exc, 'message', exc)}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance fleet jobs")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
