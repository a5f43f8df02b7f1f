"""``appliance fleet keys ...``: the fleet root key and operator certificates.

Wired under ``appliance fleet keys`` (appliance/cli.py); ``python -m appliance.fleet.keyscli``
runs the same parser directly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from ..errors import TrustError
from ..trust import keys
from ..trust.certs import ALL_DEVICES, ROLES, ROOT_PUB_FILE
from . import keys as fleetkeys


def _default_home() -> str:
    return os.environ.get("APPLIANCE_FLEET_HOME", str(fleetkeys.DEFAULT_HOME))


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``init``, ``issue-operator`` and ``show`` sub-commands to ``p``."""
    p.description = (
        "Manage the fleet root key and operator certificates. The root key signs operator "
        "certificates; kiosks trust only the root public key installed at provisioning."
    )
    p.add_argument(
        "--home",
        default=_default_home(),
        help="directory of the fleet root key (root.key mode 0600, root.pub); "
        "default: $APPLIANCE_FLEET_HOME or ~/.appliance-fleet (currently %(default)s)",
    )
    sub = p.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)

    init = sub.add_parser(
        "init",
        help="create the fleet root key (idempotent)",
        description="Create the fleet root key in --home unless one exists (it is never "
        "replaced). Prints the root key id and the path of root.pub to install on kiosks.",
    )
    init.set_defaults(keys_command="init")

    iss = sub.add_parser(
        "issue-operator",
        help="sign a certificate for an operator key",
        description="Sign an operator certificate with the root key: the holder of the "
        "operator key may then sign commands (and, for admins, configurations) for the "
        "devices and groups listed, until --not-after.",
    )
    src = iss.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--public-key",
        type=Path,
        metavar="FILE",
        help="the operator's public key file (ed25519-pub:...), made by the operator",
    )
    src.add_argument(
        "--generate-key",
        type=Path,
        metavar="DIR",
        help="create a new operator key pair in DIR (NAME.key mode 0600, NAME.pub) and "
        "certify it; hand the private key to the operator over a safe channel",
    )
    iss.add_argument(
        "--name",
        required=True,
        help="operator or service name (letters, digits, _ . -); "
        "used as the file name and shown in audit logs",
    )
    iss.add_argument(
        "--role",
        action="append",
        required=True,
        choices=sorted(ROLES),
        help="role granted (repeatable): operator = enrollment and card commands, admin = "
        "configuration, restarts, diagnostics, technician = self-test and snapshots, "
        "ingest = central service acknowledging sealed biometrics, release = signs "
        "software release bundles (appliance fleet release build). Roles do not imply "
        "each other.",
    )
    iss.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="ID",
        help=f"device id the holder may command (repeatable); '{ALL_DEVICES}' = every device",
    )
    iss.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME",
        help="group whose members the holder may command (repeatable)",
    )
    iss.add_argument(
        "--not-after",
        required=True,
        metavar="WHEN",
        help="end of validity: relative (90d, 12h, 2w) or a date (2027-01-31, end of day UTC) "
        "or an ISO date-time (2027-01-31T12:00:00Z)",
    )
    iss.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="certificate file to write; default: NAME.cert next to the key "
        "(with --generate-key) or in the current directory",
    )
    iss.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    iss.set_defaults(keys_command="issue-operator")

    show = sub.add_parser(
        "show",
        help="print and verify a certificate",
        description="Print a certificate's contents as JSON and verify it against the "
        "root public key in --home (exit status 1 if it does not verify or has expired).",
    )
    show.add_argument("certificate", type=Path, help="certificate file")
    show.set_defaults(keys_command="show")


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; 0 on success, 1 on a trust error (message on stderr)."""
    home = Path(args.home).expanduser()
    try:
        if args.keys_command == "init":
            root, created = fleetkeys.init_root(home)
            state = "created" if created else "already present"
            print(f"fleet root key {root.key_id} {state} in {home}")
            print(f"install {home / ROOT_PUB_FILE} on every kiosk as its trust anchor")
            return 0
        if args.keys_command == "issue-operator":
            not_after = fleetkeys.parse_not_after(args.not_after)
            if args.generate_key is not None:
                pub = fleetkeys.generate_operator_key(args.generate_key, args.name)
                default_out = Path(args.generate_key).expanduser() / f"{args.name}.cert"
            else:
                pub = keys.load_public_key(args.public_key)
                default_out = Path(f"{args.name}.cert")
            cert = fleetkeys.issue_operator(
                home,
                pub,
                roles=args.role,
                devices=args.device,
                groups=args.group,
                not_after=not_after,
                name=args.name,
            )
            out = args.out or default_out
            fleetkeys.write_certificate(out, cert, overwrite=args.force)
            print(
                f"issued certificate {cert.key_id} for {args.name!r}: roles "
                f"{','.join(cert.roles)}, devices {','.join(cert.devices) or '-'}, groups "
                f"{','.join(cert.groups) or '-'}, valid until {_iso(cert.not_after)} -> {out}"
            )
            return 0
        if args.keys_command == "show":
            try:
                cert = fleetkeys.check_certificate(args.certificate, home)
                status = "valid"
            except TrustError as exc:
                cert = fleetkeys.read_certificate(args.certificate)
                status = f"INVALID ({exc.code}: {exc.message})"
            info = cert.summary()
            info["issued_at"] = _iso(cert.issued_at)
            info["not_after"] = _iso(cert.not_after)
            info["status"] = status
            print(json.dumps(info, indent=2))
            return 0 if status == "valid" else 1
    except TrustError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return 1
    print(f"unknown command {args.keys_command!r}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance fleet keys")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
