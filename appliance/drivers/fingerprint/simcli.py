"""``appliance sim fingerprint``: run the ZhianTec sensor emulator on a pty or TCP port.

Prints the path (or ``socket://`` URL) a host opens, then serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from ...errors import ApplianceError
from .emulator import FingerprintEmulator
from .synth import Variant


def _address(text: str) -> int:
    value = int(text, 0)
    if not 0 <= value <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"{text} is not a 32-bit value")
    return value


def _tcp(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host or "127.0.0.1", int(port)


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Options of ``appliance sim fingerprint``."""
    p.description = (
        "Emulate a ZhianTec fingerprint sensor (R307/R503/AS608) byte for byte on a pty "
        "(default) or a TCP port. The production driver and the public host libraries open "
        "the printed path like a USB-UART adapter."
    )
    p.add_argument(
        "--profile",
        default="r307",
        help="sensor profile name in firmware_profiles/sensors/, or a .toml path "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seed of the synthetic fingers; same seed, same ridges (default: %(default)s)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--link",
        type=Path,
        default=None,
        help="also make this symlink to the pty; it survives unplug/replug "
        "(default: print the bare /dev/pts/N path)",
    )
    where.add_argument(
        "--tcp",
        type=_tcp,
        default=None,
        metavar="HOST:PORT",
        help="listen on TCP instead of a pty; hosts use socket://HOST:PORT (default: pty)",
    )
    p.add_argument(
        "--baud",
        type=int,
        default=None,
        help="initial emulated line rate, 9600 x N (default: the profile's factory rate)",
    )
    p.add_argument(
        "--flash",
        type=Path,
        default=None,
        metavar="FILE",
        help="keep what the module stores in flash (rate, packet size, password, templates) "
        "in this file across restarts, as a real module does; its rate wins over --baud "
        "(default: a factory-fresh module every start)",
    )
    p.add_argument(
        "--no-pace",
        action="store_true",
        help="send as fast as the pty allows instead of at the line rate (default: paced)",
    )
    p.add_argument(
        "--address",
        type=_address,
        default=0xFFFFFFFF,
        help="module address, e.g. 0xFFFFFFFF (default: 0xFFFFFFFF)",
    )
    p.add_argument(
        "--password",
        type=_address,
        default=0,
        help="module password; non-zero makes VfyPwd mandatory (default: 0)",
    )
    p.add_argument(
        "--auto-finger",
        choices=[v.value for v in Variant],
        default="good",
        help="present a finger of this kind whenever none is queued; fingers 1..10 in turn "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--no-auto-finger",
        action="store_true",
        help="never present a finger by itself (GenImg always answers 'no finger')",
    )
    p.add_argument(
        "--finger-delay-polls",
        type=int,
        default=10,
        help="empty GenImg polls before an automatic finger arrives (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    """Start the emulator and serve until interrupted."""
    try:
        emu = FingerprintEmulator(
            args.profile,
            seed=args.seed,
            pace=not args.no_pace,
            baud=args.baud,
            address=args.address,
            password=args.password,
            flash_file=args.flash,
        )
    except (ApplianceError, ValueError, KeyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.no_auto_finger:
        emu.set_auto_finger(args.auto_finger, args.finger_delay_polls)
    done = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        if args.tcp is not None:
            host, port = emu.listen_tcp(*args.tcp)
            print(f"socket://{host}:{port}", flush=True)
        else:
            print(emu.start_pty(args.link), flush=True)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"emulating {emu.profile.model} at {emu.baud} baud, "
        f"{'paced' if emu.pace else 'unpaced'}; Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    try:
        done.wait()
    finally:
        emu.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance sim fingerprint")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
