"""``appliance fleet receive``: the central enrollment receiver, running until stopped.

Subscribes to ``{prefix}/+/upload/+`` on the fleet broker with a persistent MQTT 5 session,
stores each chunk of an enrollment package (idempotently, files 0600), acknowledges it,
verifies the whole package when it is in (device signature with the key approved for the
device in <home>/devices/, sealed hashes, unsealing with the enrollment key, record hashes and
the hash chain, record parsing), keeps the verified records in the store, and publishes
``complete`` plus the signed receipt, or ``rejected`` with the reason (docs/enrollment.md).

Keys (docs/central.md): <home>/enrollment.key, <home>/ingest.key + ingest.cert;
``--create-keys`` makes whatever is missing (and the fleet root if there is none).

Stop it with Ctrl-C or SIGTERM; a restart resumes every unfinished upload.

``appliance fleet receive import DIR`` imports what ``appliance enrollment export`` wrote on
removable media, with the same storage and verification as an upload, and exits
(docs/central.md "Import"). A package imported and later uploaded is stored once; the verdict
and receipt reach the kiosk when it next sends a chunk of it (or at the receiver's next start).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import ApplianceError
from ..fleet.conn import add_broker_args, add_home_arg, broker_options, home_of
from ..protocol.topics import Topics
from .keys import ensure_central_keys, load_central_keys
from .receiver import Receiver, ReceiverCore, import_packages, registry_device_keys
from .service import stop_on_signals
from .store import PackageStore

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        type=Path,
        default=None,
        help="the central store: chunks, verified packages and plaintext records, 0600 "
        "(default: <home>/central)",
    )


def store_of(args: argparse.Namespace) -> PackageStore:
    return PackageStore(args.store or home_of(args) / "central")


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_home_arg(p)
    add_store_arg(p)
    p.add_argument(
        "--enrollment-key",
        type=Path,
        default=None,
        metavar="DIR",
        help="directory holding enrollment.key (0600) (default: <home>)",
    )
    p.add_argument(
        "--signer",
        type=Path,
        default=None,
        metavar="PREFIX",
        help="ingest signing key PREFIX.key and certificate PREFIX.cert (role ingest) that "
        "sign receipts (default: <home>/ingest)",
    )
    p.add_argument(
        "--create-keys",
        action="store_true",
        help="create the fleet root, the enrollment key pair and the ingest key and "
        "certificate in <home> when missing (never replaces a key) (default: off)",
    )
    p.add_argument(
        "--client-id",
        default="central-receiver",
        help="MQTT client id; keep it stable so the broker keeps the session (and queues "
        "chunks) while the receiver is away (default: %(default)s)",
    )
    p.add_argument(
        "--session-expiry",
        type=int,
        default=86400,
        metavar="S",
        help="seconds the broker keeps the session after a disconnect (default: %(default)s)",
    )
    p.add_argument(
        "--share-group",
        default=None,
        help="subscribe through $share/GROUP/ so several receivers (with one shared --store) "
        "split the fleet (default: no sharing)",
    )
    p.add_argument(
        "--retry",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds between retries of uploads held for a device without an approved key "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level on stderr (default: %(default)s)",
    )
    add_broker_args(p)
    sub = p.add_subparsers(dest="receive_command", metavar="{import}")
    imp = sub.add_parser("import", help="import packages exported to removable media, and exit")
    imp.add_argument("source", type=Path, metavar="DIR", help="the export's directory")
    imp.add_argument("--home", type=Path, default=argparse.SUPPRESS, help="as above")
    imp.add_argument("--store", type=Path, default=argparse.SUPPRESS, help="as above")


def run_import(args: argparse.Namespace, core: ReceiverCore) -> int:
    def progress(n: int, total: int, what: str) -> None:
        print(f"  [{n}/{total}] {what}", file=sys.stderr, flush=True)

    try:
        out = import_packages(core, args.source, progress=progress)
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    for r in out["packages"]:
        if r["outcome"] not in ("complete", "duplicate"):
            why = r.get("code") or r.get("reason", "")
            print(f"{r['device']}/{r['package_id']}: {r['outcome']} {why}".rstrip())
    counts = ", ".join(f"{v} {k}" for k, v in sorted(out["counts"].items())) or "nothing"
    print(f"imported from {args.source}: {counts}", flush=True)
    bad = set(out["counts"]) - {"complete", "duplicate", "held"}
    return EXIT_FAILED if bad else EXIT_OK


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    home = home_of(args)
    try:
        opts = broker_options(args)
        keys = (
            ensure_central_keys(home)
            if args.create_keys
            else load_central_keys(home, enrollment_dir=args.enrollment_key, signer=args.signer)
        )
        store = store_of(args)
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    core = ReceiverCore(
        store,
        keys.enrollment,
        keys.ingest,
        registry_device_keys(home),
        lambda _t, _p: False,
        prefix=opts.prefix,
        retry_s=args.retry,
        background=getattr(args, "receive_command", None) != "import",
    )
    if getattr(args, "receive_command", None) == "import":
        return run_import(args, core)
    receiver = Receiver(
        core,
        host=opts.host,
        port=opts.port,
        client_id=args.client_id,
        session_expiry_s=args.session_expiry,
        share_group=args.share_group,
        tls=opts.paho_tls(),
        insecure=opts.insecure,
    )
    stop = stop_on_signals()
    try:
        receiver.start()
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"receiving enrollment uploads on {opts.describe()} "
        f"({Topics.anyone(opts.prefix).uploads}), "
        f"store {store.root}",
        flush=True,
    )
    try:
        stop.wait()
    finally:
        receiver.stop()
    s = core.stats
    print(
        f"stopped: {s['complete']} complete, {s['rejected']} rejected, {s['chunks']} chunks, "
        f"{s['duplicates']} duplicates, {s['malformed']} malformed",
        flush=True,
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance fleet receive")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
