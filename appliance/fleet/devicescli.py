"""``appliance fleet devices``: the fleet at a glance, from the broker's retained status.

One row per kiosk that has a retained status on ``{prefix}/+/status`` or is approved in the
fleet home: online / offline (clean shutdown) / lost (the broker sent its Last Will) / never
seen, software version, device health, last seen, outbox depth, site, and whether the status
carries a valid signature of the device's approved key.

Every status is signed by the kiosk, the Last Will too (signed when the kiosk connected), so a
kiosk that stopped or was lost shows ``ok`` in SIG; ``bad`` means a forged or altered status.
LAST SEEN is the kiosk's last contact known here: the birth's time, the stop time of a clean
stop, the connect time written into the Last Will, or a later heartbeat heard while listening
or recorded by ``fleet watch`` in the fleet home (``seen.json``).

The retained status does not carry the outbox depth; it is filled from heartbeats seen while
listening, or, with ``--query``, from a signed ``status`` command to every online kiosk
(needs an operator key, ``--signer``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import uuid
from typing import Any

from ..errors import ApplianceError, MissingExtraError
from ..protocol.topics import TopicKind, Topics, parse
from ..trust.envelope import EnvelopeBuilder
from .conn import FleetMqtt, add_broker_args, add_home_arg, broker_options
from .tools import (
    EXIT_FAILED,
    EXIT_OK,
    add_signer_arg,
    ago,
    collect_retained,
    device_of,
    load_signer,
    registry,
    verify_from,
)
from .watch import status_last_seen, status_state


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_home_arg(p)
    p.add_argument(
        "--listen",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds to collect retained status and heartbeats (default %(default)s)",
    )
    p.add_argument(
        "--query",
        action="store_true",
        help="ask every online kiosk for its status (outbox depth) with a signed command",
    )
    add_signer_arg(p, "operator")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--db",
        metavar="URL",
        default=os.environ.get("APPLIANCE_FLEET_DB"),
        help="read the fleet from the fleet service's database (sqlite:///PATH or "
        "postgresql://...) instead of the broker (default $APPLIANCE_FLEET_DB)",
    )
    add_broker_args(p)


def _health(devices: Any) -> str:
    if not isinstance(devices, dict) or not devices:
        return "-"
    bad = [f"{k}:{v}" for k, v in devices.items() if v not in ("ok", "disabled")]
    return "ok" if not bad else " ".join(bad)


def collect(args: argparse.Namespace, mqtt: FleetMqtt, prefix: str) -> list[dict[str, Any]]:
    reg = registry(args)
    keys = reg.device_keys()
    every = Topics.anyone(prefix)
    msgs = collect_retained(mqtt, [every.status, every.telemetry], args.listen)
    rows: dict[str, dict[str, Any]] = {}
    for rec in reg.devices():
        rows[rec.device_id] = {
            "device": rec.device_id,
            "state": "never seen",
            "site": rec.site,
            "approved": True,
        }
    for topic, msg in msgs.items():
        dev = device_of(topic, prefix)
        if dev is None:
            continue
        try:
            body = json.loads(msg.payload)
        except ValueError:
            continue
        if not isinstance(body, dict):
            continue
        row = rows.setdefault(dev, {"device": dev, "state": "never seen", "approved": False})
        parsed = parse(prefix, topic)
        if parsed is not None and parsed.kind is TopicKind.STATUS:
            online = body.get("online") is True
            row["state"] = status_state(body)
            row["version"] = body.get("version", row.get("version"))
            row["site"] = body.get("site", row.get("site", ""))
            row["health"] = _health(body.get("devices")) if online else "-"
            row["signature"] = verify_from(keys, dev, msg).status
            if row["signature"] != "bad":  # a forged status says nothing about the kiosk
                seen = status_last_seen(body)
                row["last_seen"] = max(row.get("last_seen") or 0, seen or 0) or None
            if not online and isinstance(body.get("connected_at"), int | float):
                row["connected_at"] = body["connected_at"]
        elif "outbox_depth" in body:
            row["outbox_depth"] = body["outbox_depth"]
            if verify_from(keys, dev, msg).status != "bad":
                row["last_seen"] = max(row.get("last_seen") or 0, body.get("ts") or 0) or None
    # The last contact a watcher recorded (fleet watch), later than a stale Last Will.
    for dev, ts in reg.last_seen().items():
        known = rows.get(dev)
        if known is not None and known.get("signature") != "bad" and known["state"] != "never seen":
            known["last_seen"] = max(known.get("last_seen") or 0, ts)
    if args.query:
        _query(args, mqtt, prefix, [r for r in rows.values() if r["state"] == "online"])
    return sorted(rows.values(), key=lambda r: r["device"])


def _query(
    args: argparse.Namespace, mqtt: FleetMqtt, prefix: str, rows: list[dict[str, Any]]
) -> None:
    if not rows:
        return
    builder = EnvelopeBuilder(load_signer(args, "operator"), lifetime_s=60)
    pending: dict[str, dict[str, Any]] = {}
    every = Topics.anyone(prefix)
    q = mqtt.collector(every.reply)
    mqtt.subscribe([every.reply])
    for row in rows:
        dev = row["device"]
        cid = f"fleet-status-{uuid.uuid4().hex[:12]}"
        req = json.dumps({"id": cid, "cmd": "status", "args": {}}).encode()
        mqtt.publish(
            Topics(prefix, dev).cmd,
            builder.build("status", req, dev),
            response_topic=Topics(prefix, dev).reply,
            correlation_data=cid.encode(),
            expiry_s=60,
        )
        pending[cid] = row
    deadline = time.monotonic() + 10
    while pending and time.monotonic() < deadline:
        try:
            msg = q.get(timeout=max(0.0, deadline - time.monotonic()))
        except Exception:  # noqa: S112 - queue.Empty: the deadline decides
            continue
        try:
            reply = json.loads(msg.payload)
        except ValueError:
            continue
        found: dict[str, Any] | None = pending.pop(str(reply.get("id")), None)
        if found is None:
            continue
        row = found
        if reply.get("ok"):
            row["outbox_depth"] = reply["result"].get("outbox_depth")
            row["last_seen"] = time.time()
        else:
            row["query_error"] = (reply.get("error") or {}).get("code")


def from_service(url: str) -> list[dict[str, Any]]:
    """The rows of the fleet service's database (docs/fleet-service.md). Loaded by name: the
    service imports the fleet tools, never the other way round (import contracts)."""
    try:
        service_db = importlib.import_module("appliance.fleetsvc.db")
    except ImportError as exc:
        raise MissingExtraError("fleet service database", "fleet-service", str(exc.name)) from None
    db = service_db.FleetDB(url)
    try:
        return list(db.device_rows())
    finally:
        db.close()


def run(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "db", None):
            rows = from_service(args.db)
        else:
            opts = broker_options(args)
            with FleetMqtt(opts) as mqtt:
                rows = collect(args, mqtt, opts.prefix)
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    hdr = ("DEVICE", "STATE", "VERSION", "HEALTH", "LAST SEEN", "OUTBOX", "SIG", "SITE")
    table = [hdr] + [
        (
            r["device"],
            r["state"],
            str(r.get("version") or "-"),
            r.get("health", "-"),
            ago(r.get("last_seen")),
            str(r.get("outbox_depth", "-") if r.get("outbox_depth") is not None else "-"),
            r.get("signature", "-"),
            r.get("site") or "-",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(hdr))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    online = sum(1 for r in rows if r["state"] == "online")
    print(f"{len(rows)} device(s), {online} online")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance fleet devices")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
