"""``appliance fleet approve DEVICE``: approve (or refuse) a kiosk's claim.

Reads the kiosk's retained claim request from ``{prefix}/claims/DEVICE/request``, checks it
against the fleet home's one-time tokens (unknown, reused, expired, mistyped or mis-bound
tokens are refused, and the kiosk is told why), shows what will be approved, records the
device and its public key in the fleet home (``devices/DEVICE.json``: ``send`` and ``watch``
verify its signatures with it), and publishes the answer retained on
``{prefix}/claims/DEVICE/response``: the trust bundle (fleet root public key, enrollment
public key, broker address, and a broker client certificate when ``--ca-dir`` is given),
sealed to the one-time key in the request.
"""

from __future__ import annotations

import argparse
import getpass
import socket
import sys
import time
from pathlib import Path

from ..errors import ApplianceError
from ..protocol.topics import Topics
from ..provisioning.claim import ClaimRequest, parse_request
from ..trust.certs import validate_name
from .approve import NEXT_STEPS, KioskBroker, answer_claim, issue_broker_certificate, judge
from .conn import (
    FleetMqtt,
    add_broker_args,
    add_home_arg,
    broker_options,
    home_of,
)
from .registry import FleetRegistry, load_home_enrollment_key

DEFAULT_SCRIPT = Path(__file__).resolve().parents[2] / "provisioning" / "issue-device-cert"


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("device", metavar="DEVICE", help="the claim to approve: the kiosk's device id")
    add_home_arg(p)
    p.add_argument("--yes", action="store_true", help="approve without asking for confirmation")
    p.add_argument(
        "--deny", metavar="REASON", help="refuse the claim with this reason instead of approving"
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="approve even if DEVICE is registered with another key (a re-installed kiosk)",
    )
    p.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME",
        help="add the kiosk to this group (repeatable; added to the token's groups)",
    )
    p.add_argument(
        "--ca-dir",
        type=Path,
        metavar="DIR",
        help="fleet CA directory: issue the kiosk's broker client certificate (CN = DEVICE) "
        "with provisioning/issue-device-cert and send it sealed; without it the kiosk keeps "
        "the certificate it claimed with",
    )
    p.add_argument(
        "--issue-script",
        type=Path,
        default=DEFAULT_SCRIPT,
        metavar="FILE",
        help="the certificate script (default: %(default)s)",
    )
    p.add_argument(
        "--kiosk-host",
        help="broker host name the kiosk should use (default: --host); must be in the broker "
        "certificate's subjectAltName",
    )
    p.add_argument("--kiosk-port", type=int, help="broker port for the kiosk (default: --port)")
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the kiosk's retained request (default %(default)s)",
    )
    add_broker_args(p)


def _summary(req: ClaimRequest) -> str:
    return (
        f"claim {req.claim_id}: device {req.device_id}, site {req.site or '-'}, host "
        f"{req.hostname or '-'}, software {req.version or '-'}, device key {req.device_key_id}, "
        f"token {req.token_id}, sent "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(req.issued_at))} UTC"
    )


def run(args: argparse.Namespace) -> int:
    home = home_of(args)
    reg = FleetRegistry(home)
    try:
        validate_name(args.device, "device")
        opts = broker_options(args)
        mqtt = FleetMqtt(opts).connect()
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return 1
    try:
        return _approve(args, reg, mqtt, opts.prefix, opts.host, opts.port)
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return 1
    finally:
        mqtt.close()


def _approve(
    args: argparse.Namespace, reg: FleetRegistry, mqtt: FleetMqtt, prefix: str, host: str, port: int
) -> int:
    topics = Topics(prefix, args.device)
    req_topic, resp_topic = topics.claim_request, topics.claim_response
    q = mqtt.collector(req_topic)
    mqtt.subscribe([req_topic])
    deadline = time.monotonic() + args.timeout
    raw = b""
    while not raw:
        left = deadline - time.monotonic()
        if left <= 0:
            print(
                f"no claim request from {args.device} on {req_topic} within {args.timeout:g} s.\n"
                "next: check the device id, and that the kiosk ran 'appliance provision "
                "--claim-token ...' against this broker",
                file=sys.stderr,
            )
            return 1
        try:
            raw = q.get(timeout=left).payload
        except Exception:  # noqa: S112 - queue.Empty: the loop's deadline decides
            continue
    req = parse_request(raw)
    print(_summary(req))
    if load_home_enrollment_key(reg.home) is None:
        print(
            f"warning: {reg.home} has no enrollment key (enrollment.pub): the trust bundle will "
            "carry none, and the kiosk's provisioning stops at its install step unless the "
            "technician passes --without-enrollment-key (docs/provisioning.md)",
            file=sys.stderr,
        )
    verdict = judge(reg, req, now=time.time(), replace=args.replace)
    if verdict.token is not None and verdict.token.device is None and verdict.status == "approved":
        print(f"note: token {verdict.token.token_id} is not bound to a device id")
    if verdict.status == "approved" and args.deny is None and not args.yes:
        if not sys.stdin.isatty():
            print("refusing to approve without confirmation: add --yes", file=sys.stderr)
            return 1
        if input(f"approve {args.device}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("not approved; nothing changed")
            return 1
    issue = None
    if args.ca_dir is not None:
        ca_dir, script = args.ca_dir, args.issue_script

        def issue(device_id: str) -> dict[str, str]:
            return issue_broker_certificate(device_id, ca_dir, script)

    outcome = answer_claim(
        reg,
        req,
        broker=KioskBroker(args.kiosk_host or host, args.kiosk_port or port, prefix),
        issue_tls=issue,
        extra_groups=args.group,
        approved_by=f"{getpass.getuser()}@{socket.gethostname()}",
        replace=args.replace,
        deny=args.deny,
    )
    mqtt.publish(resp_topic, outcome.response, retain=True)
    v = outcome.verdict
    if v.status != "approved":
        print(f"claim {args.device} REFUSED ({v.code}): {v.message}", file=sys.stderr)
        if v.code in NEXT_STEPS:
            print(f"next (for the technician): {NEXT_STEPS[v.code]}", file=sys.stderr)
        return 1
    dev = outcome.device
    assert dev is not None
    print(
        f"approved {dev.device_id}: key {dev.key_id}, groups {','.join(dev.groups) or '-'}, "
        f"{'broker certificate issued, ' if args.ca_dir else ''}trust bundle sealed to the "
        f"kiosk's claim key and published on {resp_topic}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance fleet approve")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
