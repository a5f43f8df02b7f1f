"""``appliance enrollment export --to DIR``: sealed packages to removable media (docs/enrollment.md
"Export and import").

A mobile team back from a day without network can carry its queued packages to the centre
on a USB stick instead of waiting for a link. The export copies every package still waiting
for its receipt (upload states ``pending``, ``uploading``, ``uploaded``) to
``DIR/<device>/<package_id>.pkg`` and writes ``DIR/<device>/export.json`` (the list, with each
package's size and SHA-256, signed by nothing: the packages carry their own device
signatures). Only what the device itself signed leaves: each package is checked first (its
framing, the manifest naming this device, and the device signature with this kiosk's public
key, ``device.pub``); one that fails is reported and skipped. Nothing else is copied: no key
(the device's private key is never read), no plaintext (the records are sealed to the
centre's enrollment key), no database.

The packages stay queued on the kiosk: the export changes nothing there but a note per
package (``kv`` ``enrollment.exported.<id>``) and an audit line. When the centre has imported
them (``appliance fleet receive import DIR``), the kiosk's next upload attempt is answered
with the verdict and the signed receipt (the centre keeps one copy per package id), and the
kiosk purges as usual.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ApplianceError, TrustError
from ..protocol.codes import ErrorCode
from ..store import Store
from ..trust.keys import (
    DEVICE_PUB_FILE,
    DeviceSignature,
    atomic_write,
    load_public_key,
    verify_device_message,
)
from . import package as pk

EXPORT_TYPE = "appliance.enrollment-export.v1"
EXPORT_FILE = "export.json"
WAITING = ("pending", "uploading", "uploaded")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

Progress = Callable[[int, int, str], None]


def check_own_package(data: bytes, device_id: str, public_key: bytes) -> dict[str, Any]:
    """The manifest of a package this device signed; ``TrustError`` otherwise."""
    container = pk.decode_container(data)
    sig = DeviceSignature.from_header(container.signature)
    verify_device_message(public_key, container.manifest_bytes, sig)
    manifest = pk.manifest_of(container)
    if manifest.get("device") != device_id:
        raise TrustError(
            f"package names device {manifest.get('device')!r}, not {device_id!r}",
            code=ErrorCode.WRONG_DEVICE,
        )
    return manifest


def export_packages(
    store: Store,
    state_dir: Path,
    device_id: str,
    dest: Path,
    *,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Copy the packages waiting for a receipt to ``dest/<device>/``; returns what was done:
    ``{"directory", "exported": [ids], "skipped": [{package_id, reason}], "bytes"}``."""
    public_key = load_public_key(Path(state_dir) / DEVICE_PUB_FILE)
    with store.lock:
        rows = store.conn.execute(
            "SELECT package_id, path FROM enrollment_uploads WHERE state IN (?,?,?) "
            "ORDER BY created",
            WAITING,
        ).fetchall()
    out_dir = Path(dest) / device_id
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    listed: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    total = 0
    for n, (package_id, path) in enumerate(rows, start=1):
        try:
            data = Path(path).read_bytes()
            check_own_package(data, device_id, public_key)
            if pk.manifest_of(pk.decode_container(data)).get("package_id") != package_id:
                raise TrustError(
                    "the manifest names another package", code=ErrorCode.PACKAGE_MALFORMED
                )
        except (OSError, ApplianceError) as exc:
            reason = exc.message if isinstance(exc, ApplianceError) else str(exc)
            skipped.append({"package_id": package_id, "reason": reason})
            if progress is not None:
                progress(n, len(rows), f"{package_id} skipped: {reason}")
            continue
        atomic_write(out_dir / f"{package_id}.pkg", data, mode=0o600)
        listed.append(
            {
                "package_id": package_id,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
        total += len(data)
        store.kv_set(f"enrollment.exported.{package_id}", str(time.time()))
        if progress is not None:
            progress(n, len(rows), package_id)
    listing = {
        "typ": EXPORT_TYPE,
        "device": device_id,
        "exported_at": time.time(),
        "packages": listed,
    }
    atomic_write(out_dir / EXPORT_FILE, json.dumps(listing, indent=1).encode("utf-8"), mode=0o600)
    _sync_dir(out_dir)
    store.audit(
        "local",
        "enrollment.export",
        "done",
        directory=str(out_dir),
        packages=len(listed),
        skipped=len(skipped),
    )
    return {
        "directory": str(out_dir),
        "exported": [p["package_id"] for p in listed],
        "skipped": skipped,
        "bytes": total,
    }


def _sync_dir(path: Path) -> None:
    """Removable media are pulled out soon after: the directory entries reach the disk too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the command line ------------------------------------------------------------------------


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = p.add_subparsers(dest="enrollment_command", required=True, metavar="{export}")
    e = sub.add_parser("export", help="copy the packages waiting for a receipt to DIR")
    e.add_argument("--to", type=Path, required=True, metavar="DIR", help="e.g. a mounted USB")
    e.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("APPLIANCE_STATE_DIR", "/var/lib/appliance")),
        metavar="DIR",
        help="the kiosk's state directory (default: $APPLIANCE_STATE_DIR or /var/lib/appliance)",
    )
    e.add_argument(
        "--device-id",
        default=None,
        help="this kiosk's id (default: the id its queued packages name)",
    )


def _device_id(args: argparse.Namespace, store: Store) -> str:
    if args.device_id:
        return str(args.device_id)
    with store.lock:
        row = store.conn.execute(
            "SELECT path FROM enrollment_uploads ORDER BY created DESC LIMIT 1"
        ).fetchone()
    if row is not None:
        try:
            device = pk.manifest_of(pk.decode_container(Path(row[0]).read_bytes())).get("device")
        except (OSError, ApplianceError, ValueError):
            device = None
        if isinstance(device, str) and device:
            return device
    raise ApplianceError(
        "no package was ever queued here: give --device-id to write an empty export",
        code=ErrorCode.INVALID_ARGS,
    )


def run(args: argparse.Namespace) -> int:
    state = Path(args.state_dir)
    if not (state / DEVICE_PUB_FILE).exists():
        print(f"error (not_provisioned): no {DEVICE_PUB_FILE} in {state}", file=sys.stderr)
        return EXIT_USAGE
    try:
        store = Store(state)
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_FAILED

    def progress(n: int, total: int, what: str) -> None:
        print(f"  [{n}/{total}] {what}", file=sys.stderr, flush=True)

    try:
        device = _device_id(args, store)
        out = export_packages(store, state, device, args.to, progress=progress)
    except (ApplianceError, OSError) as exc:
        code = exc.code if isinstance(exc, ApplianceError) else ErrorCode.EXPORT_FAILED
        print(f"error ({code}): {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        store.close()
    print(
        f"exported {len(out['exported'])} package(s), {out['bytes']:,} bytes, to "
        f"{out['directory']}; {len(out['skipped'])} skipped. They stay queued on the kiosk "
        "until the centre's receipt."
    )
    return EXIT_OK if not out["skipped"] else EXIT_FAILED
