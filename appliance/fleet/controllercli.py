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

With ``--ack`` the instance also acknowledges every event it recorded to the kiosks that keep
their events until then (``mqtt.delivery = "end_to_end"`` in the kiosk's configuration; what a
crashed broker lost is then sent again): with ``--out`` the file is fsync'd first, then one
acknowledgement per kiosk every 0.2 s is published on ``{prefix}/DEVICE/outbox/ack``, signed
with an ``ingest`` certificate (``--signer``, default ``<home>/ingest``), or unsigned with
``--ack-unsigned`` for kiosks in development mode. The broker's ACL must let this identity write
those topics (provisioning/acl.template does for ``controller``).

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
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from ..errors import ApplianceError
from ..trust.certs import OperatorKey
from .acker import OutboxAcker
from .conn import FleetMqtt, add_broker_args, add_home_arg, broker_options
from .tools import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_signer_arg, load_signer, registry
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
        "--out",
        type=Path,
        metavar="FILE",
        help="append JSON lines here, making its directory if missing (default stdout)",
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
    ack = p.add_argument_group("end-to-end delivery acknowledgements")
    ack.add_argument(
        "--ack",
        action="store_true",
        help="acknowledge every recorded event to kiosks with mqtt.delivery = end_to_end, "
        "signed with an ingest certificate (--signer)",
    )
    ack.add_argument(
        "--ack-unsigned",
        action="store_true",
        help="with --ack: send unsigned acknowledgements (kiosks in development mode only; "
        "a provisioned kiosk refuses them)",
    )
    add_signer_arg(p, "ingest")
    add_broker_args(p)


def _ack_publisher(stream: list[EventStream]) -> Callable[[str, bytes], bool]:
    def publish(topic: str, payload: bytes) -> bool:
        mqtt: FleetMqtt = stream[0].mqtt
        try:
            mqtt.publish(topic, payload, timeout=5.0)
        except ApplianceError as exc:
            print(f"acknowledgement not sent ({exc.code}): {exc.message}", file=sys.stderr)
            return False
        return True

    return publish


def run(args: argparse.Namespace) -> int:  # noqa: C901  wires the flags, streams and signals of one long-running tool
    stop = threading.Event()
    lock = threading.Lock()
    key: OperatorKey | None = None
    if args.ack and not args.ack_unsigned:
        try:
            key = load_signer(args, "ingest")
        except ApplianceError as exc:
            print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
            return EXIT_FAILED
    out: TextIO = sys.stdout
    if args.out:
        # A recorder's file usually lives in a directory of its own (/var/log/fleet/...):
        # made when missing, as a log file's directory is.
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            out = args.out.open("a", encoding="utf-8")
        except OSError as exc:
            print(f"error: --out {args.out}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
    streams: list[EventStream] = []

    def make_durable() -> None:
        if args.out:
            with lock:
                os.fsync(out.fileno())

    acker = (
        OutboxAcker(
            _ack_publisher(streams),
            key=key,
            prefix=broker_options(args).prefix,
            before_flush=make_durable,
        )
        if args.ack
        else None
    )

    def acknowledge(device: str, body: dict[str, Any]) -> None:
        eid, seq = body.get("id"), body.get("seq")
        if acker is not None and isinstance(eid, str) and type(seq) is int:
            acker.stored(device, seq, eid)

    def record(seen: Seen) -> None:
        rec = {"instance": args.instance, **seen.to_json()}
        with lock:
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            out.flush()
        if seen.kind == "event":
            acknowledge(seen.device, seen.body)

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
            on_duplicate=acknowledge,
        )
        streams.append(stream)
        stream.start()
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"controller {args.instance} in group {args.group}: {', '.join(stream.filters())}",
        file=sys.stderr,
        flush=True,
    )
    if acker is not None:
        acker.start()
    try:
        stop.wait(args.timeout)
    except KeyboardInterrupt:
        pass
    finally:
        if acker is not None:
            acker.stop()
        stream.stop()
        if args.out:
            out.close()
    print(
        f"controller {args.instance}: {stream.count} recorded, {stream.duplicates} duplicates, "
        f"{stream.malformed} malformed"
        + (f", {acker.acked} acknowledged in {acker.sent} messages" if acker else ""),
        file=sys.stderr,
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance fleet controller")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
