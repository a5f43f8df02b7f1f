"""The central half of the one-command demo (README's main command; the lead's
``appliance/devtools/demo.py`` calls these two functions).

1. :func:`prepare` before the kiosk starts: creates the fleet home's central keys and returns
   the ``[trust]`` lines the kiosk's configuration needs (seal to the centre's enrollment key,
   accept receipts signed under the fleet root).
2. :func:`enroll_and_issue` once the kiosk is online and healthy: approves the simulated kit's
   device key in the fleet home, runs ``appliance fleet enroll --issue --synthetic`` with a
   receiver inside, and prints the summary (steps, qualities, timings, the centre's
   verification, the receipt and purge, the card issued and verified). Returns its exit status.
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
    citizen_ref: str = "CIT-DEMO-0001",
    issue: bool = True,
    extra: list[str] | None = None,
) -> int:
    """Run the scripted enrollment (and issuance) against the simulated kit; prints the
    summary and returns ``appliance fleet enroll``'s exit status."""
    from . import enrollcli

    argv = [
        device,
        "--home",
        str(home),
        "--host",
        host,
        "--port",
        str(port),
        "--unsigned",
        "--register-device-key",
        str(Path(state_dir) / "device.pub"),
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
