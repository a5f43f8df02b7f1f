"""The central half of the one-command demo (README's main command;
``appliance/devtools/demo.py`` calls these two functions).

1. :func:`prepare` before the kiosk starts: creates the fleet home's central keys and returns
   the ``[trust]`` lines the kiosk's configuration needs (seal to the centre's enrollment key,
   accept receipts signed under the fleet root).
2. :func:`enroll_and_issue` once the kiosk is online and healthy: runs ``appliance fleet enroll
   --issue --synthetic`` with a receiver inside, and prints the summary (steps, qualities,
   timings, the centre's verification, the receipt and purge, the card issued and verified).
   Returns its exit status. On the production path (``broker`` flags with TLS) the kiosk was
   approved by its claim, the commands are signed with ``<home>/operator`` and the receiver
   inside connects as ``central``; ``dev=True`` (``appliance demo --dev``) registers the
   unprovisioned kit's device key and sends unsigned commands over plain MQTT.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..trust.certs import ROOT_PUB_FILE
from ..trust.sealed import ENROLLMENT_PUB_FILE
from .keys import ensure_central_keys


def prepare(home: Path) -> str:
    """Create the central keys in ``home`` (idempotent); the kiosk's ``[trust]`` TOML."""
    home = Path(home).resolve()
    ensure_central_keys(home)
    return (
        f'[trust]\nroot_keys = ["{home / ROOT_PUB_FILE}"]\n'
        f'enrollment_key = "{home / ENROLLMENT_PUB_FILE}"\n'
    )


def enroll_and_issue(
    home: Path,
    *,
    device: str,
    state_dir: Path,
    port: int,
    host: str = "127.0.0.1",
    broker: list[str] | None = None,
    dev: bool = False,
    citizen_ref: str = "CIT-DEMO-0001",
    issue: bool = True,
    extra: list[str] | None = None,
) -> int:
    """Run the scripted enrollment (and issuance) against the simulated kit; prints the
    summary and returns ``appliance fleet enroll``'s exit status. ``broker``: the fleet
    tools' broker flags (``--host --port --ca --cert --key``), else plain ``host``/``port``."""
    from . import enrollcli

    argv = [device, "--home", str(home)]
    argv += broker if broker is not None else ["--host", host, "--port", str(port)]
    if dev:
        argv += ["--unsigned", "--register-device-key", str(Path(state_dir) / "device.pub")]
    argv += [
        "--citizen-ref",
        citizen_ref,
        "--exception",
        "10:missing",
        "--skip",
        "6:bandaged",
    ]
    if issue:
        argv += ["--issue", "--synthetic", "--ds-dir", str(Path(state_dir) / "sim" / "pki")]
    parser = argparse.ArgumentParser(prog="appliance fleet enroll")
    enrollcli.configure_parser(parser)
    return enrollcli.run(parser.parse_args(argv + list(extra or [])))
