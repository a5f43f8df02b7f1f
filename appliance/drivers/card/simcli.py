"""``appliance sim card``: a blank personalisable eMRTD card for vpcd (see docs/card.md)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from ...errors import ApplianceError
from .emulator import EmrtdApplet, Faults, VpcdCardEmulator
from .profile import load_profile
from .teststack import tcp_listening

log = logging.getLogger(__name__)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Emulate a blank, personalisable eMRTD applet (the card profile's command set, BAC and "
        "secure messaging) on a vpcd virtual reader. The emulator connects to vpcd as a TCP "
        "client; pcscd then reports a card in that reader. Card content lives in memory and "
        "survives reconnections (--reconnect) but not a restart."
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="host where vpcd listens (default: %(default)s)"
    )
    p.add_argument(
        "--port",
        type=int,
        default=35963,
        help="vpcd TCP port of the reader slot; Debian's default config uses 35963 "
        "for 'Virtual PCD 00 00' (default: %(default)s)",
    )
    p.add_argument(
        "--profile",
        default="cccd-applet",
        help="card profile in firmware_profiles/cards/ (default: %(default)s)",
    )
    p.add_argument(
        "--profile-dir",
        type=Path,
        default=None,
        help="directory of card profiles (default: this installation's firmware_profiles/cards)",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=10.0,
        help="seconds to wait for vpcd to listen before giving up; checked in "
        "/proc/net/tcp, never by connecting (default: %(default)s)",
    )
    p.add_argument(
        "--reconnect",
        action="store_true",
        help="after the connection ends (vpcd restart or a pull fault), insert the "
        "same card again (default: exit)",
    )
    p.add_argument(
        "--pull-on-update",
        type=int,
        default=None,
        metavar="N",
        help="fault: drop the connection (card pulled) on the N-th UPDATE BINARY (default: never)",
    )
    p.add_argument(
        "--fail-on-update",
        type=int,
        default=None,
        metavar="N",
        help="fault: answer 6581 (memory failure) to the N-th UPDATE BINARY (default: never)",
    )
    p.add_argument(
        "--corrupt-on-update",
        type=int,
        default=None,
        metavar="N",
        help="fault: store the N-th UPDATE BINARY with its last byte flipped and answer 9000 "
        "(a silent write error) (default: never)",
    )
    p.add_argument(
        "--delay-ms",
        type=float,
        default=0.0,
        help="fault: answer every APDU this many milliseconds late (slow card) "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    for name, v in (
        ("--pull-on-update", args.pull_on_update),
        ("--fail-on-update", args.fail_on_update),
        ("--corrupt-on-update", args.corrupt_on_update),
    ):
        if v is not None and v < 1:
            print(f"error: {name} must be 1 or more", file=sys.stderr)
            return 2
    if args.delay_ms < 0 or not 0 < args.port < 65536:
        print("error: --delay-ms must be >= 0 and --port 1..65535", file=sys.stderr)
        return 2
    try:
        profile = load_profile(args.profile, args.profile_dir)
    except ApplianceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    applet = EmrtdApplet(profile)
    faults = Faults(
        pull_on_update=args.pull_on_update,
        fail_on_update=args.fail_on_update,
        corrupt_on_update=args.corrupt_on_update,
        delay_s=args.delay_ms / 1000.0,
    )
    stop = threading.Event()
    current: list[VpcdCardEmulator] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        for emu in current:
            emu.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    emu = VpcdCardEmulator(applet, args.host, args.port, faults)
    current.append(emu)
    while not stop.is_set():
        deadline = time.monotonic() + args.wait
        local = args.host in ("127.0.0.1", "localhost", "::1")
        while local and not tcp_listening(args.port):
            if time.monotonic() > deadline or stop.is_set():
                print(
                    f"error: nothing listens on port {args.port} (is pcscd with vpcd running?)",
                    file=sys.stderr,
                )
                return 1
            stop.wait(0.05)
        try:
            emu.connect(timeout=args.wait)
        except OSError as exc:
            print(
                f"error: cannot connect to vpcd at {args.host}:{args.port}: {exc}", file=sys.stderr
            )
            return 1
        log.info("card inserted into vpcd %s:%d (profile %s)", args.host, args.port, profile.name)
        emu.serve()
        log.info("card removed (%d APDUs so far)", emu.apdus_seen)
        if not args.reconnect:
            break
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance sim card")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
