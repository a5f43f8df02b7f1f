"""``appliance fleet issue DEVICE``: instant issuance of a card from a verified enrollment.

Picks the enrollment in the central store (--package-id, --citizen-ref, or the device's newest
verified one), takes the citizen's details (--citizens FILE, or --synthetic for a demo), builds
DG1, DG2 (the verified portrait record), DG13, EF.COM and EF.SOD signed with the Document
Signer (--ds-dir), and sends ``card.encode``: the kiosk checks the package against its CSCA
bundle, writes and locks a blank chip, reads it back and runs Passive Authentication.

Exit status: 0 issued and verified; 1 refused or failed (the kiosk's error code is shown);
2 bad usage, unknown enrollment or citizen, missing keys; 3 the reply's device signature did
not verify; 4 no reply in time.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import ApplianceError
from ..fleet.conn import home_of
from ..protocol.codes import ErrorCode
from .citizens import CitizenDirectory
from .clitools import add_kiosk_args, connect
from .enrollcli import add_issue_args
from .issue import DocumentSigner, format_issue, issue_card
from .receivecli import store_of

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNVERIFIED, EXIT_TIMEOUT = 0, 1, 2, 3, 4


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_kiosk_args(p)
    p.add_argument("--package-id", default=None, help="the enrollment package to issue from")
    p.add_argument(
        "--citizen-ref", default=None, help="issue from this citizen's newest enrollment"
    )
    add_issue_args(p)
    p.add_argument(
        "--timeout",
        type=float,
        default=90.0,
        help="seconds to wait for the kiosk's card.encode reply (default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    home = home_of(args)
    try:
        store = store_of(args)
        enrollment = store.find_enrollment(
            device=args.device, package_id=args.package_id, citizen_ref=args.citizen_ref
        )
        if enrollment is None:
            raise ApplianceError(
                f"no verified enrollment of {args.device} in {store.root} matches",
                code=ErrorCode.ENROLLMENT_UNKNOWN,
            )
        citizen_ref = str(enrollment["summary"].get("citizen_ref"))
        citizen = CitizenDirectory(args.citizens, synthetic=args.synthetic).get(citizen_ref)
        signer = DocumentSigner.load(args.ds_dir or home / "issuer")
        mqtt, cmd = connect(args)
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = issue_card(cmd, store, enrollment, citizen, signer, timeout=args.timeout)
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_TIMEOUT if exc.code == ErrorCode.TIMEOUT else EXIT_FAILED
    finally:
        mqtt.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=1, default=str, ensure_ascii=False))
    else:
        print(format_issue(report))
    if report.verified_reply == "bad":
        return EXIT_UNVERIFIED
    return EXIT_OK if report.ok else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance fleet issue")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
