"""``appliance fleet send TARGET CMD [ARGS]``: sign a command, send it, wait for the reply and
verify the device's signature on it.

TARGET is a device id or ``group:NAME``. ARGS is one JSON object (``'{"echo": "hi"}'``) or
``key=value`` words (values read as JSON when they parse: ``count=3 on=true name=x``).

The command is wrapped in a signed envelope (docs/trust.md) with the operator key given by
``--signer``; the kiosk checks chain, role, target, expiry and replay. Each reply must carry
the device's signature made with the key approved for it (``appliance fleet approve``); a
missing or wrong signature is reported and makes the exit status 3.

A device's reply comes on ``{prefix}/DEVICE/reply`` (the only reply topic the broker's ACL
lets a kiosk write); group replies come from every member on its own reply topic.

Exit status: 0 every reply ok and verified; 1 a command failed (its error code is shown);
2 bad usage; 3 a reply's signature did not verify; 4 no reply in time.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import time
import uuid
from typing import Any

from ..errors import ApplianceError
from ..protocol.codes import ErrorCode
from ..protocol.messages import MessageInvalid, ReplyMessage, parse_message
from ..protocol.topics import Topics
from ..trust.envelope import GROUP_PREFIX, EnvelopeBuilder, validate_target
from .conn import FleetMqtt, Message, add_broker_args, add_home_arg, broker_options
from .tools import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNVERIFIED,
    EXIT_USAGE,
    add_signer_arg,
    device_of,
    load_signer,
    parse_args_words,
    registry,
    verify_from,
)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("target", metavar="TARGET", help="device id or group:NAME")
    p.add_argument("command_name", metavar="CMD", help="command name, e.g. ping, status, note")
    p.add_argument("args", nargs="*", metavar="ARGS", help="JSON object or key=value words")
    add_home_arg(p)
    add_signer_arg(p, "operator")
    p.add_argument(
        "--timeout",
        type=float,
        default=15.0,
        help="seconds to wait for the reply (a group: for all known members) (default %(default)s)",
    )
    p.add_argument(
        "--lifetime",
        type=int,
        default=120,
        help="seconds the signed command stays valid; also its MQTT message expiry, so a "
        "kiosk that is offline longer never runs it (default %(default)s)",
    )
    p.add_argument("--id", dest="cid", help="command id (default: a fresh unique one)")
    p.add_argument("--json", action="store_true", help="print the replies as JSON lines")
    p.add_argument(
        "--unsigned",
        action="store_true",
        help="send a plain request (only kiosks with commands.allow_unsigned, i.e. "
        "development kits, accept it)",
    )
    add_broker_args(p)


def run(args: argparse.Namespace) -> int:
    try:
        validate_target(args.target)
        cmd_args = parse_args_words(args.args)
        opts = broker_options(args)
        signer = None if args.unsigned else load_signer(args, "operator")
        reg = registry(args)
        keys = reg.device_keys()
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    cid = args.cid or f"fleet-{uuid.uuid4().hex[:16]}"
    request = json.dumps({"id": cid, "cmd": args.command_name, "args": cmd_args}).encode()
    group = args.target[len(GROUP_PREFIX) :] if args.target.startswith(GROUP_PREFIX) else None
    try:
        payload = (
            request
            if signer is None
            else EnvelopeBuilder(signer, lifetime_s=args.lifetime).build(
                args.command_name, request, args.target
            )
        )
        mqtt = FleetMqtt(opts).connect()
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_FAILED if exc.code != ErrorCode.INVALID_NAME else EXIT_USAGE
    try:
        if group is None:
            return _one(args, mqtt, opts.prefix, payload, cid, keys)
        return _group(args, mqtt, opts.prefix, group, payload, cid, keys, reg.members(group))
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        mqtt.close()


def _parse_reply(msg: Message) -> ReplyMessage | MessageInvalid:
    """The reply parsed with the contract's model, once; what is wrong with it if it does not
    parse (reported as ``malformed_message``, naming the fields)."""
    try:
        return parse_message(ReplyMessage, msg.payload, "reply")
    except MessageInvalid as exc:
        return exc


def _report(
    args: argparse.Namespace,
    device: str,
    msg: Message,
    keys: dict[str, bytes],
    reply: ReplyMessage | MessageInvalid,
) -> tuple[bool, bool]:
    """Print one reply; returns (ok, verified)."""
    v = verify_from(keys, device, msg)
    if isinstance(reply, MessageInvalid):
        out: dict[str, Any] = {
            "ok": False,
            "error": {
                "code": ErrorCode.MALFORMED_MESSAGE,
                "message": str(reply),
                "details": {"problems": reply.problems, "payload": repr(msg.payload[:200])},
            },
        }
    else:
        out = reply.model_dump(mode="json", exclude_unset=True)
    ok = out.get("ok") is True
    if args.json:
        print(json.dumps({"device": device, "verified": v.status, "reply": out}), flush=True)
    else:
        mark = {"ok": "verified", "bad": "SIGNATURE INVALID", "unknown": "unverified"}[v.status]
        head = f"{device}: {'ok' if ok else 'FAILED'} [{mark}]"
        if ok:
            print(f"{head}\n{json.dumps(out.get('result'), indent=2, ensure_ascii=False)}")
        else:
            err = out.get("error") or {}
            print(f"{head} {err.get('code')}: {err.get('message')}")
            if err.get("details"):
                print(json.dumps(err["details"], indent=2, ensure_ascii=False))
        if not v.ok:
            print(f"  signature: {v.detail}", file=sys.stderr)
    return ok, v.ok


def _one(
    args: argparse.Namespace,
    mqtt: FleetMqtt,
    prefix: str,
    payload: bytes,
    cid: str,
    keys: dict[str, bytes],
) -> int:
    device = args.target
    topics = Topics(prefix, device)
    reply_topic = topics.reply
    q = mqtt.collector(reply_topic)
    mqtt.subscribe([reply_topic])
    corr = uuid.uuid4().bytes
    mqtt.publish(
        topics.cmd,
        payload,
        response_topic=reply_topic,
        correlation_data=corr,
        expiry_s=args.lifetime,
    )
    deadline = time.monotonic() + args.timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            print(
                f"no reply from {device} within {args.timeout:g} s (offline? 'appliance fleet "
                "devices' shows who is online)",
                file=sys.stderr,
            )
            return EXIT_TIMEOUT
        try:
            msg = q.get(timeout=left)
        except queue.Empty:
            continue
        reply = _parse_reply(msg)
        if msg.correlation_data != corr and _reply_id(reply) != cid:
            continue
        ok, verified = _report(args, device, msg, keys, reply)
        if not verified:
            return EXIT_UNVERIFIED
        return EXIT_OK if ok else EXIT_FAILED


def _reply_id(reply: ReplyMessage | MessageInvalid) -> str | None:
    return None if isinstance(reply, MessageInvalid) else reply.id


def _group(
    args: argparse.Namespace,
    mqtt: FleetMqtt,
    prefix: str,
    group: str,
    payload: bytes,
    cid: str,
    keys: dict[str, bytes],
    members: list[str],
) -> int:
    every = Topics.anyone(prefix)
    q = mqtt.collector(every.reply)
    mqtt.subscribe([every.reply])
    mqtt.publish(every.group_cmd(group), payload, expiry_s=args.lifetime)
    seen: dict[str, tuple[bool, bool]] = {}
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline and not (members and set(members) <= set(seen)):
        try:
            msg = q.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        device = device_of(msg.topic, prefix)
        if device is None or device in seen:
            continue
        reply = _parse_reply(msg)
        if _reply_id(reply) != cid:
            continue
        seen[device] = _report(args, device, msg, keys, reply)
    missing = sorted(set(members) - set(seen))
    print(
        f"group {group}: {len(seen)} replied"
        + (f", no reply from {', '.join(missing)}" if missing else ""),
        file=sys.stderr,
    )
    if not all(v for _ok, v in seen.values()):
        return EXIT_UNVERIFIED
    if missing or not seen:
        return EXIT_TIMEOUT
    return EXIT_OK if all(ok for ok, _v in seen.values()) else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance fleet send")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
