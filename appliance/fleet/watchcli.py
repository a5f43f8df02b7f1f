"""``appliance fleet watch``: stream the fleet's events live, filtered.

Every event a kiosk publishes on ``{prefix}/DEVICE/events/TYPE`` is printed as
``time device type #seq data``, marked when its device signature is invalid or the device is
not approved in the fleet home. The last contact seen per kiosk is written to the fleet home
(``seen.json``, every 10 s and at exit) so that ``fleet devices`` can tell when a lost kiosk
was last seen. Duplicates of at-least-once delivery (same event id) are
dropped. ``--device`` and ``--type`` take shell patterns (``kiosk-hn-*``, ``card.*``) and may
be repeated; ``--status`` and ``--telemetry`` add those streams.

Runs until Ctrl-C, or until ``--count`` messages were shown or ``--timeout`` passed.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading

from ..errors import ApplianceError
from ..protocol.codes import ErrorCode
from .conn import add_broker_args, add_home_arg, broker_options
from .registry import FleetRegistry
from .tools import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT, registry
from .watch import EventStream, Seen


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_home_arg(p)
    p.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="PATTERN",
        help="device id or shell pattern, e.g. 'kiosk-hn-*' (repeatable; default: all)",
    )
    p.add_argument(
        "--type",
        action="append",
        default=[],
        metavar="PATTERN",
        help="event type or shell pattern, e.g. 'card.*' (repeatable; default: all)",
    )
    p.add_argument("--status", action="store_true", help="also show status (online/offline)")
    p.add_argument("--telemetry", action="store_true", help="also show heartbeats")
    p.add_argument("--json", action="store_true", help="JSON lines (default: text)")
    p.add_argument("--count", type=int, metavar="N", help="stop after N messages (default: no)")
    p.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds (default: no)")
    p.add_argument(
        "--share",
        metavar="GROUP",
        help="join the MQTT 5 shared subscription GROUP: watchers in one group split the "
        "stream (each message goes to one of them)",
    )
    add_broker_args(p)


def run(args: argparse.Namespace) -> int:
    done = threading.Event()
    shown = [0]
    lock = threading.Lock()

    def show(seen: Seen) -> None:
        with lock:
            if done.is_set():
                return
            print(json.dumps(seen.to_json()) if args.json else seen.line(), flush=True)
            shown[0] += 1
            if args.count is not None and shown[0] >= args.count:
                done.set()

    try:
        stream = EventStream(
            broker_options(args),
            registry(args).device_keys(),
            show,
            devices=args.device,
            types=args.type,
            status=args.status,
            telemetry=args.telemetry,
            share_group=args.share,
        ).start()
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    print(f"watching {', '.join(stream.filters())}", file=sys.stderr, flush=True)
    recorder = SeenRecorder(registry(args), stream).start()
    try:
        finished = done.wait(args.timeout)
    except KeyboardInterrupt:
        finished = True
    finally:
        stream.stop()
        recorder.stop()
    if stream.malformed:
        print(
            f"{stream.malformed} malformed message(s) not shown "
            f"({ErrorCode.MALFORMED_MESSAGE}, logged above)",
            file=sys.stderr,
        )
    if args.count is not None and not finished:
        return EXIT_TIMEOUT
    return EXIT_OK


class SeenRecorder:
    """Writes the stream's last contact per kiosk into the fleet home (``seen.json``) every
    ``interval_s`` and at exit, for ``fleet devices``. A fleet home this user cannot write is
    reported once; watching goes on."""

    def __init__(self, reg: FleetRegistry, stream: EventStream, interval_s: float = 10.0) -> None:
        self.reg, self.stream, self.interval_s = reg, stream, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="seen-recorder", daemon=True)
        self._failed = False

    def start(self) -> SeenRecorder:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()

    def flush(self) -> None:
        if not (self.reg.home / "devices").is_dir():
            return  # no fleet home with approved kiosks here: nothing to create
        try:
            self.reg.record_seen(dict(self.stream.last_seen))
        except (OSError, ApplianceError) as exc:
            if not self._failed:
                print(f"warning: cannot record last contact in the fleet home: {exc}",
                      file=sys.stderr)  # fmt: skip
            self._failed = True

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance fleet watch")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
