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


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    home = home_of(args)
    try:
        store = DirectoryStore(args.db or home / "directory.sqlite")
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
