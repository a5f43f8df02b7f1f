"""The kiosk's side of fleet jobs for updates: take the retained job document, download the
bundle in chunks over MQTT (resumable), install it beside the running version, switch when no
enrollment session is active, and report each state; after the restart, judge the trial and
report the outcome (docs/updates.md).

Transport-free: the daemon gives it ``publish`` and routes the messages of
:meth:`JobAgent.subscriptions` to :meth:`JobAgent.on_message`; :meth:`JobAgent.tick` runs from
its main loop. Reports go retained to ``{prefix}/{device}/jobs/reported`` (signed with the
device key by the daemon's MQTT agent, like every message of the kiosk).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ApplianceError, TrustError
from ..inbound import Incoming, Verified
from ..protocol.codes import ErrorCode
from . import guard as g
from . import topics
from .installer import Updater
from .jobdoc import Job, verify_job

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
#: Chunk requests in flight (bench/fleet_jobs.py: the share of the link it reaches).
WINDOW = 4
DOWNLOAD = "download.part"
CONFIG_JOB = "config-job.json"
#: A daemon exits with this status to be started again through the guard (the unit's
#: RestartForceExitStatus=75; EX_TEMPFAIL of sysexits.h).
EXIT_RESTART = 75


def split_chunk(payload: bytes) -> tuple[dict[str, Any], bytes]:
    """``update/data`` payload: one JSON header line, ``\\n``, the bytes."""
    head, sep, data = payload.partition(b"\n")
    if not sep:
        raise ValueError("chunk without header line")
    header = json.loads(head)
    if not isinstance(header, dict):
        raise ValueError("chunk header is not an object")
    return header, data


def make_chunk(sha256: str, offset: int, data: bytes, size: int) -> bytes:
    head = json.dumps({"sha256": sha256, "offset": offset, "length": len(data), "size": size})
    return head.encode() + b"\n" + data


@dataclass
class Download:
    """A bundle arriving in chunks into ``path`` (its length is the resume offset)."""

    path: Path
    sha256: str
    size: int
    #: fsync after this many bytes (and at the end): a power cut loses at most that much, and
    #: a torn tail is caught by the final hash (the download then starts over).
    sync_bytes: int = 16 * CHUNK
    _unsynced: int = 0

    @property
    def offset(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def accept(self, header: dict[str, Any], data: bytes) -> str:
        """Append a chunk if it is the next one: ``appended``, ``complete`` (the whole file,
        hash checked), ``ignored`` (not the next chunk: a duplicate or a stale answer) or
        ``corrupt`` (complete but the hash differs: the file is removed, start over)."""
        if header.get("sha256") != self.sha256 or header.get("offset") != self.offset:
            return "ignored"
        if len(data) != header.get("length") or self.offset + len(data) > self.size:
            return "ignored"
        with open(self.path, "ab") as fh:
            fh.write(data)
            fh.flush()
            self._unsynced += len(data)
            if self._unsynced >= self.sync_bytes or self.offset >= self.size:
                os.fsync(fh.fileno())
                self._unsynced = 0
        if self.offset < self.size:
            return "appended"
        h = hashlib.sha256()
        with open(self.path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != self.sha256:
            log.error("update: downloaded bundle hash differs; starting over")
            self.path.unlink()
            return "corrupt"
        return "complete"


class Fetcher:
    """Keeps up to ``window`` chunk requests in flight ahead of the file's end (MQTT keeps the
    answers of one publisher in order), and asks again from the file's end when nothing
    arrived for ``stall_s`` (a lost message, a reconnect, a restart)."""

    def __init__(
        self,
        download: Download,
        request: Callable[[int, int], None],
        *,
        window: int = WINDOW,
        stall_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.download = download
        self.request = request
        self.window = window
        self.stall_s = stall_s
        self.clock = clock
        self.next = download.offset
        self.progress_at = clock()

    def start(self) -> None:
        self.next = self.download.offset
        self.progress_at = self.clock()
        self._fill()

    def _fill(self) -> None:
        d = self.download
        while self.next < d.size and self.next - d.offset < self.window * CHUNK:
            length = min(CHUNK, d.size - self.next)
            self.request(self.next, length)
            self.next += length

    def on_chunk(self, header: dict[str, Any], data: bytes) -> bool:
        """True once the bundle is complete and its hash matched."""
        result = self.download.accept(header, data)
        if result == "complete":
            return True
        if result in ("appended", "corrupt"):
            self.progress_at = self.clock()
            if result == "corrupt":
                self.next = 0
            self._fill()
        return False

    def tick(self) -> None:
        if self.clock() - self.progress_at > self.stall_s:
            self.start()


class JobAgent:
    def __init__(
        self,
        *,
        device: str,
        prefix: str,
        roots: Sequence[bytes],
        updater: Updater,
        publish: Callable[[str, bytes, bool], bool],
        session_active: Callable[[], bool],
        request_restart: Callable[[str], None],
        revoked: Sequence[str] = (),
        trial_timeout_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        apply_config: Callable[[bytes], None] | None = None,
        config_outcome: Callable[[], dict[str, Any] | None] | None = None,
        dispatch: Callable[[Incoming], None] | None = None,
        url_ca_file: Path | None = None,
    ) -> None:
        self.device = device
        self.prefix = prefix
        self.roots = list(roots)
        self.revoked = list(revoked)
        self.updater = updater
        self.publish = publish
        self.session_active = session_active
        self.request_restart = request_restart
        self.trial_timeout_s = trial_timeout_s
        self.clock = clock
        self.job: Job | None = None
        self.fetcher: Fetcher | None = None
        self.apply_config = apply_config
        self.config_outcome = config_outcome
        self.dispatch = dispatch
        self.url_ca_file = url_ca_file  # None: the system's CA certificates
        self._commands: dict[str, tuple[str, frozenset[str]]] = {}  # job -> issuer, roles
        self._staging: threading.Thread | None = None
        self._trial_deadline: float | None = None
        self._lock = threading.RLock()

    # -- wiring ----------------------------------------------------------------------------

    def subscriptions(self) -> list[str]:
        return [
            topics.job_desired(self.prefix, self.device),
            topics.update_data(self.prefix, self.device),
        ]

    def on_message(self, topic: str, payload: bytes) -> None:
        with self._lock:
            if topic == topics.job_desired(self.prefix, self.device):
                self._on_job(payload)
            elif topic == topics.update_data(self.prefix, self.device):
                self._on_chunk(payload)

    def report(self, job: str, state: str, detail: str, **extra: Any) -> None:
        body = {"job": job, "device": self.device, "state": state, "detail": detail,
                "ts": time.time(), **extra}  # fmt: skip
        self.publish(topics.job_reported(self.prefix, self.device), json.dumps(body).encode(), True)
        log.info("job %s: %s %s", job, state, detail)

    # -- after a start ---------------------------------------------------------------------

    def after_start(self) -> None:
        """Report what the journal says this start is: a trial (judged by :meth:`trial_tick`),
        or the outcome of one the guard or the previous version decided."""
        j = self.updater.journal
        if j is None:
            return
        if j["state"] in ("verifying", "installing"):  # interrupted: redo it, off this thread
            job = j.get("job")

            def resume() -> None:
                after = self.updater.resume() or {}
                if job and after.get("state") == "failed":
                    self.report(job, "failed", str(after.get("reason")))
                elif job:
                    self.report(job, "in_progress", "installed; switching when idle")

            self._staging = threading.Thread(target=resume, name="update-resume", daemon=True)
            self._staging.start()
        elif j["state"] == "trial":
            self._trial_deadline = self.clock() + self.trial_timeout_s
            if j.get("job"):
                self.report(j["job"], "in_progress", f"trial of {j.get('version')}")
        elif j["state"] in ("rolled_back", "committed", "failed") and not j.get("reported"):
            if j.get("job"):
                state = {"committed": "succeeded"}.get(j["state"], j["state"])
                self.report(j["job"], state, j.get("reason") or "", version=j.get("version"))
            g.set_state(self.updater.state_dir, j, j["state"], reported=True)

    def trial_tick(self, connected: bool, health: Mapping[str, str]) -> None:
        """The trial's health check, as the configuration trial's: the broker reachable and
        every device that was ``ok`` before the switch ``ok`` again; then the new version's
        selftest (Updater.verdict)."""
        if self._trial_deadline is None:
            return
        j = self.updater.journal or {}
        baseline: dict[str, str] = j.get("baseline") or {}
        worse = [k for k, was in baseline.items() if was == "ok" and health.get(k) != "ok"]
        if connected and not worse:
            self._verdict(True, "broker reachable, devices healthy")
        elif self.clock() > self._trial_deadline:
            reasons = [] if connected else ["broker unreachable"]
            self._verdict(False, "; ".join(reasons + [f"{w} worse than before" for w in worse]))

    def _verdict(self, healthy: bool, reason: str) -> None:
        self._trial_deadline = None
        j = self.updater.verdict(healthy, reason)
        if j.get("job"):
            state = "succeeded" if j["state"] == "committed" else "rolled_back"
            self.report(j["job"], state, j.get("reason") or "", version=j.get("version"))
        g.set_state(self.updater.state_dir, j, j["state"], reported=True)
        if j["state"] == "rolled_back":
            self.request_restart(f"update {j.get('version')} rolled back: {reason}")

    # -- a job -----------------------------------------------------------------------------

    def _on_job(self, payload: bytes) -> None:
        if not payload:
            return  # cleared (canceled or aborted before this kiosk started)
        try:
            job = verify_job(payload, self.roots, device=self.device, revoked=self.revoked)
        except TrustError as exc:
            log.warning("job document refused: %s: %s", exc.code, exc.message)
            return
        j = self.updater.journal
        resume = j is not None and j.get("job") == job.job and j["state"] == "downloading"
        if j is not None and j.get("job") == job.job and not resume:
            return  # already taken (a retained copy re-delivered on reconnect)
        if job.kind == "config" and self.apply_config is not None:
            self._config_job(job)
            return
        if job.kind == "command" and self.dispatch is not None:
            self._command_job(job, payload)
            return
        if job.kind != "update":
            self.report(job.job, "failed", f"job_kind_unsupported: {job.kind} jobs are not run "
                        "by this agent")  # fmt: skip
            return
        if j is not None and j["state"] not in g.FINAL and not resume:
            self.report(job.job, "failed", f"update_in_progress: {j['state']}")
            return
        spec = job.spec
        try:
            sha, size = str(spec["sha256"]), int(spec["size"])
        except (KeyError, TypeError, ValueError):
            self.report(job.job, "failed", "job spec needs sha256 and size")
            return
        self.job = job
        work = self.updater.state_dir / g.JOURNAL_DIR
        work.mkdir(parents=True, exist_ok=True, mode=0o700)
        download = Download(work / DOWNLOAD, sha, size)
        if download.offset > size or not resume:
            download.path.unlink(missing_ok=True)
        self.fetcher = Fetcher(download, self._request, clock=self.clock)
        g.write_journal(
            self.updater.state_dir,
            {"state": "downloading", "job": job.job, "version": spec.get("version"),
             "sha256": sha, "size": size, "from": g.current_target(self.updater.root)},
        )  # fmt: skip
        what = f"resuming the download at {download.offset}" if resume else "downloading"
        url = spec.get("url")
        self.report(
            job.job, "in_progress", f"{what} of {size} bytes" + (f" from {url}" if url else "")
        )
        if isinstance(url, str) and url.startswith("https://"):
            self._staging = threading.Thread(
                target=self._fetch_url, args=(url, download), name="update-url", daemon=True
            )
            self._staging.start()
            return
        self.fetcher.start()

    def _fetch_url(self, url: str, download: Download) -> None:
        """The bundle from the HTTPS address the job names, resumed with a Range request at
        the file's length; on any failure the MQTT chunks take over from where it stopped."""
        import ssl
        import urllib.error
        import urllib.request

        ctx = ssl.create_default_context(cafile=str(self.url_ca_file) if self.url_ca_file else None)
        try:
            offset = download.offset
            # https:// only (checked by the caller), so no file: or custom scheme reaches here
            req = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"})  # noqa: S310
            with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:  # noqa: S310
                if offset and resp.status != 206:
                    download.path.unlink(missing_ok=True)  # no range support: start over
                    offset = 0
                while True:
                    block = resp.read(CHUNK)
                    if not block:
                        raise OSError("the server closed before the end of the bundle")
                    header = {"sha256": download.sha256, "offset": offset, "length": len(block)}
                    result = download.accept(header, block)
                    offset += len(block)
                    if result == "complete":
                        break
                    if result != "appended":
                        raise OSError(f"download {result} at {offset}")
        except (OSError, urllib.error.URLError, ssl.SSLError) as exc:
            log.warning("update: %s failed (%s); continuing over MQTT", url, exc)
            with self._lock:
                if self.fetcher is not None:
                    self.fetcher.start()
            return
        with self._lock:
            self.fetcher = None
            self._stage(download.path)

    # -- command jobs: through the daemon's dispatcher, with the job signer's roles ----------

    def _command_job(self, job: Job, document: bytes) -> None:
        """Run the job's command as the dispatcher runs any command (schema, role, busy,
        at-most-once by its id ``job-<job>``), with the roles of the certificate that signed
        the job (verified by verify_job): a command needing the operator role runs only from a
        job an operator's certificate could sign."""
        from ..trust.certs import OperatorCertificate

        assert self.dispatch is not None
        cmd, args = job.spec.get("cmd"), job.spec.get("args", {})
        if not isinstance(cmd, str) or not isinstance(args, dict):
            self.report(job.job, "failed", "command job spec needs cmd and args")
            return
        cert = OperatorCertificate.from_token(json.loads(document)["cert"])
        self._commands[job.job] = (job.issuer, frozenset(cert.roles))
        request = {"id": f"job-{job.job}", "cmd": cmd, "args": args}
        self.report(job.job, "in_progress", f"running {cmd}")
        self.dispatch(
            Incoming(
                topics.JOB_COMMAND,
                json.dumps(request).encode(),
                False,
                response_topic=topics.JOB_REPLY,
                correlation_data=job.job.encode(),
            )
        )

    def verify_local(self, msg: Incoming) -> Verified | None:
        """The dispatcher's verdict on a command this agent handed over (None: not one)."""
        if msg.topic != topics.JOB_COMMAND:
            return None
        job = (msg.correlation_data or b"").decode(errors="replace")
        known = self._commands.get(job)
        if known is None:
            return Verified(b"", refused=TrustError("no such job command", code=ErrorCode.UNSIGNED))
        issuer, roles = known
        return Verified(
            msg.payload, actor=issuer, roles=roles, audit={"job": job, "issuer": issuer}
        )

    def on_command_reply(self, body: bytes, correlation: bytes | None) -> None:
        """The dispatcher's reply to a job's command: the job's final state."""
        job = (correlation or b"").decode(errors="replace")
        if self._commands.pop(job, None) is None:
            return
        try:
            reply = json.loads(body)
        except ValueError:
            reply = {}
        if reply.get("ok"):
            self.report(job, "succeeded", json.dumps(reply.get("result"))[:400])
        else:
            err = reply.get("error") or {}
            self.report(job, "failed", f"{err.get('code')}: {err.get('message')}")

    # -- configuration jobs: the signed document goes through the configuration push ---------

    def _config_file(self) -> Path:
        return self.updater.state_dir / g.JOURNAL_DIR / CONFIG_JOB

    def _config_job(self, job: Job) -> None:
        """Hand the job's signed configuration document (signed for this device by the fleet,
        verified again by the configuration push) over; its outcome, reported by the push
        after its own restart and trial, becomes the job's state (:meth:`_config_tick`)."""
        import base64

        from ..configpush import peek_version

        assert self.apply_config is not None
        try:
            doc = base64.b64decode(str(job.spec["document"]), validate=True)
        except (KeyError, ValueError):
            self.report(job.job, "failed", "config job spec needs the signed document")
            return
        path = self._config_file()
        if path.exists() and json.loads(path.read_text()).get("job") == job.job:
            return  # re-delivered retained copy
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"job": job.job, "version": peek_version(doc)}))
        tmp.replace(path)
        self.report(job.job, "in_progress", f"configuration v{peek_version(doc)}")
        self.apply_config(doc)

    def _config_tick(self) -> None:
        path = self._config_file()
        if self.config_outcome is None or not path.exists():
            return
        try:
            pending = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        outcome = self.config_outcome() or {}
        if outcome.get("version") != pending.get("version"):
            return
        state = {"applied": "succeeded", "rolled_back": "rolled_back", "rejected": "failed"}.get(
            str(outcome.get("status"))
        )
        if state is None:
            return  # applying / trial: later
        problems = "; ".join(str(x) for x in outcome.get("problems") or [])
        detail = ": ".join(x for x in (str(outcome.get("reason") or ""), problems) if x)
        self.report(pending["job"], state, str(detail))
        path.unlink(missing_ok=True)

    def _request(self, offset: int, length: int) -> None:
        assert self.fetcher is not None
        body = {"sha256": self.fetcher.download.sha256, "offset": offset, "length": length}
        self.publish(topics.update_get(self.prefix, self.device), json.dumps(body).encode(), False)

    def _on_chunk(self, payload: bytes) -> None:
        f = self.fetcher
        if f is None:
            return
        try:
            header, data = split_chunk(payload)
        except ValueError:
            return
        if f.on_chunk(header, data):
            self.fetcher = None
            self._stage(f.download.path)

    def _stage(self, bundle: Path) -> None:
        job = self.job
        assert job is not None

        def work() -> None:
            try:
                self.updater.stage(bundle, job=job.job)
                self.report(job.job, "in_progress", "installed; switching when idle")
            except ApplianceError as exc:
                self.report(job.job, "failed", f"{exc.code}: {exc.message}")

        self._staging = threading.Thread(target=work, name="update-stage", daemon=True)
        self._staging.start()

    def tick(self, health: Mapping[str, str] | None = None) -> None:
        """Main loop: re-ask a lost chunk, switch an installed release once idle (``health``:
        each device's state now, which the trial must reach again)."""
        with self._lock:
            self._config_tick()
            if self.fetcher is not None:
                self.fetcher.tick()
            j = self.updater.journal
            if j is None or j["state"] != "installed" or self.session_active():
                return
            if self._staging is not None and self._staging.is_alive():
                return
            try:
                self.updater.switch(baseline=dict(health or {}))
            except ApplianceError as exc:
                log.warning("update switch deferred: %s", exc.message)
                return
            self.request_restart(f"switching to {j.get('version')}")


def install_root() -> Path | None:
    """Where releases are installed side by side: ``$APPLIANCE_UPDATE_ROOT``, or the parent of
    ``releases/`` when this interpreter runs from ``<root>/releases/<version>``; None in a
    development checkout (updates are then not taken)."""
    env = os.environ.get("APPLIANCE_UPDATE_ROOT")
    if env:
        return Path(env)
    prefix = Path(sys.prefix)
    if prefix.parent.name == g.RELEASES:
        return prefix.parent.parent
    return None
