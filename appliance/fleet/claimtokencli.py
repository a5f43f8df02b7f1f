"""``appliance fleet claim-token``: create (or list) one-time claim tokens for kiosks.

A technician types the token into ``appliance provision --claim-token TOKEN``; the kiosk's
claim is then approved with ``appliance fleet approve DEVICE``. A token is single use and
expires (``--ttl``); its secret stays in the fleet home (``claims/tokens.json``, mode 0600).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime

from ..errors import ApplianceError
from .conn import add_home_arg, home_of
from .keys import parse_not_after
from .registry import FleetRegistry


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_home_arg(p)
    p.add_argument(
        "--device",
        metavar="ID",
        help="bind the token to this device id (recommended); without it the token can "
        "claim any device id, which approve then shows for confirmation",
    )
    p.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME",
        help="group the kiosk joins when approved (repeatable; written into its configuration)",
    )
    p.add_argument("--site", default="", help="site name for the kiosk (default: the one it sends)")
    p.add_argument(
        "--ttl",
        default="7d",
        help="how long the token stays valid: 30m, 12h, 7d, 2w (default %(default)s)",
    )
    p.add_argument("--list", action="store_true", help="list the tokens instead of creating one")


def _iso(ts: int | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(args: argparse.Namespace) -> int:
    reg = FleetRegistry(home_of(args))
    try:
        if args.list:
            now = time.time()
            print(f"{'TOKEN':<10} {'DEVICE':<20} {'EXPIRES':<21} STATE")
            for t in reg.tokens():
                state = (
                    f"used by {t.used_by} at {_iso(t.used_at)}"
                    if t.used_by
                    else ("expired" if now > t.expires_at else "unused")
                )
                print(
                    f"{t.token_id:<10} {t.device or '(any)':<20} {_iso(t.expires_at):<21} {state}"
                )
            return 0
        now = int(time.time())
        ttl = parse_not_after(args.ttl, now=now) - now
        rec, token = reg.create_token(
            device=args.device, ttl_s=ttl, groups=args.group, site=args.site, now=now
        )
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return 1
    print(token)
    print(
        f"one-time claim token {rec.token_id} for {rec.device or 'any device id'}, valid until "
        f"{_iso(rec.expires_at)}. On the kiosk: appliance provision --claim-token {token} ...",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance fleet claim-token")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
