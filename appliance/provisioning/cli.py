"""``appliance provision``: make this kiosk a member of the fleet, step by step.

  1 keys      the device's identity key (state dir, mode 0600)
  2 config    the configuration file: device id, site, kit profile, broker, TLS files
  3 selftest  camera, fingerprint sensor, card reader, broker, clock
  4 claim     registration with a one-time claim token; the fleet administrator approves
              with 'appliance fleet approve DEVICE'
  5 install   the trust bundle: fleet root key, enrollment key (required: biometric
              records are sealed to it; --without-enrollment-key to opt out), broker
              certificate
  6 verify    the broker accepts the kiosk with its final settings

Idempotent and resumable: progress is kept in <state>/provision/, a re-run skips what is done
and continues where it stopped; options given on the first run are remembered.

Exit status: 0 provisioned; 1 a step failed (the message says what to do next); 2 bad usage;
3 the claim is waiting for the administrator's approval (re-run later to continue).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..config import DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR
from ..errors import ApplianceError
from ..protocol.codes import ErrorCode
from .flow import (
    EXIT_FAILED,
    EXIT_PENDING,
    EXIT_USAGE,
    ClaimPending,
    Options,
    Params,
    Provisioner,
    ProvisionError,
    reset,
)


def _hostport(text: str) -> tuple[str, int | None]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"bad port in {text!r} (use HOST:PORT)")
    return host.strip("[]"), int(port)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get("APPLIANCE_CONFIG", str(DEFAULT_CONFIG_PATH))),
        metavar="FILE",
        help="configuration file to write (default: $APPLIANCE_CONFIG or %(default)s)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("APPLIANCE_STATE_DIR", str(DEFAULT_STATE_DIR))),
        metavar="DIR",
        help="state directory: keys, trust bundle, progress (default: $APPLIANCE_STATE_DIR "
        "or %(default)s)",
    )
    g = p.add_argument_group("kiosk (needed on the first run, remembered after)")
    g.add_argument("--device-id", metavar="ID", help="device id, e.g. kiosk-hn-0042")
    g.add_argument("--site", help="site name shown to administrators (default: none)")
    g.add_argument(
        "--profile",
        metavar="NAME",
        help="hardware kit profile from firmware_profiles/ (e.g. rpi-r307-pcsc; sim for the "
        "simulated kit)",
    )
    g.add_argument(
        "--broker",
        type=_hostport,
        metavar="HOST[:PORT]",
        help="the fleet's MQTT broker (port default 1883; 8883 is usual with TLS)",
    )
    g.add_argument("--prefix", help="topic prefix (default kiosk)")
    g.add_argument(
        "--ca", type=Path, metavar="FILE", help="CA certificate of the broker (enables TLS)"
    )
    g.add_argument(
        "--cert",
        type=Path,
        metavar="FILE",
        help="client certificate for the claim: the fleet's shared claimant certificate, or "
        "this kiosk's own if it was issued beforehand",
    )
    g.add_argument("--key", type=Path, metavar="FILE", help="the client certificate's key (0600)")
    c = p.add_argument_group("claim")
    c.add_argument(
        "--claim-token",
        metavar="TOKEN",
        help="one-time token from the fleet administrator ('appliance fleet claim-token')",
    )
    c.add_argument(
        "--wait",
        type=float,
        default=300.0,
        metavar="S",
        help="seconds to wait for the approval in this run (default %(default)s); exit 3 and "
        "re-run to keep waiting",
    )
    o = p.add_argument_group("other")
    o.add_argument(
        "--force-config",
        action="store_true",
        help="overwrite a configuration file that 'appliance provision' did not write",
    )
    o.add_argument(
        "--device-timeout",
        type=float,
        default=15.0,
        metavar="S",
        help="self-test: seconds each device may take to come up (default %(default)s)",
    )
    o.add_argument(
        "--broker-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds to wait for the broker (default %(default)s)",
    )
    o.add_argument(
        "--without-enrollment-key",
        action="store_true",
        help="finish even if the fleet's trust bundle carries no enrollment key (a kiosk that "
        "will not enroll yet); logged and recorded, enrollment is refused and 'appliance "
        "selftest' fails until trust.enrollment_key is set. Without it a bundle lacking the key "
        "stops at step 5",
    )
    o.add_argument(
        "--reset",
        action="store_true",
        help="forget the progress (not the device key) and start over with the options given",
    )


def run(args: argparse.Namespace) -> int:
    host, port = args.broker if args.broker else (None, None)
    params = Params(
        device_id=args.device_id,
        site=args.site or "",
        profile=args.profile,
        host=host,
        port=port,
        prefix=args.prefix,
        ca_file=str(args.ca.resolve()) if args.ca else None,
        cert_file=str(args.cert.resolve()) if args.cert else None,
        key_file=str(args.key.resolve()) if args.key else None,
    )
    if args.reset:
        reset(args.state_dir)
    opts = Options(
        config_path=args.config.resolve(),
        state_dir=args.state_dir,
        params=params,
        token=args.claim_token,
        wait_s=args.wait,
        force_config=args.force_config,
        device_timeout_s=args.device_timeout,
        broker_timeout_s=args.broker_timeout,
        out=lambda line: print(line, flush=True),
        without_enrollment_key=args.without_enrollment_key,
    )
    try:
        return Provisioner(opts).run()
    except ClaimPending as exc:
        print(f"WAITING: {exc.message}", flush=True)
        return EXIT_PENDING
    except ProvisionError as exc:
        print(f"FAILED at step {exc.step}: {exc.message}", file=sys.stderr, flush=True)
        print(f"next: {exc.next_step}", file=sys.stderr, flush=True)
        return EXIT_USAGE if exc.code == ErrorCode.USAGE else EXIT_FAILED
    except (ApplianceError, OSError) as exc:
        what = f"{exc.code}: {exc.message}" if isinstance(exc, ApplianceError) else str(exc)
        print(f"FAILED: {what}", file=sys.stderr, flush=True)
        print(
            "next: fix the cause named, then re-run 'appliance provision' (completed steps "
            "are kept)",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance provision")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
