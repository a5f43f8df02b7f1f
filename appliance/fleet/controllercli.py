"""``appliance fleet controller``: a long-running controller instance that records the fleet's
events, sharing the load with its siblings.

Instances started with the same ``--group`` join the MQTT 5 shared subscriptions
``$share/GROUP/{prefix}/+/events/#`` and ``$share/GROUP/{prefix}/+/status``: the broker hands
each message to exactly one of them, so adding instances adds capacity. Each instance keeps a
persistent session under its ``--instance`` name, so messages published while it restarts
wait on the broker (mosquitto keeps routing that instance's share to it while it is away:
delayed, not lost; ``--session-expiry 0`` for immediate fail-over instead). Every message is
written as one JSON line (``--out`` file, appended, or standard output) with its
device-signature verdict; at-least-once duplicates (same event id)
seen by this instance are dropped. On a broker that enforces ACLs, connect with the
``controller`` certificate (all instances may share it).

Runs until SIGTERM or Ctrl-C; ``--timeout`` stops it earlier (tests).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TextIO

from ..errors import ApplianceError
from .conn import add_broker_args, add_home_arg, broker_options
from .tools import EXIT_FAILED, EXIT_OK, registry
from .watch import EventStream, Seen


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_home_arg(p)
    p.add_argument(
        "--group",
        default="controllers",
        help="shared-subscription group the instances split the load in (default %(default)s)",
    )
    p.add_argument(
        "--instance",
        default=f"{socket.gethostname()}-{os.getpid()}",
        help="this instance's name: its MQTT client id and persistent session "
        "(default: host-pid; give a stable name under systemd)",
    )
    p.add_argument(
        "--out", type=Path, metavar="FILE", help="append JSON lines here (default stdout)"
    )
    p.add_argument(
        "--session-expiry",
        type=int,
        default=3600,
        metavar="S",
        help="seconds the broker keeps this instance's session while it is away (default "
        "%(default)s): its share of the messages waits for it (no loss, but delayed); 0 = no "
        "persistent session: the other instances take everything at once, and messages "
        "published while no instance runs are lost",
    )
    p.add_argument("--no-status", action="store_true", help="record events only")
    p.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds")
    add_broker_args(p)


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    lock = threading.Lock()
    out: TextIO = args.out.open("a", encoding="utf-8") if args.out else sys.stdout

    def record(seen: Seen) -> None:
        rec = {"instance": args.instance, **seen.to_json()}
        with lock:
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            out.flush()

    def on_signal(_n: int, _f: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
    try:
        stream = EventStream(
            broker_options(args),
            registry(args).device_keys(),
            record,
            status=not args.no_status,
            share_group=args.group,
            client_id=f"ctl-{args.instance}",
            session_expiry_s=args.session_expiry,
        ).start()
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"controller {args.instance} in group {args.group}: {', '.join(stream.filters())}",
        file=sys.stderr,
        flush=True,
    )
    try:
        stop.wait(args.timeout)
    except KeyboardInterrupt:
        pass
    finally:
        stream.stop()
        if args.out:
            out.close()
    print(
        f"controller {args.instance}: {stream.count} recorded, {stream.duplicates} duplicates",
        file=sys.stderr,
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance fleet controller")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
