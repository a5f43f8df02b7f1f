"""The one error tree of the appliance.

Every error the daemon raises on purpose derives from :class:`ApplianceError` and carries a
stable machine-readable ``code`` (it travels in command replies and audit rows), whether a retry
may help (``retryable``), and ``details`` a caller can act on. Lower layers convert foreign
exceptions (``serial.SerialException``, ``smartcard`` errors, ``sqlite3`` errors, the builtin
``TimeoutError``) into this tree at their boundary, so nothing above a driver's ``device`` layer
ever catches a library's exception type.

Names never shadow builtins: a device timeout is :class:`DeviceTimeout`, not ``TimeoutError``.
"""

from __future__ import annotations

from typing import Any

from .protocol.codes import ErrorCode


class ApplianceError(Exception):
    """Base of every deliberate error. ``code`` is stable and documented in docs/protocol.md."""

    code: str = ErrorCode.INTERNAL_ERROR
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retryable: bool | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable
        self.details: dict[str, Any] = dict(details or {})

    def to_dict(self) -> dict[str, Any]:
        """The ``error`` object of a command reply."""
        return {"code": self.code, "message": self.message, "details": self.details}


# --- configuration --------------------------------------------------------------------------


class ConfigError(ApplianceError):
    """Configuration that cannot be loaded or validated.

    ``problems`` is a list of ``(dotted.path, reason)`` pairs, one per invalid field.
    """

    code = ErrorCode.CONFIG_INVALID

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        self.problems = list(problems or [])
        super().__init__(message, details={"problems": [f"{p}: {r}" for p, r in self.problems]})


class MissingExtraError(ApplianceError):
    """A configured backend needs an optional dependency that is not installed."""

    code = ErrorCode.MISSING_EXTRA

    def __init__(self, backend: str, extra: str, module: str) -> None:
        super().__init__(
            f"backend {backend!r} needs the optional dependency {module!r}: "
            f"install the '{extra}' extra (pip install 'appliance[{extra}]')",
            details={"backend": backend, "extra": extra, "module": module},
        )


# --- durable store --------------------------------------------------------------------------


class StoreError(ApplianceError):
    """The SQLite store failed (disk full, corrupt file, migration failure)."""

    code = ErrorCode.STORE_ERROR


# --- commands -------------------------------------------------------------------------------


class CommandError(ApplianceError):
    """A command was refused or failed; ``code`` is one of docs/protocol.md's error codes."""

    code = ErrorCode.COMMAND_FAILED


class UnknownCommand(CommandError):
    code = ErrorCode.UNKNOWN_COMMAND


class CommandTimeout(CommandError):
    code = ErrorCode.TIMEOUT
    retryable = True


class Busy(CommandError):
    """Another exclusive operation (an enrollment session, a card write) holds the resource."""

    code = ErrorCode.BUSY
    retryable = True


# --- devices --------------------------------------------------------------------------------


class DeviceError(ApplianceError):
    """A hardware device failed. ``device`` names the capability (camera, fingerprint, card)."""

    code = ErrorCode.DEVICE_ERROR

    def __init__(
        self,
        message: str,
        *,
        device: str,
        code: str | None = None,
        retryable: bool | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        merged = {"device": device, **(details or {})}
        super().__init__(message, code=code, retryable=retryable, details=merged)
        self.device = device


class DeviceTimeout(DeviceError):
    """The device did not answer before the deadline (a silent sensor, a slow card)."""

    code = ErrorCode.DEVICE_TIMEOUT
    retryable = True


class DeviceDisconnected(DeviceError):
    """The device is unplugged or its port/reader vanished."""

    code = ErrorCode.DEVICE_DISCONNECTED
    retryable = True


class ProtocolError(DeviceError):
    """Bytes on the wire did not parse: bad header, checksum, length, or unexpected reply."""

    code = ErrorCode.PROTOCOL_ERROR
    retryable = True


class DeviceStatusError(DeviceError):
    """The device answered with a non-success status (a confirmation code, a status word).

    ``status`` carries the raw value (e.g. ``0x02`` "no finger", ``0x6581`` memory failure).
    """

    code = ErrorCode.DEVICE_STATUS

    def __init__(
        self,
        message: str,
        *,
        device: str,
        status: int,
        code: str | None = None,
        retryable: bool | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            message,
            device=device,
            code=code,
            retryable=retryable,
            details={"status": status, **(details or {})},
        )
        self.status = status


# --- trust ----------------------------------------------------------------------------------


class TrustError(ApplianceError):
    """A signature, certificate, envelope, or sealed object failed verification."""

    code = ErrorCode.TRUST_ERROR
