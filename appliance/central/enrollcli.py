"""``appliance fleet enroll DEVICE``: a scripted enrollment on a kiosk, end to end.

Drives the kiosk through enrollment.start, the portrait, every finger of the plan (planned
skips with --skip; a finger without a usable capture after its attempts is skipped as
"unreadable"), review and finish; then follows the sealed package to the centre until it is
verified (``complete``) and the signed receipt has made the kiosk purge its copy, and prints a
summary: steps, qualities, timings, what the centre verified. With --issue it then builds the
card's LDS from the verified portrait and the citizen's details and has the kiosk encode and
verify a card (as ``appliance fleet issue`` does).

By default a receiver runs inside this command (keys from <home>, see --create-keys); use
--external-receiver when ``appliance fleet receive`` serves the fleet. On a broker with the
shipped ACL (TLS) the commands go out with the ``controller`` certificate (--cert/--key) and the
receiver inside connects with the ``central`` one (--central-cert/--central-key), the identity
the ACL lets write upload acknowledgements and receipts.

Exit status: 0 verified (and issued with --issue); 1 a step failed or the package was
rejected; 2 bad usage or missing keys; 3 a reply's device signature did not verify; 4 no
verdict in time.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from ..errors import ApplianceError, ConfigError
from ..fleet.conn import BrokerOptions, broker_options, home_of
from ..protocol.codes import ErrorCode
from .clitools import add_kiosk_args, connect
from .enroll import EnrollOptions, format_report, parse_positions, parse_skip, run_enrollment
from .keys import ensure_central_keys, load_central_keys
from .receivecli import store_of

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNVERIFIED, EXIT_TIMEOUT = 0, 1, 2, 3, 4


def add_issue_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--citizens",
        type=Path,
        default=None,
        metavar="FILE",
        help="JSON file of citizens' details keyed by citizen_ref (docs/central.md)",
    )
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="use a generated, fictitious citizen when the reference is not in --citizens "
        "(demos and tests only) (default: off)",
    )
    p.add_argument(
        "--ds-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="Document Signer ds.key (0600) and ds.pem; the simulated kit's are in "
        "<state>/sim/pki (default: <home>/issuer)",
    )


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_kiosk_args(p)
    p.add_argument(
        "--citizen-ref",
        default=None,
        help="the citizen's lookup reference (default: a fresh CIT-xxxxxxxx)",
    )
    p.add_argument(
        "--policy",
        default="4-4-2",
        help="finger policy: 4-4-2 (2 3 4 5, 7 8 9 10, 1 6), all (1-10) or a list such as "
        "2,7 (default: %(default)s)",
    )
    p.add_argument(
        "--exception",
        action="append",
        default=[],
        metavar="POS:REASON",
        help="a finger known missing/bandaged before the start: not asked for (repeatable)",
    )
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="POS:REASON",
        help="a finger found unusable at the kiosk: skipped with the reason during capture "
        "(repeatable); REASON is missing, bandaged, unreadable or other",
    )
    p.add_argument("--attempts", type=int, default=3, help="captures per finger (default 3)")
    p.add_argument(
        "--min-quality", type=int, default=None, help="finger score to reach (default: kiosk's)"
    )
    p.add_argument(
        "--finger-timeout", type=float, default=40.0, help="seconds per attempt (default 40)"
    )
    p.add_argument(
        "--portrait-timeout", type=float, default=30.0, help="portrait auto-capture s (default 30)"
    )
    p.add_argument(
        "--no-skip-unreadable",
        action="store_true",
        help="stop (and cancel the session) when a finger gives no capture, instead of "
        "skipping it as unreadable",
    )
    p.add_argument(
        "--upload-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the centre's verdict after finish (default %(default)s)",
    )
    p.add_argument(
        "--external-receiver",
        action="store_true",
        help="do not run a receiver here: 'appliance fleet receive' serves the uploads",
    )
    p.add_argument(
        "--central-cert",
        type=Path,
        default=None,
        metavar="FILE",
        help="with TLS: the receiver's client certificate, CN 'central' "
        "(issue-device-cert --kind central) (default: central.crt next to --cert)",
    )
    p.add_argument(
        "--central-key",
        type=Path,
        default=None,
        metavar="FILE",
        help="with TLS: the 'central' certificate's key (0600) (default: central.key next to "
        "--cert)",
    )
    p.add_argument(
        "--create-keys",
        action="store_true",
        help="create the fleet root, central enrollment key and ingest key in <home> if "
        "missing (the kiosk needs <home>/enrollment.pub as trust.enrollment_key)",
    )
    p.add_argument("--issue", action="store_true", help="issue a card after verification")
    add_issue_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress lines, only the summary")


def run(args: argparse.Namespace) -> int:  # noqa: PLR0912  the flags to options, one branch per flag and exit code
    from .receiver import Receiver, ReceiverCore, registry_device_keys

    home = home_of(args)
    try:
        opts = EnrollOptions(
            citizen_ref=args.citizen_ref or f"CIT-{uuid.uuid4().hex[:8].upper()}",
            finger_policy=parse_positions(args.policy),
            exceptions=[
                {"position": p, "reason": r} for p, r in (parse_skip(e) for e in args.exception)
            ],
            skips=dict(parse_skip(s) for s in args.skip),
            attempts=args.attempts,
            min_quality=args.min_quality,
            finger_timeout_s=args.finger_timeout,
            portrait_timeout_s=args.portrait_timeout,
            skip_unreadable=not args.no_skip_unreadable,
            issuance=args.issue,
            upload_timeout_s=args.upload_timeout,
        )
        keys = ensure_central_keys(home) if args.create_keys else None
        if keys is None and not args.external_receiver:
            keys = load_central_keys(home)
        store = store_of(args)
        bopts = broker_options(args)
        directory = None
        signer = None
        if args.issue:
            from .citizens import CitizenDirectory
            from .issue import DocumentSigner

            directory = CitizenDirectory(args.citizens, synthetic=args.synthetic)
            directory.get(opts.citizen_ref)  # fail before the citizen gives fingerprints
            signer = DocumentSigner.load(args.ds_dir or home / "issuer")
        receiver_tls = _receiver_tls(args, bopts) if not args.external_receiver else None
        mqtt, cmd = connect(args)
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    receiver = None
    say = None if args.quiet or args.json else (lambda m: print(f"  .. {m}", flush=True))
    try:
        if keys is not None and not args.external_receiver:
            core = ReceiverCore(
                store,
                keys.enrollment,
                keys.ingest,
                registry_device_keys(home),
                lambda _t, _p: False,
                prefix=bopts.prefix,
            )
            receiver = Receiver(
                core,
                host=bopts.host,
                port=bopts.port,
                client_id=f"central-enroll-{uuid.uuid4().hex[:8]}",
                session_expiry_s=0,
                tls=receiver_tls,
                insecure=bopts.insecure,
            )
            receiver.start()
        root_pub = keys.root_public_key if keys is not None else _root_pub(home)
        report = run_enrollment(cmd, opts, store=store, root_public_key=root_pub, say=say)
        issue_report = None
        if args.issue and report.ok and directory is not None and signer is not None:
            from .issue import issue_card

            enrollment = store.result(args.device, report.package_id)
            if enrollment is None:
                print(
                    "cannot issue: the verified enrollment is not in this store "
                    "(--external-receiver with another --store?)",
                    file=sys.stderr,
                )
            else:
                issue_report = issue_card(
                    cmd, store, enrollment, directory.get(opts.citizen_ref), signer
                )
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_TIMEOUT if exc.code == ErrorCode.TIMEOUT else EXIT_FAILED
    finally:
        if receiver is not None:
            receiver.stop(end_session=True)
        mqtt.close()
    if args.json:
        out = report.to_dict()
        if issue_report is not None:
            out["issue"] = issue_report.to_dict()
        print(json.dumps(out, indent=1, default=str, ensure_ascii=False))
    else:
        print()
        print(format_report(report))
        if issue_report is not None:
            from .issue import format_issue

            print(format_issue(issue_report))
    if report.upload_status == "timeout":
        return EXIT_TIMEOUT
    if not report.ok or (args.issue and (issue_report is None or not issue_report.ok)):
        return EXIT_FAILED
    if report.unverified_replies:
        return EXIT_UNVERIFIED
    return EXIT_OK


def _receiver_tls(args: argparse.Namespace, bopts: BrokerOptions) -> dict[str, Any] | None:
    """paho ``tls_set`` arguments of the receiver inside (the ``central`` identity)."""
    if not bopts.tls:
        return None
    here = bopts.cert_file.parent if bopts.cert_file else Path(".")
    cert = args.central_cert or here / "central.crt"
    key = args.central_key or here / "central.key"
    for path, flag in ((cert, "--central-cert"), (key, "--central-key")):
        if not Path(path).exists():
            raise ConfigError(
                f"the receiver inside needs the broker identity 'central': {path} is missing",
                [(flag, "issue it with provisioning/issue-device-cert --kind central central")],
            )
    return {
        "ca_certs": str(bopts.ca_file) if bopts.ca_file else None,
        "certfile": str(cert),
        "keyfile": str(key),
    }


def _root_pub(home: Path) -> bytes | None:
    from ..trust.certs import ROOT_PUB_FILE
    from ..trust.keys import load_public_key

    path = home / ROOT_PUB_FILE
    return load_public_key(path) if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance fleet enroll")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
