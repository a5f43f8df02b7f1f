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

Status, heartbeats and replies are parsed with the wire contract's models
(appliance/protocol/messages.py); a message that does not parse is skipped, named with its
fields on standard error and counted in the summary line.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
import uuid
from typing import Any

from ..errors import ApplianceError, MissingExtraError
from ..protocol.codes import ErrorCode
from ..protocol.messages import (
    MessageInvalid,
    ReplyMessage,
    StatusMessage,
    TelemetryMessage,
    parse_message,
)
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

log = logging.getLogger(__name__)


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


def _malformed(topic: str, exc: MessageInvalid, out: list[str] | None) -> None:
    if out is None:
        log.warning("%s: %s (%s; skipped)", topic, exc, ErrorCode.MALFORMED_MESSAGE)
    else:  # the caller reports them (run: on standard error)
        out.append(f"{topic}: {exc}")


def collect(
    args: argparse.Namespace, mqtt: FleetMqtt, prefix: str, malformed: list[str] | None = None
) -> list[dict[str, Any]]:
    """One row per kiosk; each message that does not parse is logged and appended to
    ``malformed`` (``topic: malformed KIND: field: reason``)."""
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
        parsed = parse(prefix, topic)
        if dev is None or parsed is None:
            continue
        status = parsed.kind is TopicKind.STATUS
        try:
            message: StatusMessage | TelemetryMessage = (
                parse_message(StatusMessage, msg.payload, "status")
                if status
                else parse_message(TelemetryMessage, msg.payload, "telemetry")
            )
        except MessageInvalid as exc:
            _malformed(topic, exc, malformed)
            continue
        row = rows.setdefault(dev, {"device": dev, "state": "never seen", "approved": False})
        if isinstance(message, StatusMessage):
            row["state"] = message.state
            row["version"] = message.version or row.get("version")
            row["site"] = message.site or row.get("site", "")
            row["health"] = _health(message.devices) if message.online else "-"
            row["signature"] = verify_from(keys, dev, msg).status
            if row["signature"] != "bad":  # a forged status says nothing about the kiosk
                seen = message.last_contact
                row["last_seen"] = max(row.get("last_seen") or 0, seen or 0) or None
            if not message.online and message.connected_at is not None:
                row["connected_at"] = message.connected_at
        else:
            row["outbox_depth"] = message.outbox_depth
            if verify_from(keys, dev, msg).status != "bad":
                row["last_seen"] = max(row.get("last_seen") or 0, message.ts) or None
    # The last contact a watcher recorded (fleet watch), later than a stale Last Will.
    for dev, ts in reg.last_seen().items():
        known = rows.get(dev)
        if known is not None and known.get("signature") != "bad" and known["state"] != "never seen":
            known["last_seen"] = max(known.get("last_seen") or 0, ts)
    if args.query:
        online = [r for r in rows.values() if r["state"] == "online"]
        _query(args, mqtt, prefix, online, malformed)
    return sorted(rows.values(), key=lambda r: r["device"])


def _query(
    args: argparse.Namespace,
    mqtt: FleetMqtt,
    prefix: str,
    rows: list[dict[str, Any]],
    malformed: list[str] | None = None,
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
            reply = parse_message(ReplyMessage, msg.payload, "reply")
        except MessageInvalid as exc:
            _malformed(msg.topic, exc, malformed)
            continue
        found: dict[str, Any] | None = pending.pop(str(reply.id), None)
        if found is None:
            continue
        row = found
        if reply.ok:
            row["outbox_depth"] = (reply.result or {}).get("outbox_depth")
            row["last_seen"] = time.time()
        elif reply.error is not None:
            row["query_error"] = reply.error.code


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
    malformed: list[str] = []
    try:
        if getattr(args, "db", None):
            rows = from_service(args.db)
        else:
            opts = broker_options(args)
            with FleetMqtt(opts) as mqtt:
                rows = collect(args, mqtt, opts.prefix, malformed)
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    if malformed:
        print(
            f"{len(malformed)} malformed message(s) skipped ({ErrorCode.MALFORMED_MESSAGE}):\n  "
            + "\n  ".join(malformed),
            file=sys.stderr,
        )
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
    print(
        f"{len(rows)} device(s), {online} online"
        + (f", {len(malformed)} malformed message(s) skipped" if malformed else "")
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance fleet devices")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
