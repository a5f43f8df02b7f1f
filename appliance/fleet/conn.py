"""The fleet tools' MQTT connection: broker options from flags and ``<home>/fleet.toml``, over
the small paho MQTT 5 client of :mod:`appliance.mqttclient` (re-exported here: ``FleetMqtt``,
``BrokerOptions``, ``Message``, ``FleetConnectionError``, ``release``).

Every fleet tool (``approve``, ``devices``, ``send``, ``push-config``, ``watch``,
``controller``) talks to the real broker through :class:`FleetMqtt`. With the broker of
``provisioning/`` (mutual TLS, ACLs keyed on the certificate CN) the tools connect with the
``controller`` certificate; ``--ca``/``--cert``/``--key`` name its files.

``<home>/fleet.toml`` (optional) holds the defaults so an administrator does not repeat them::

    [broker]
    host = "mqtt.fleet.example"
    port = 8883
    prefix = "kiosk"
    ca_file = "/etc/fleet/ca.crt"
    cert_file = "/etc/fleet/controller.crt"
    key_file = "/etc/fleet/controller.key"
"""

from __future__ import annotations

import argparse
import logging
import os
import tomllib
from pathlib import Path
from typing import Any

from ..config import parse_broker_address
from ..errors import ConfigError
from ..mqttclient import (
    BrokerOptions,
    FleetConnectionError,
    FleetMqtt,
    Message,
    release,
)
from ..protocol.topics import validate_segment

log = logging.getLogger(__name__)

FLEET_CONFIG = "fleet.toml"
DEFAULT_HOME = "~/.appliance-fleet"


def default_home() -> Path:
    return Path(os.environ.get("APPLIANCE_FLEET_HOME", DEFAULT_HOME)).expanduser()


def add_home_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--home",
        type=Path,
        default=None,
        help="fleet home directory: root key, approved devices, claim tokens, fleet.toml "
        "(default: $APPLIANCE_FLEET_HOME or ~/.appliance-fleet)",
    )


def add_broker_args(p: argparse.ArgumentParser) -> None:
    """Broker flags shared by every fleet tool; unset flags fall back to ``fleet.toml``."""
    g = p.add_argument_group("broker (defaults from <home>/fleet.toml [broker], else shown)")
    g.add_argument("--host", help="broker host name or address (default 127.0.0.1)")
    g.add_argument("--port", type=int, help="broker port (default 1883; 8883 is usual with TLS)")
    g.add_argument(
        "--broker",
        action="append",
        metavar="HOST:PORT",
        help="a broker of a cluster, repeatable: the first that answers is used (replaces "
        "--host/--port; fleet.toml: brokers = [...])",
    )
    g.add_argument("--prefix", help="topic prefix of the fleet (default kiosk)")
    g.add_argument("--ca", type=Path, metavar="FILE", help="CA certificate: enables TLS")
    g.add_argument(
        "--cert", type=Path, metavar="FILE", help="client certificate (the 'controller' one)"
    )
    g.add_argument("--key", type=Path, metavar="FILE", help="client certificate's key (0600)")
    g.add_argument(
        "--insecure",
        action="store_true",
        help="skip the broker host name check (testing only)",
    )


def home_of(args: argparse.Namespace) -> Path:
    home = getattr(args, "home", None)
    return Path(home).expanduser() if home else default_home()


def read_fleet_config(home: Path) -> dict[str, Any]:
    path = home / FLEET_CONFIG
    if not path.exists():
        return {}
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path} unreadable", [(str(path), str(exc))]) from None
    return data


def broker_options(args: argparse.Namespace) -> BrokerOptions:
    """Flags over ``<home>/fleet.toml`` over built-in defaults; a bad value is a ConfigError."""
    cfg = read_fleet_config(home_of(args)).get("broker", {})
    if not isinstance(cfg, dict):
        raise ConfigError("fleet.toml: [broker] must be a table", [("broker", "not a table")])
    known = {"host", "port", "prefix", "ca_file", "cert_file", "key_file", "insecure", "brokers"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(
            "fleet.toml: unknown keys", [(f"broker.{k}", "unknown key") for k in unknown]
        )

    def pick(flag: str, key: str, default: Any) -> Any:
        value = getattr(args, flag, None)
        return value if value not in (None, False) else cfg.get(key, default)

    def path(flag: str, key: str) -> Path | None:
        v = pick(flag, key, None)
        return Path(v).expanduser() if v else None

    port = pick("port", "port", 1883)
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError("bad broker port", [("broker.port", f"{port!r} is not 1-65535")])
    prefix = str(pick("prefix", "prefix", "kiosk"))
    try:
        validate_segment(prefix, "topic prefix")
    except ValueError as exc:
        raise ConfigError("bad topic prefix", [("broker.prefix", str(exc))]) from None
    host = str(pick("host", "host", "127.0.0.1"))
    endpoints = _brokers(getattr(args, "broker", None) or cfg.get("brokers"), port)
    if endpoints:
        (host, port), *alternates = endpoints
    return BrokerOptions(
        host=host,
        port=port,
        alternates=tuple(alternates) if endpoints else (),
        prefix=prefix,
        ca_file=path("ca", "ca_file"),
        cert_file=path("cert", "cert_file"),
        key_file=path("key", "key_file"),
        insecure=bool(pick("insecure", "insecure", False)),
    )


def _brokers(value: Any, default_port: int) -> list[tuple[str, int]]:
    """``--broker``/``brokers`` ("host:port" strings, as the kiosk's ``mqtt.brokers``)."""
    if value is None:
        return []
    if not isinstance(value, list) or not value:
        raise ConfigError("bad broker list", [("broker.brokers", "must be a non-empty list")])
    out = []
    for i, item in enumerate(value):
        try:
            parsed = parse_broker_address(item)
            if not isinstance(parsed, dict):
                raise ValueError(f'{item!r} is not a "host:port" string')
        except ValueError as exc:
            raise ConfigError("bad broker list", [(f"broker.brokers.{i}", str(exc))]) from None
        out.append((str(parsed["host"]), int(parsed["port"] or default_port)))
    return out


__all__ = [
    "DEFAULT_HOME",
    "FLEET_CONFIG",
    "BrokerOptions",
    "FleetConnectionError",
    "FleetMqtt",
    "Message",
    "add_broker_args",
    "add_home_arg",
    "broker_options",
    "default_home",
    "home_of",
    "read_fleet_config",
    "release",
]
