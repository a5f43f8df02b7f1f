"""Command registry: every command the daemon answers is declared here as data.

A command is a name, a pydantic model for its arguments, a timeout, and a handler
``handler(ctx, args) -> dict``. Capabilities register theirs through a ``register(registry,
device, ...)`` function in their driver package's ``commands`` module (thin adapters over the
services in :mod:`appliance.capabilities`); the core registers ``ping``, ``status``,
``config.get`` and ``diagnostics``.

The registry knows nothing of MQTT: the agent decodes a message into a :class:`CommandRequest`
and the :class:`~appliance.dispatch.Dispatcher` runs it.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, ParamSpec, TypeVar

from pydantic import BaseModel, ConfigDict

from .errors import CommandError, UnknownCommand
from .protocol.codes import ErrorCode
from .trust.certs import ROLES

ArgsT = TypeVar("ArgsT", bound=BaseModel)
P = ParamSpec("P")
R = TypeVar("R")


class NoArgs(BaseModel):
    """Arguments of a command that takes none."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class CommandContext:
    """What a handler may use. ``emit`` sends an event (durable through the outbox by default);
    ``progress`` sends a transient progress event for the kiosk screen; ``cancelled`` is set when
    the command's timeout passed, and long handlers should check it between steps.

    Nothing else comes through the context: a handler gets its dependencies (a capability
    service, the enrollment manager, the lookup client) when it is registered, typed."""

    command_id: str
    name: str
    deadline: float
    emit: Callable[..., tuple[int, str] | None]
    cancelled: threading.Event = field(default_factory=threading.Event)

    def progress(self, step: str, **data: Any) -> None:
        self.emit(
            "command.progress",
            {"command_id": self.command_id, "command": self.name, "step": step, **data},
            durable=False,
        )

    @property
    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


Handler = Callable[[CommandContext, Any], dict[str, Any]]


@dataclass(frozen=True)
class CommandSpec(Generic[ArgsT]):
    name: str
    args_model: type[ArgsT]
    handler: Handler
    timeout_s: float
    summary: str
    # Role a signed command's certificate must hold (docs/trust.md): one of
    # appliance.trust.certs.ROLES, checked at registration; there is no default.
    role: str
    # Commands that must not run while an enrollment session is active (driver restarts...).
    intrusive: bool = False
    result_model: type[BaseModel] | None = None
    # Read-only and fast (no device I/O, no effect): runs in the network thread and is
    # recorded with its reply in one transaction (see Dispatcher._run_readonly).
    readonly: bool = False
    # Result fields sent in the reply but never written to the command log (a technician's
    # snapshot image): biometrics never reach the disk unencrypted. A repeat of the command
    # id gets the stored reply, with these fields marked as not stored.
    unstored: frozenset[str] = frozenset()


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""


def _role_stated(add: Callable[P, R]) -> Callable[P, R]:
    """A registration that leaves out ``role`` fails with an error naming the command (the
    signature alone would give a TypeError that does not). The signature is unchanged, so mypy
    still flags a call without ``role``."""

    @functools.wraps(add)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        if "role" not in kwargs:
            name = args[1] if len(args) > 1 else kwargs.get("name")
            raise CommandError(
                f"command {name!r} registered without a role: every command states one of "
                f"{sorted(ROLES)}",
                code=ErrorCode.INVALID_ROLE,
                details={"command": name, "role": None, "roles": sorted(ROLES)},
            )
        return add(*args, **kwargs)

    return checked


class CommandRegistry:
    def __init__(self) -> None:
        self._specs: dict[str, CommandSpec[Any]] = {}

    @_role_stated
    def add(
        self,
        name: str,
        handler: Handler,
        *,
        args: type[BaseModel] = NoArgs,
        timeout_s: float = 10.0,
        summary: str = "",
        role: str,
        intrusive: bool = False,
        result: type[BaseModel] | None = None,
        readonly: bool = False,
        unstored: tuple[str, ...] = (),
    ) -> None:
        """Register a command. ``role`` is required and must be one of the trust model's roles
        (:data:`appliance.trust.certs.ROLES`): a command without a valid role is refused here,
        when the daemon starts, instead of being refused on every signed call (fail closed)."""
        if name in self._specs:
            raise ValueError(f"command {name!r} registered twice")
        if not isinstance(role, str) or role not in ROLES:
            raise CommandError(
                f"command {name!r} registered with role {role!r}: the role must be one of "
                f"{sorted(ROLES)}",
                code=ErrorCode.INVALID_ROLE,
                details={"command": name, "role": repr(role), "roles": sorted(ROLES)},
            )
        self._specs[name] = CommandSpec(
            name=name,
            args_model=args,
            handler=handler,
            timeout_s=timeout_s,
            summary=summary or _first_line(handler.__doc__),
            intrusive=intrusive,
            role=role,
            result_model=result,
            readonly=readonly,
            unstored=frozenset(unstored),
        )

    def get(self, name: str) -> CommandSpec[Any]:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownCommand(f"unknown command {name!r}", details={"command": name}) from None

    def names(self) -> list[str]:
        return sorted(self._specs)

    def specs(self) -> list[CommandSpec[Any]]:
        return [self._specs[n] for n in self.names()]

    def roles(self) -> Mapping[str, str]:
        """A live view ``command name -> role`` for the trust layer: a command registered after
        the verifier was built (the enrollment commands are) is covered all the same."""
        return _RoleView(self._specs)


class _RoleView(Mapping[str, str]):
    def __init__(self, specs: dict[str, CommandSpec[Any]]) -> None:
        self._specs = specs

    def __getitem__(self, name: str) -> str:
        return self._specs[name].role

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)
