"""``appliance fleet directory``: the central citizen directory, running until stopped.

Keeps citizen records in its own SQLite store (``--db``, default <home>/directory.sqlite),
loaded from a citizens file (``--citizens FILE``, the format of ``appliance fleet issue``;
every entry validated, every problem listed; nothing is loaded if one entry is bad), and
answers kiosks' lookups by 12-digit CCCD number or 9-digit CMND number on
``{prefix}/+/lookup/request`` with a document signed by the ``directory`` key
(<home>/directory.key + directory.cert, role directory), on the asking kiosk's
``{prefix}/{device}/lookup/response``. Connect with the ``directory`` broker certificate:
the shipped ACL gives these topics to that identity only.

Whether the centre already holds an enrollment of the citizen comes from the receiver's
store (``--store``, default <home>/central), indexed at start and then every ``--sync-every``
seconds (lookups read the index only); the corrections carried by verified packages there are
recorded in the directory's ``corrections`` table for a decision at the same time. Nothing a
kiosk sends changes a record.

``--load-only`` loads the citizens file and exits. Stop it with Ctrl-C or SIGTERM.

Batches for a day offline (docs/citizen-data.md "Batches"), kept in the same store; a kiosk
downloads one with its ``citizen.batch.fetch`` command while this directory serves:

  appliance fleet directory batch create ID (--province CODE... | --residence TEXT |
                                             --numbers FILE) [--valid-hours H]
  appliance fleet directory batch list
  appliance fleet directory batch show ID [--records]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import ApplianceError, ConfigError
from ..fleet.conn import add_broker_args, add_home_arg, broker_options, home_of
from .citizens import load_citizens
from .directory import Directory, DirectoryCore, DirectoryStore, load_directory_key
from .receivecli import add_store_arg, store_of
from .service import stop_on_signals

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_home_arg(p)
    add_store_arg(p)
    p.add_argument(
        "--db",
        type=Path,
        default=None,
        metavar="FILE",
        help="the directory's SQLite store, 0600 (default: <home>/directory.sqlite)",
    )
    p.add_argument(
        "--citizens",
        type=Path,
        default=None,
        metavar="FILE",
        help="load (add or replace) the records of this citizens file first (default: serve "
        "what the store holds)",
    )
    p.add_argument(
        "--load-only", action="store_true", help="load --citizens and exit (default: serve)"
    )
    p.add_argument(
        "--sync-every",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds between scans of --store: the enrollments lookups report, and the "
        "corrections of verified packages (default: %(default)s)",
    )
    p.add_argument(
        "--client-id",
        default="central-directory",
        help="MQTT client id (default: %(default)s)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level on stderr (default: %(default)s)",
    )
    add_broker_args(p)
    sub = p.add_subparsers(dest="directory_command", metavar="{batch}")
    b = sub.add_parser("batch", help="citizen batches for a day offline (create, list, show)")
    bs = b.add_subparsers(dest="batch_command", required=True, metavar="{create,list,show}")
    create = bs.add_parser("create", help="select the citizens of an area into a batch")
    create.add_argument("batch_id", help="1-64 letters, digits, _ . -")
    create.add_argument(
        "--province",
        action="append",
        default=[],
        metavar="CODE",
        help="3-digit province code (the number's first digits); repeatable",
    )
    create.add_argument(
        "--residence", metavar="TEXT", help="citizens whose permanent residence contains TEXT"
    )
    create.add_argument(
        "--numbers", type=Path, metavar="FILE", help="a file of CCCD/CMND numbers, one a line"
    )
    create.add_argument(
        "--valid-hours",
        type=float,
        default=48.0,
        metavar="H",
        help="the batch expires this long after its creation (default: %(default)s)",
    )
    bs.add_parser("list", help="every batch: id, citizens, created, expires")
    show = bs.add_parser("show", help="one batch: its area and its citizens by province")
    show.add_argument("batch_id")
    show.add_argument("--records", action="store_true", help="list number and name of each")
    for q in bs.choices.values():
        q.add_argument("--home", type=Path, default=argparse.SUPPRESS, help="as above")
        q.add_argument("--db", type=Path, default=argparse.SUPPRESS, metavar="FILE")


def _when(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def run_batch(args: argparse.Namespace, store: DirectoryStore) -> int:
    """``batch create|list|show``: print what was done."""
    if args.batch_command == "list":
        rows = store.batches()
        for b in rows:
            print(
                f"{b['batch_id']}: {b['total']} citizen(s), created {_when(b['created_at'])}, "
                f"expires {_when(b['expires_at'])}"
            )
        print(f"{len(rows)} batch(es) in {store.path}")
        return EXIT_OK
    if args.batch_command == "show":
        info = store.batch_info(args.batch_id)
        if info is None:
            print(f"error (batch_not_found): no batch {args.batch_id!r}", file=sys.stderr)
            return EXIT_FAILED
        records = store.batch_records(args.batch_id)
        by_province: dict[str, int] = {}
        for r in records:
            by_province[r["personal_id"][:3]] = by_province.get(r["personal_id"][:3], 0) + 1
        print(f"batch {info['batch_id']}: {info['total']} citizen(s), area {info['area']}")
        print(f"created {_when(info['created_at'])}, expires {_when(info['expires_at'])}")
        print("by province: " + ", ".join(f"{k} {v}" for k, v in sorted(by_province.items())))
        if args.records:
            for r in records:
                print(f"  {r['personal_id']}  {r['full_name']}")
        return EXIT_OK
    numbers: list[str] = []
    if args.numbers is not None:
        try:
            text = args.numbers.read_text(encoding="utf-8")
        except OSError as exc:
            print(f"error (config_invalid): --numbers: {exc}", file=sys.stderr)
            return EXIT_USAGE
        numbers = [ln.strip() for ln in text.splitlines() if ln.strip()]
        bad = [n for n in numbers if not (n.isdigit() and len(n) in (9, 12))]
        if bad:
            print(
                f"error (invalid_args): --numbers: not 12 or 9 digits: {bad[:5]}", file=sys.stderr
            )
            return EXIT_USAGE
    if not (args.province or args.residence or numbers):
        print("error (invalid_args): give --province, --residence or --numbers", file=sys.stderr)
        return EXIT_USAGE
    last = [0.0]

    def progress(done: int, total: int) -> None:
        import time

        if done == total or time.monotonic() - last[0] >= 0.5:
            last[0] = time.monotonic()
            print(f"  {done}/{total} citizen(s) written", file=sys.stderr, flush=True)

    info = store.create_batch(
        args.batch_id,
        provinces=args.province,
        residence=args.residence,
        numbers=numbers,
        valid_s=args.valid_hours * 3600,
        progress=progress,
    )
    print(
        f"created batch {info['batch_id']}: {info['total']} citizen(s), expires "
        f"{_when(info['expires_at'])}; kiosks fetch it with citizen.batch.fetch "
        f"while 'appliance fleet directory' serves"
    )
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    home = home_of(args)
    try:
        store = DirectoryStore(args.db or home / "directory.sqlite")
        if getattr(args, "directory_command", None) == "batch":
            return run_batch(args, store)
        if args.citizens is not None:
            n = store.load(load_citizens(args.citizens))
            print(f"loaded {n} citizen record(s) from {args.citizens}", flush=True)
        if args.load_only:
            print(f"{store.count()} citizen record(s) in {store.path}", flush=True)
            return EXIT_OK
        opts = broker_options(args)
        key = load_directory_key(home)
        packages = store_of(args)
    except ConfigError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    core = DirectoryCore(store, key, lambda *_a: False, prefix=opts.prefix)
    directory = Directory(
        core,
        host=opts.host,
        port=opts.port,
        client_id=args.client_id,
        tls=opts.paho_tls(),
        insecure=opts.insecure,
    )
    stop = stop_on_signals()
    try:
        directory.start()
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"citizen directory: {store.count()} record(s), answering on {opts.describe()} "
        f"({core.filter()}), signed by {key.key_id}",
        flush=True,
    )
    try:
        while True:
            n = store.sync_packages(packages)
            if n:
                print(f"recorded {n} correction request(s)", flush=True)
            if stop.wait(max(0.1, args.sync_every)):
                break
    finally:
        directory.stop()
    s = core.stats
    print(
        f"stopped: {s['found']} found, {s['not_found']} not found, {s['invalid_request']} "
        f"invalid requests, {s['record_invalid']} invalid records, {s['dropped']} dropped",
        flush=True,
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance fleet directory")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
