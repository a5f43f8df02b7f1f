"""``appliance fleet release build|verify``: signed software release bundles.

``build`` runs ``pip wheel`` on a project checkout (the project's wheel and, unless
``--no-deps``, every dependency's, so a kiosk installs with ``--no-index``), writes the manifest
(version, hashes, ``--min-from``, platform/architecture/Python of this machine, store schema,
migrations) and signs it with a key whose certificate has the ``release`` role::

    appliance fleet keys issue-operator --generate-key ~/.appliance-fleet --name release \\
        --role release --device '*' --not-after 365d
    appliance fleet release build . --min-from 0.1.0 --out dist/appliance-0.2.0.bundle

``verify`` checks a bundle exactly as a kiosk does (signature against the root in --home, every
file's hash), optionally also against a running version and the target of this machine, and
prints the manifest.

Exit status: 0 built / valid; 1 refused (the code and reason are printed); 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ApplianceError
from ..trust.certs import ROOT_PUB_FILE
from ..trust.keys import load_public_key
from ..update.bundle import Target, verify_bundle
from .conn import add_home_arg, home_of
from .release import build_release
from .tools import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_signer_arg, load_signer


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_home_arg(p)
    sub = p.add_subparsers(dest="release_command", metavar="COMMAND", required=True)

    b = sub.add_parser("build", help="build and sign a release bundle")
    b.add_argument("project", type=Path, help="project checkout (its pyproject.toml)")
    b.add_argument("--out", type=Path, required=True, help="bundle file to write")
    b.add_argument(
        "--min-from", required=True, metavar="VERSION", help="oldest version it upgrades from"
    )
    add_signer_arg(b, "release")
    b.add_argument("--no-deps", action="store_true", help="only the project's wheel")
    b.add_argument(
        "--find-links",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="local wheel directory for pip (repeatable)",
    )
    b.add_argument("--no-index", action="store_true", help="pip resolves from --find-links only")
    b.add_argument(
        "--no-build-isolation",
        action="store_true",
        help="build with this environment's build backend instead of a fresh one",
    )
    b.add_argument(
        "--schema",
        type=int,
        help="store schema version the release brings (default: this checkout's)",
    )
    b.add_argument(
        "--migration",
        action="append",
        default=[],
        metavar="TEXT",
        help="label of a schema migration it brings (repeatable; informational)",
    )
    b.add_argument(
        "--rollback",
        action="store_true",
        help="sign as a rollback: kiosks accept it even though it is older than what runs",
    )
    b.add_argument("--url", help="https:// URL where kiosks may download the same bundle")
    b.set_defaults(release_command="build")

    v = sub.add_parser("verify", help="check a bundle as a kiosk would")
    v.add_argument("bundle", type=Path)
    v.add_argument("--running", metavar="VERSION", help="also check against this version")
    v.add_argument(
        "--target-here",
        action="store_true",
        help="also check platform, architecture and Python against this machine",
    )
    v.set_defaults(release_command="verify")


def run(args: argparse.Namespace) -> int:
    try:
        if args.release_command == "build":
            key = load_signer(args, "release")
            m = build_release(
                args.project,
                args.out,
                key,
                min_from=args.min_from,
                with_deps=not args.no_deps,
                find_links=args.find_links,
                no_index=args.no_index,
                build_isolation=not args.no_build_isolation,
                schema=args.schema,
                migrations=args.migration,
                rollback=args.rollback,
                url=args.url,
            )
            s = m.summary()
            print(
                f"built {args.out}: {s['name']} {s['version']} (from {s['min_from']}) for "
                f"{s['platform']}/{s['arch']} python {s['python']}, {s['files']} wheels, "
                f"{s['bytes']} bytes, signed by {s['issuer']}"
            )
            return EXIT_OK
        if args.release_command == "verify":
            roots = [load_public_key(home_of(args) / ROOT_PUB_FILE)]
            m = verify_bundle(
                args.bundle,
                roots,
                running=args.running,
                target=Target() if args.target_here else None,
            )
            print(json.dumps({"status": "valid", **m.summary()}, indent=2))
            return EXIT_OK
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance fleet release")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
