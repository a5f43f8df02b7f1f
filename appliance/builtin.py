"""The core's own commands: ping, status, config.get, diagnostics, note.

``status``, ``config.get`` and ``diagnostics`` read the daemon's views through a :class:`Core`
given at registration (the daemon's ``Services``); nothing comes through the command context.
"""

from __future__ import annotations

import platform
import sqlite3
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from . import __version__
from .commands import CommandContext, CommandRegistry, NoArgs
from .errors import CommandError
from .protocol.codes import ErrorCode

if TYPE_CHECKING:
    from .config import AppConfig


class Core(Protocol):
    """What the core's commands read of the daemon."""

    @property
    def config(self) -> AppConfig: ...

    def status(self) -> dict[str, Any]: ...

    def diagnostics(self) -> dict[str, Any]: ...


class PingArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    echo: str | None = Field(None, max_length=1024, description="Returned unchanged")


class ConfigGetArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    section: str | None = Field(
        None,
        pattern=r"^[a-z_]+(\.[a-z_]+)*$",
        description="Dotted path of a section (e.g. mqtt or hardware.camera); all when absent",
    )


class NoteArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=2000, description="The note")
    tags: list[str] = Field(default_factory=list, max_length=16, description="Free tags")


def _pkg_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def ping(ctx: CommandContext, args: PingArgs) -> dict[str, Any]:
    """Liveness check: answers at once."""
    out: dict[str, Any] = {"pong": True, "ts": time.time()}
    if args.echo is not None:
        out["echo"] = args.echo
    return out


def _versions() -> dict[str, Any]:
    return {
        "appliance": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        **{
            p: _pkg_version(p)
            for p in (
                "paho-mqtt",
                "pydantic",
                "sqlite-utils",
                "pynacl",
                "pyserial",
                "pyscard",
                "opencv-python-headless",
            )
        },
    }


def note(ctx: CommandContext, args: NoteArgs) -> dict[str, Any]:
    """Add a note to the kiosk's event timeline (e.g. "replaced sensor cable").

    The reply comes after the event is durable: its ``seq`` and ``event_id`` identify it
    on ``events/note`` once delivered."""
    stored = ctx.emit("note", {"text": args.text, "tags": args.tags, "command_id": ctx.command_id})
    if stored is None:  # durable emit always stores; this guards the type only
        raise CommandError("note was not stored", code=ErrorCode.STORE_ERROR)
    seq, event_id = stored
    return {"seq": seq, "event_id": event_id}


def register(registry: CommandRegistry, core: Core | None = None) -> None:
    """Register the core's commands. Without ``core`` (schema generation, tests of the
    dispatcher) ``status``, ``config.get`` and ``diagnostics`` are registered all the same
    and answer ``internal_error``: there is no daemon to report on."""

    def daemon() -> Core:
        if core is None:
            raise CommandError("no daemon to report on", code=ErrorCode.INTERNAL_ERROR)
        return core

    def status(ctx: CommandContext, _args: NoArgs) -> dict[str, Any]:
        """Online state, software version, profile, device health, outbox depth."""
        return daemon().status()

    def config_get(ctx: CommandContext, args: ConfigGetArgs) -> dict[str, Any]:
        """The effective configuration (no secret values: secrets are always files)."""
        data: Any = daemon().config.redacted()
        if args.section:
            for part in args.section.split("."):
                if not isinstance(data, dict) or part not in data:
                    raise CommandError(
                        f"no configuration section {args.section!r}",
                        code=ErrorCode.INVALID_ARGS,
                        details={"section": args.section},
                    )
                data = data[part]
        return {"section": args.section, "config": data}

    def diagnostics(ctx: CommandContext, _args: NoArgs) -> dict[str, Any]:
        """Versions, uptime, outbox depth, store size, device states, MQTT counters."""
        return {"versions": _versions(), **daemon().diagnostics()}

    registry.add("ping", ping, args=PingArgs, timeout_s=5, role="operator", readonly=True)
    registry.add("status", status, timeout_s=5, role="operator", readonly=True)
    registry.add(
        "config.get", config_get, args=ConfigGetArgs, timeout_s=5, role="admin", readonly=True
    )
    registry.add("diagnostics", diagnostics, timeout_s=10, role="admin", readonly=True)
    registry.add("note", note, args=NoteArgs, timeout_s=10, role="technician")
