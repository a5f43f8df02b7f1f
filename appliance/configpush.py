"""The fleet's desired configuration: verify, validate, apply atomically, trial, commit or
roll back.

Flow (docs/trust.md, "Configuration push"):

1. A signed document arrives retained on ``{prefix}/{device}/config/desired``. Its version is
   compared with the applied one first (a retained copy is re-delivered on every connect), then
   its signature is verified (admin role, this device or one of its groups), its content parsed
   and layered over the local configuration and validated like any other layer.
   Anything wrong: ``rejected`` with the reasons, nothing changes.
2. Applying is atomic: the document is written to ``<state>/config/pending.json`` and the daemon
   re-executes itself, so every component (broker connection, drivers, limits) comes up from the
   new configuration at once; there is no half-applied state. Changes wait while an enrollment
   session is active.
3. Trial: after the restart the daemon checks that the broker is reachable with the new settings
   and that every device that was healthy before is healthy again, within
   ``config_push.trial_timeout_s`` (reported as ``trial``). Then ``pending.json`` becomes
   ``desired.json`` (``applied``), or it is deleted and the daemon re-executes with the previous
   configuration (``rolled_back``). A daemon that dies during its trial finds the pending file
   on its next start with its attempt already counted and rolls back without trying again.
4. The outcome is kept in the store (configuration history, audit) and published retained on
   ``{prefix}/{device}/config/reported``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import AppConfig, load
from .errors import ApplianceError, ConfigError, TrustError
from .protocol.codes import ErrorCode
from .store import Store

log = logging.getLogger(__name__)

CONFIG_DIR = "config"
DESIRED = "desired.json"
PENDING = "pending.json"
REPORTED_KEY = "config.reported"
FAILED_KEY = "config.failed_versions"


def _dir(state_dir: Path) -> Path:
    d = state_dir / CONFIG_DIR
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.error("unreadable %s (%s): ignored", path, exc)
        return None
    return data if isinstance(data, dict) else None


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass
class Startup:
    """What ``appliance run`` layers over the local configuration at start."""

    desired: dict[str, Any] | None  # the layer to use now (committed, or the trial's)
    version: int | None  # the committed (applied) version
    trial: dict[str, Any] | None  # the pending document when this start is a trial
    rolled_back: dict[str, Any] | None = None  # a trial that died: roll back was decided


def at_startup(state_dir: Path) -> Startup:
    """Choose the desired layer for this start (see the module docstring, step 3)."""
    d = _dir(state_dir)
    committed = _read(d / DESIRED)
    pending = _read(d / PENDING)
    base = committed.get("content") if committed else None
    version = committed.get("version") if committed else None
    if pending is None:
        return Startup(base, version, None)
    if int(pending.get("attempts", 0)) >= 1:
        # We already started once with this document and never reached a verdict.
        (d / PENDING).unlink(missing_ok=True)
        pending["reason"] = "the daemon stopped during the trial of this configuration"
        return Startup(base, version, None, rolled_back=pending)
    pending["attempts"] = int(pending.get("attempts", 0)) + 1
    pending["trial_started"] = time.time()
    _write_atomic(d / PENDING, pending)
    # The committed version stays the applied one until the trial passes.
    return Startup(pending.get("content"), version, pending)


def peek_version(doc: bytes) -> int | None:
    """The version inside a document, read before verification (cheap re-delivery check)."""
    try:
        body = json.loads(base64.b64decode(json.loads(doc)["body"], validate=True))
        v = body["version"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    return v if isinstance(v, int) and not isinstance(v, bool) else None


class ConfigPush:
    """Device-side handler of desired configuration documents."""

    def __init__(
        self,
        *,
        config: AppConfig,
        config_path: Path | None,
        state_dir: Path,
        store: Store,
        startup: Startup,
        publish_reported: Callable[[dict[str, Any]], None],
        request_restart: Callable[[str], None],
        session_active: Callable[[], bool],
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.state_dir = state_dir
        self.store = store
        self.startup = startup
        self._publish_reported = publish_reported
        self._request_restart = request_restart
        self._session_active = session_active
        self._lock = threading.Lock()
        self._waiting: dict[str, Any] | None = None  # validated, waiting for the session to end
        # Orders a document's handling (config worker) against the trial's verdict (main loop):
        # both read and change applied_version and startup.trial. Without it the retained
        # document re-delivered at the trial's connect could be checked half before, half after
        # the verdict and be reported "rejected: not newer" instead of ignored.
        self._verdict = threading.RLock()
        self.applied_version = startup.version or 0

    # -- reporting -------------------------------------------------------------------------

    def report(
        self,
        status: str,
        version: int | None,
        reason: str = "",
        problems: list[str] | None = None,
        document: dict[str, Any] | None = None,
        source: str = "fleet",
    ) -> None:
        body = {
            "status": status,
            "version": version,
            "applied_version": self.applied_version or None,
            "reason": reason,
            "problems": problems or [],
            "ts": time.time(),
        }
        try:
            with self.store.transaction():
                self.store.kv_set(REPORTED_KEY, json.dumps(body))
                self.store.record_config(
                    source,
                    status,
                    document or {"version": version},
                    reason or "; ".join(problems or []),
                )
                self.store.audit(
                    "fleet",
                    "config.desired",
                    status,
                    version=version,
                    reason=reason,
                    problems=problems or [],
                )
                if status in ("rejected", "rolled_back"):
                    failed = self._failed_versions()
                    if version is not None and version not in failed:
                        failed.append(version)
                    self.store.kv_set(FAILED_KEY, json.dumps(failed[-50:]))
        except ApplianceError:
            log.exception("could not record the configuration outcome")
        log.info("desired configuration v%s: %s %s", version, status, reason)
        self._publish_reported(body)

    def republish(self) -> None:
        """On every connect: the retained report reflects the latest outcome."""
        raw = self.store.kv_get(REPORTED_KEY)
        if raw:
            self._publish_reported(json.loads(raw))

    def _failed_versions(self) -> list[int]:
        raw = self.store.kv_get(FAILED_KEY)
        return list(json.loads(raw)) if raw else []

    # -- start-up outcomes ---------------------------------------------------------------------

    def after_start(self) -> None:
        """Report what this start is: a rollback decided at start (a trial that died), or the
        trial of a new document (so ``fleet push-config`` shows it between ``applying`` and the
        verdict)."""
        rb = self.startup.rolled_back
        if rb is not None:
            self.report(
                "rolled_back", rb.get("version"), rb.get("reason", ""), document=rb.get("content")
            )
        trial = self.startup.trial
        if trial is not None:
            self.report(
                "trial",
                int(trial["version"]),
                "running with the new configuration: committed once the broker is reachable and "
                "every device is as healthy as before, rolled back after "
                f"{self.config.config_push.trial_timeout_s:g} s otherwise",
                document=trial["content"],
            )

    def trial_verdict(self, healthy: bool, reason: str) -> None:
        """End of a trial: commit the pending document or roll back to the previous one."""
        with self._verdict:
            self._trial_verdict(healthy, reason)

    def _trial_verdict(self, healthy: bool, reason: str) -> None:
        trial = self.startup.trial
        if trial is None:
            return
        d = _dir(self.state_dir)
        version = int(trial["version"])
        if healthy:
            committed = {"version": version, "content": trial["content"], "applied_at": time.time()}
            _write_atomic(d / DESIRED, committed)
            (d / PENDING).unlink(missing_ok=True)
            self.applied_version = version
            self.startup.trial = None
            self.report("applied", version, "trial passed: " + reason, document=trial["content"])
        else:
            (d / PENDING).unlink(missing_ok=True)
            self.startup.trial = None
            self.report("rolled_back", version, reason, document=trial["content"])
            self._request_restart(f"rolling back configuration v{version}")

    # -- incoming documents ------------------------------------------------------------------

    def on_document(self, doc: bytes) -> None:
        """Handle a retained/live desired document (called off the network thread)."""
        if not doc:
            return  # a cleared retained message
        with self._verdict:
            self._on_document(doc)

    def _on_document(self, doc: bytes) -> None:
        version = peek_version(doc)
        if version is not None and (
            version <= self.applied_version
            or version in self._failed_versions()
            or (self.startup.trial is not None and version == int(self.startup.trial["version"]))
        ):
            log.debug("desired configuration v%s already handled", version)
            return
        try:
            verified = self._verify(doc)
        except TrustError as exc:
            self.report("rejected", version, f"{exc.code}: {exc.message}")
            return
        try:
            content = _parse(verified.content, verified.format)
            candidate = load(self.config_path, desired=content)
            self._check_allowed(candidate)
        except ConfigError as exc:
            problems = [f"{p}: {r}" for p, r in exc.problems] or [exc.message]
            self.report(
                "rejected", verified.version, "invalid configuration", problems, document=None
            )
            return
        pending = {
            "version": verified.version,
            "content": content,
            "attempts": 0,
            "issuer": verified.issuer_name or verified.issuer,
            "previous_version": self.applied_version or None,
        }
        with self._lock:
            self._waiting = pending

    def poll(self, baseline: dict[str, str] | None = None) -> None:
        """Apply a validated document once no enrollment session is active (main loop).
        ``baseline``: each device's health now, which the trial must reach again."""
        with self._lock:
            pending = self._waiting
            if pending is None:
                return
            if self._session_active():
                return
            self._waiting = None
        pending["baseline"] = baseline or {}
        _write_atomic(_dir(self.state_dir) / PENDING, pending)
        self.report(
            "applying",
            pending["version"],
            "restarting with the new configuration",
            document=pending["content"],
        )
        self._request_restart(f"applying configuration v{pending['version']}")

    @property
    def waiting(self) -> bool:
        return self._waiting is not None

    def _verify(self, doc: bytes) -> Any:
        from .trust.configdoc import verify_config
        from .trust.envelope import ensure_replay_schema
        from .trust.keys import load_public_key

        roots = [load_public_key(p) for p in self.config.trust.root_keys]
        if not roots:
            raise TrustError(
                "no fleet root key configured: remote configuration refused",
                code=ErrorCode.UNTRUSTED_ISSUER,
            )
        ensure_replay_schema(self.store.conn, self.store.lock)
        with self.store.lock:
            row = self.store.conn.execute(
                "SELECT max(last_issued_at) FROM trust_issuer_state"
            ).fetchone()
        floor = float(row[0]) if row and row[0] else None
        return verify_config(
            doc,
            roots,
            device_id=self.config.device.id,
            groups=self.config.device.groups,
            newer_than=self.applied_version or None,
            time_floor=floor,
            revoked=self.config.trust.revoked_keys,
        )

    def _check_allowed(self, candidate: AppConfig) -> None:
        """What a remote document may not change: the kiosk's identity."""
        if candidate.device.id != self.config.device.id:
            raise ConfigError(
                "device.id cannot be changed remotely",
                [("device.id", "cannot be changed by the fleet (re-provision)")],
            )


def _parse(content: bytes, fmt: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(content.decode()) if fmt == "toml" else json.loads(content)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError("unparseable configuration", [("(document)", str(exc))]) from None
    if not isinstance(data, dict):
        raise ConfigError("configuration must be a table", [("(document)", "not a table")])
    return data
