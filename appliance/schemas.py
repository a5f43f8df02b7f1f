"""Generate the protocol's JSON Schemas (docs/schemas/) from the pydantic models.

One file per message (``message.<name>.json``) and per command's arguments
(``command.<name>.json``). A test checks that the committed files are current.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Any

from . import builtin
from .commands import CommandRegistry
from .config import AppConfig
from .drivers import create_device
from .protocol import MESSAGES

log = logging.getLogger(__name__)

CAPABILITIES = ("camera", "fingerprint", "card")


def full_registry() -> CommandRegistry:
    """Every command the daemon can serve. Devices are constructed from the default
    configuration but never started (construction does no I/O), so this needs no hardware;
    handlers are not called, only names and argument models are read."""
    registry = CommandRegistry()
    builtin.register(registry)
    defaults = AppConfig()
    for kind in CAPABILITIES:
        try:
            mod = importlib.import_module(f"appliance.drivers.{kind}.commands")
        except ModuleNotFoundError:
            continue
        section = getattr(defaults.hardware, kind)
        device = create_device(kind, section.backend, section, lambda *_a: None)
        mod.register(registry, device)
    from .enrollment.session import EnrollmentManager
    from .enrollment.session import register as register_enrollment

    # The session commands: an uninitialised manager lends its bound methods (their names and
    # docstrings) without opening a store or a device; handlers are never called here.
    register_enrollment(registry, EnrollmentManager.__new__(EnrollmentManager))
    from .citizen.lookup import LookupClient
    from .citizen.lookup import register as register_lookup

    register_lookup(registry, LookupClient.__new__(LookupClient))
    return registry


def generate() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, model in MESSAGES.items():
        out[f"message.{name}.json"] = model.model_json_schema()
    for spec in full_registry().specs():
        schema = spec.args_model.model_json_schema()
        schema["title"] = f"{spec.name} arguments"
        schema["description"] = spec.summary or schema.get("description", "")
        schema["x-timeout-s"] = spec.timeout_s
        schema["x-role"] = spec.role
        schema["x-intrusive"] = spec.intrusive
        out[f"command.{spec.name}.json"] = schema
    from .station.schemas import station_schemas  # the station's local API (docs/local-api.md)

    out.update(station_schemas())
    return out


def _dump(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    wanted = generate()
    for old in directory.glob("*.json"):
        if old.name not in wanted:
            old.unlink()
    for name, schema in sorted(wanted.items()):
        p = directory / name
        p.write_text(_dump(schema))
        written.append(p)
    return written


def check(directory: Path) -> list[str]:
    """Names of files that are missing, stale, or no longer generated."""
    wanted = generate()
    stale = [
        n
        for n, s in wanted.items()
        if not (directory / n).exists() or (directory / n).read_text() != _dump(s)
    ]
    stale += [p.name for p in directory.glob("*.json") if p.name not in wanted]
    return sorted(stale)
