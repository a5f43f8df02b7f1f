"""What the fleet tools share: the signing key, verification of device signatures with the
keys of approved devices, reading retained state, command arguments."""

from __future__ import annotations

import argparse
import json
import os
import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ApplianceError, TrustError
from ..protocol.codes import ErrorCode
from ..protocol.topics import TopicKind, parse
from ..trust.certs import OperatorKey
from ..trust.keys import DeviceSignature, verify_device_message
from .conn import FleetMqtt, Message, home_of
from .registry import FleetRegistry

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNVERIFIED, EXIT_TIMEOUT = 0, 1, 2, 3, 4


def add_signer_arg(p: argparse.ArgumentParser, default_name: str) -> None:
    p.add_argument(
        "--signer",
        metavar="PREFIX",
        help="signing key PREFIX.key (0600) and its certificate PREFIX.cert, as made by "
        "'appliance fleet keys issue-operator --generate-key DIR --name NAME' (DIR/NAME); "
        f"default: $APPLIANCE_FLEET_SIGNER or <home>/{default_name}",
    )


def load_signer(args: argparse.Namespace, default_name: str) -> OperatorKey:
    prefix = args.signer or os.environ.get("APPLIANCE_FLEET_SIGNER")
    base = Path(prefix).expanduser() if prefix else home_of(args) / default_name
    key = base.parent / f"{base.name}.key"
    cert = base.parent / f"{base.name}.cert"
    if not key.exists():
        raise TrustError(
            f"no signing key {key}: issue one with 'appliance fleet keys issue-operator "
            f"--generate-key {base.parent} --name {base.name} --role ...' or give --signer",
            code=ErrorCode.KEY_MISSING,
        )
    return OperatorKey.load(key, cert)


@dataclass(frozen=True)
class Verification:
    """A device signature's status: ``ok``, ``bad`` (wrong or missing signature from a known
    device), or ``unknown`` (no approved key for the device)."""

    status: str
    detail: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def verify_from(keys: dict[str, bytes], device: str, msg: Message) -> Verification:
    pub = keys.get(device)
    if pub is None:
        return Verification("unknown", f"{device} is not an approved device of this fleet home")
    header = msg.user_properties.get("sig")
    if header is None:
        return Verification("bad", "no device signature on the message")
    try:
        verify_device_message(pub, msg.payload, DeviceSignature.from_header(header))
    except TrustError as exc:
        return Verification("bad", f"{exc.code}: {exc.message}")
    return Verification("ok", "signed by the device key approved for it")


#: Topics whose second level is not a device.
NOT_A_DEVICE = frozenset(
    {
        TopicKind.GROUP_CMD,
        TopicKind.CLAIM_REQUEST,
        TopicKind.CLAIM_RESPONSE,
        TopicKind.CONTROLLER_REPLY,
    }
)


def device_of(topic: str, prefix: str) -> str | None:
    """The device a topic of the tree belongs to (None: a group, claim or controller topic, or
    a topic outside the tree)."""
    parsed = parse(prefix, topic)
    if parsed is None or parsed.kind in NOT_A_DEVICE:
        return None
    return parsed.device


def registry(args: argparse.Namespace) -> FleetRegistry:
    return FleetRegistry(home_of(args))


def collect_retained(mqtt: FleetMqtt, filters: list[str], listen_s: float) -> dict[str, Message]:
    """topic -> the retained (or first live) message on each topic matching ``filters``,
    collected for ``listen_s`` seconds after the SUBACK (retained messages follow it at once)."""
    queues = [mqtt.collector(f) for f in filters]
    mqtt.subscribe(filters)
    out: dict[str, Message] = {}
    deadline = time.monotonic() + listen_s
    while True:
        got = False
        for q in queues:
            try:
                m = q.get_nowait()
            except queue.Empty:
                continue
            got = True
            if m.payload:
                out.setdefault(m.topic, m)
        if not got:
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            time.sleep(min(0.02, left))


def parse_args_words(words: list[str]) -> dict[str, Any]:
    """``'{"echo": "x"}'`` or ``key=value ...`` (values parsed as JSON when they parse)."""
    if not words:
        return {}
    if len(words) == 1 and words[0].lstrip().startswith("{"):
        try:
            obj = json.loads(words[0])
        except ValueError as exc:
            raise ApplianceError(f"ARGS is not valid JSON: {exc}", code=ErrorCode.USAGE) from None
        if not isinstance(obj, dict):
            raise ApplianceError("ARGS must be a JSON object", code=ErrorCode.USAGE)
        return obj
    out: dict[str, Any] = {}
    for w in words:
        k, sep, v = w.partition("=")
        if not sep or not k:
            raise ApplianceError(
                f"argument {w!r}: use key=value, or one JSON object", code=ErrorCode.USAGE
            )
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def ago(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "-"
    d = max(0.0, (time.time() if now is None else now) - ts)
    if d < 120:
        return f"{d:.0f}s ago"
    if d < 7200:
        return f"{d / 60:.0f}m ago"
    if d < 172800:
        return f"{d / 3600:.0f}h ago"
    return f"{d / 86400:.0f}d ago"
