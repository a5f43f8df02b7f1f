"""``appliance fleet push-config TARGET FILE``: sign a configuration with an admin key, publish
it retained on each kiosk's ``{prefix}/DEVICE/config/desired``, and wait for each kiosk's
retained report on ``{prefix}/DEVICE/config/reported``.

TARGET is a device id or ``group:NAME``; a group is sent to every member known from the fleet
home (approved devices and their groups) or from the members' retained status. FILE is TOML or
JSON (by its extension, or ``--format``) holding only the keys to change, e.g.::

    [telemetry]
    heartbeat_s = 10

Before anything is signed, FILE is checked here with the checker of ``appliance config
check`` (the document over the built-in defaults and the profile it names; not this machine's
environment): every problem is printed as ``path.to.field: reason`` and nothing is published
(exit 2). ``--no-check`` skips it, to exercise a kiosk's own validation.

The kiosk verifies the document (admin role, its target), validates it over its local
configuration, applies it by restarting itself, checks its health and commits, or rolls back
by itself (docs/trust.md). The version defaults to one above the highest version the kiosks
report or hold; reports are verified with the kiosks' approved keys.

Progress: one line per report as it arrives (``applying``: the kiosk restarts with the new
configuration; ``trial``: it runs it and checks the broker and its devices; then ``applied`` once
the trial is healthy, ``rolled_back`` when it is not, or ``rejected``), and a final line with the
outcome per kiosk.

Exit status: 0 applied everywhere; 1 rejected or rolled back somewhere (the reasons are
shown); 2 bad usage or an invalid document; 3 a report's signature did not verify; 4 no final
report in time.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import time
from pathlib import Path

from ..config import check_file
from ..configpush import peek_version
from ..errors import ApplianceError
from ..protocol.messages import MessageInvalid, StatusMessage, parse_message
from ..protocol.topics import TopicKind, Topics, parse
from ..trust.certs import OperatorKey
from ..trust.configdoc import sign_config
from ..trust.envelope import GROUP_PREFIX, validate_target
from .conn import FleetMqtt, add_broker_args, add_home_arg, broker_options
from .registry import FleetRegistry
from .tools import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNVERIFIED,
    EXIT_USAGE,
    add_signer_arg,
    collect_retained,
    device_of,
    load_signer,
    registry,
    verify_from,
)

FINAL = ("applied", "rejected", "rolled_back")


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("target", metavar="TARGET", help="device id or group:NAME")
    p.add_argument("file", type=Path, metavar="FILE", help="configuration fragment (TOML/JSON)")
    add_home_arg(p)
    add_signer_arg(p, "admin")
    p.add_argument("--version", type=int, help="version number (default: next after the known)")
    p.add_argument("--format", choices=("toml", "json"), help="default: from FILE's extension")
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for every kiosk's final report (default %(default)s)",
    )
    p.add_argument(
        "--no-wait", action="store_true", help="publish and exit without waiting for reports"
    )
    p.add_argument(
        "--no-check",
        action="store_true",
        help="sign and publish without checking FILE here first (to test a kiosk's own "
        "validation); by default an invalid FILE is refused before signing (exit 2)",
    )
    p.add_argument(
        "--listen",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds to collect the retained state first (default %(default)s)",
    )
    add_broker_args(p)


def run(args: argparse.Namespace) -> int:
    try:
        validate_target(args.target)
        content = args.file.read_bytes()
        fmt = args.format or ("json" if args.file.suffix.lower() == ".json" else "toml")
        if not args.no_check:
            # The same checker as `appliance config check`, without this machine's APPLIANCE_*
            # variables (they are not the kiosk's). The kiosk validates again over its own file.
            problems = check_file(args.file, environ={}, fmt="json" if fmt == "json" else "toml")
            if problems:
                for path, reason in problems:
                    print(f"{path}: {reason}", file=sys.stderr)
                print(
                    f"{args.file}: {len(problems)} problem(s); nothing signed or published "
                    "(a kiosk would reject it)",
                    file=sys.stderr,
                )
                return EXIT_USAGE
        opts = broker_options(args)
        signer = load_signer(args, "admin")
        reg = registry(args)
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    prefix = opts.prefix
    try:
        with FleetMqtt(opts) as mqtt:
            return _push(args, mqtt, prefix, reg, signer, content, fmt)
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_FAILED


def _push(  # noqa: C901, PLR0912, PLR0915  targets, version, publish, wait for reports: one flow, to be split into those four
    args: argparse.Namespace,
    mqtt: FleetMqtt,
    prefix: str,
    reg: FleetRegistry,
    signer: OperatorKey,
    content: bytes,
    fmt: str,
) -> int:
    keys = reg.device_keys()
    group = args.target[len(GROUP_PREFIX) :] if args.target.startswith(GROUP_PREFIX) else None
    every = Topics.anyone(prefix)
    state = collect_retained(
        mqtt,
        [every.status, every.config_desired, every.config_reported],
        args.listen,
    )
    if group is None:
        devices = [args.target]
    else:
        members = set(reg.members(group))
        for topic, msg in state.items():
            parsed = parse(prefix, topic)
            if parsed is not None and parsed.kind is TopicKind.STATUS:
                try:
                    status = parse_message(StatusMessage, msg.payload, "status")
                except MessageInvalid as exc:
                    print(f"warning: {topic}: {exc} (skipped)", file=sys.stderr)
                    continue
                if group in (status.groups or []):
                    members.add(str(device_of(topic, prefix)))
        devices = sorted(members)
        if not devices:
            print(f"error: no known member of group {group}", file=sys.stderr)
            return EXIT_USAGE
    version = args.version
    if version is None:
        known = [0]
        for dev in devices:
            d = state.get(Topics(prefix, dev).config_desired)
            if d is not None:
                known.append(peek_version(d.payload) or 0)
            r = state.get(Topics(prefix, dev).config_reported)
            if r is not None:
                try:
                    rep = json.loads(r.payload)
                    known += [int(rep.get("version") or 0), int(rep.get("applied_version") or 0)]
                except (ValueError, TypeError, AttributeError):
                    pass
        version = max(known) + 1
    doc = sign_config(content, key=signer, version=version, target=args.target, fmt=fmt)
    reported = mqtt.collector(every.config_reported)
    for dev in devices:
        mqtt.publish(Topics(prefix, dev).config_desired, doc, retain=True)
    print(f"published configuration v{version} for {args.target} to {', '.join(devices)}")
    if args.no_wait:
        return EXIT_OK
    print(
        f"waiting up to {args.timeout:g} s for {len(devices)} kiosk(s): applying (restart), "
        "trial (health checks), then applied, rolled_back or rejected",
        flush=True,
    )
    final: dict[str, dict[str, object]] = {}
    last: dict[str, str] = {}
    # A kiosk publishes its latest report again on every connect (retained state, so a tool
    # that missed it still sees it): after the restart that applies the document, the report
    # sent just before the restart arrives a second time. Show each report once.
    shown: dict[str, object] = {}
    unverified = False
    started = time.monotonic()
    deadline = started + args.timeout
    while set(final) != set(devices):
        left = deadline - time.monotonic()
        if left <= 0:
            waiting = sorted(set(devices) - set(final))
            print(
                f"no final report from {', '.join(waiting)} within {args.timeout:g} s (offline? "
                "a kiosk applies it when it comes back; an active enrollment session delays it)",
                file=sys.stderr,
            )
            print(_summary(version, args.target, devices, final, last), flush=True)
            return EXIT_TIMEOUT
        try:
            msg = reported.get(timeout=left)
        except queue.Empty:
            continue
        dev = device_of(msg.topic, prefix)
        if dev not in devices or not msg.payload:
            continue
        try:
            rep = json.loads(msg.payload)
        except ValueError:
            continue
        if rep.get("version") != version or shown.get(str(dev)) == rep:
            continue
        shown[str(dev)] = rep
        v = verify_from(keys, str(dev), msg)
        if v.status == "bad":
            unverified = True
            print(f"{dev}: report signature INVALID ({v.detail})", file=sys.stderr)
        status = rep.get("status")
        last[str(dev)] = str(status)
        elapsed = time.monotonic() - started
        print(f"{dev}: v{version} {status}: {rep.get('reason', '')} (+{elapsed:.1f} s)", flush=True)
        for problem in rep.get("problems") or []:
            print(f"    {problem}")
        if status in FINAL:
            final[str(dev)] = rep
    print(_summary(version, args.target, devices, final, last), flush=True)
    if unverified:
        return EXIT_UNVERIFIED
    return EXIT_OK if all(r.get("status") == "applied" for r in final.values()) else EXIT_FAILED


def _summary(
    version: int,
    target: str,
    devices: list[str],
    final: dict[str, dict[str, object]],
    last: dict[str, str],
) -> str:
    """The final line: how many kiosks applied the version, and what the others said."""
    applied = sorted(d for d, r in final.items() if r.get("status") == "applied")
    others = [
        f"{d} {final[d].get('status')}"
        if d in final
        else f"{d} no final report (last: {last.get(d, 'nothing')})"
        for d in devices
        if d not in applied
    ]
    line = f"v{version} for {target}: applied on {len(applied)} of {len(devices)}"
    return line + (f"; {', '.join(others)}" if others else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance fleet push-config")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
