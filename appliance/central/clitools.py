"""What ``appliance fleet enroll`` and ``appliance fleet issue`` share: the kiosk connection
(signed or unsigned commands, device keys of the fleet home) and the document signer."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import TrustError
from ..fleet.conn import FleetMqtt, add_broker_args, add_home_arg, broker_options, home_of
from ..fleet.registry import DeviceRecord, FleetRegistry
from ..fleet.tools import add_signer_arg, load_signer
from ..protocol.codes import ErrorCode
from ..trust.keys import key_id, load_public_key
from .commander import Commander
from .receivecli import add_store_arg


def add_kiosk_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("device", metavar="DEVICE", help="the kiosk's device id")
    add_home_arg(p)
    add_store_arg(p)
    add_signer_arg(p, "operator")
    p.add_argument(
        "--unsigned",
        action="store_true",
        help="send plain commands (only kiosks with commands.allow_unsigned, i.e. the "
        "simulated kit, accept them) (default: signed with --signer)",
    )
    p.add_argument(
        "--register-device-key",
        type=Path,
        default=None,
        metavar="FILE",
        help="approve the kiosk's public key (its <state>/device.pub) in the fleet home "
        "first, for a development kit that was never provisioned (default: the device must "
        "be approved already)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_broker_args(p)


def register_device_key(home: Path, device: str, pub_path: Path) -> None:
    """Record ``device``'s key in the fleet registry (a dev kit that skipped provisioning)."""
    reg = FleetRegistry(home)
    public = load_public_key(pub_path)
    existing = reg.device(device)
    if existing is not None:
        if existing.public_key_bytes == public:
            return
        raise TrustError(
            f"{device} is already approved with another key ({existing.key_id}); a kiosk's "
            f"key is never replaced silently: remove {home / 'devices' / (device + '.json')} "
            "first if the kiosk really was re-keyed",
            code=ErrorCode.KEY_EXISTS,
        )
    text = pub_path.read_text(encoding="ascii").strip()
    reg.save_device(
        DeviceRecord(
            device_id=device,
            public_key=text,
            key_id=key_id(public),
            approved_by="appliance fleet enroll --register-device-key",
        )
    )


def connect(args: argparse.Namespace) -> tuple[FleetMqtt, Commander]:
    """Broker connection and a commander for ``args.device`` (raises ApplianceError)."""
    home = home_of(args)
    if args.register_device_key is not None:
        register_device_key(home, args.device, args.register_device_key)
    opts = broker_options(args)
    signer = None if args.unsigned else load_signer(args, "operator")
    keys = FleetRegistry(home).device_keys()
    mqtt = FleetMqtt(opts).connect()
    try:
        return mqtt, Commander(
            mqtt, args.device, prefix=opts.prefix, signer=signer, device_keys=keys
        )
    except BaseException:
        mqtt.close()
        raise
