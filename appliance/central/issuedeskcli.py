"""``appliance fleet issue-desk``: the centre's issuance desk for kiosk stations.

A kiosk station whose citizen asked for the card on the spot asks, once the enrollment is
submitted, on ``{prefix}/{device}/card/request``; the desk answers on that kiosk's
``card/issuance`` with a document signed by the ``ingest`` key (--signer): ``pending`` until the
enrollment is verified in --store (``appliance fleet receive`` does that, sharing the store),
then the issuance package built from the verified portrait and the citizen's record (the
central directory's --db, or a --citizens file) with EF.SOD signed by the Document Signer
(--ds-dir), or ``refused`` with the cause (docs/protocol.md "Card issuance"). It connects with
the ``central`` broker certificate: the shipped ACL gives these topics to that identity only.

Exit status: 0 stopped by a signal; 1 the broker could not be reached; 2 bad usage, missing
keys or data.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import ApplianceError
from ..fleet.conn import add_broker_args, add_home_arg, broker_options, home_of
from .citizens import CitizenDirectory
from .directory import DirectoryStore
from .issue import CitizenSource, DocumentSigner, IssuanceDesk, IssuanceDeskCore, directory_citizens
from .keys import load_central_keys
from .receivecli import add_store_arg, store_of
from .service import stop_on_signals

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_home_arg(p)
    add_store_arg(p)
    p.add_argument(
        "--db",
        type=Path,
        default=None,
        metavar="FILE",
        help="the central directory's SQLite store: the citizens' records the cards carry "
        "(default: <home>/directory.sqlite, unless --citizens is given)",
    )
    p.add_argument(
        "--citizens",
        type=Path,
        default=None,
        metavar="FILE",
        help="a citizens file instead of the directory (docs/central.md) (default: none)",
    )
    p.add_argument(
        "--ds-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="Document Signer ds.key (0600) and ds.pem; the simulated kit's are in "
        "<state>/sim/pki (default: <home>/issuer)",
    )
    p.add_argument(
        "--signer",
        type=Path,
        default=None,
        metavar="PREFIX",
        help="ingest signing key PREFIX.key and certificate PREFIX.cert (role ingest) that "
        "sign the answers (default: <home>/ingest)",
    )
    p.add_argument(
        "--client-id", default="central-issuance", help="MQTT client id (default: %(default)s)"
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level on stderr (default: %(default)s)",
    )
    add_broker_args(p)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    home = home_of(args)
    try:
        opts = broker_options(args)
        keys = load_central_keys(home, signer=args.signer)
        signer = DocumentSigner.load(args.ds_dir or home / "issuer")
        store = store_of(args)
        citizens: CitizenSource
        if args.citizens is not None:
            citizens = CitizenDirectory(args.citizens).get
        else:
            db = args.db or home / "directory.sqlite"
            if not db.exists():
                print(f"error: no directory store {db} (give --db or --citizens)", file=sys.stderr)
                return EXIT_USAGE
            citizens = directory_citizens(DirectoryStore(db))
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    core = IssuanceDeskCore(
        store, signer, keys.ingest, citizens, lambda _t, _p: False, prefix=opts.prefix
    )
    desk = IssuanceDesk(
        core,
        host=opts.host,
        port=opts.port,
        client_id=args.client_id,
        tls=opts.paho_tls(),
        insecure=opts.insecure,
    )
    stop = stop_on_signals()
    try:
        desk.start()
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"issuance desk answering on {opts.describe()} ({core.filter()}), store {store.root}, "
        f"answers signed by {keys.ingest.key_id}",
        flush=True,
    )
    try:
        stop.wait()
    finally:
        desk.stop()
    s = core.stats
    print(
        f"stopped: {s['requests']} requests, {s['ready']} ready, {s['pending']} pending, "
        f"{s['refused']} refused, {s['malformed']} malformed",
        flush=True,
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance fleet issue-desk")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
