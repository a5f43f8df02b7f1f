"""Command dispatch: decode, validate, execute at most once, reply.

Order of checks for a message on a command topic (each refusal is ONE error reply naming the
request id whenever it can be read, ONE audit row, and a log line; the daemon never dies of
input):

1. size against ``commands.max_payload_bytes``         -> ``payload_too_large``
2. the trust layer's verification, if one is installed  -> its codes (``unsigned``, ...,
   ``unknown_command`` / ``forbidden_role`` for an authenticated envelope; docs/trust.md)
3. JSON object                                          -> ``invalid_json``
4. request shape ``{id, cmd, args}``                    -> ``invalid_request``
5. known command                                        -> ``unknown_command``
6. the signer's roles against the command's role        -> ``forbidden_role``
7. an id already recorded: the stored first reply (or ``in_progress`` / ``interrupted``);
   an id recorded for another command                   -> ``invalid_request``
8. arguments against the command's pydantic model      -> ``invalid_args``
9. intrusive command during an enrollment session       -> ``busy``
10. the id claimed in the store *before* the handler runs (a race with step 7 is settled here
    the same way), so a command id is executed at most once even across ``kill -9``.

A signed envelope the trust layer accepted as a re-delivery (``Verified.repeat``: the id already
ran, so its replay state was not checked) is only ever answered from the store, never run.

Replies go to the MQTT 5 response topic with the request's correlation data, else to the
documented reply topic ``{prefix}/{device}/reply`` (MQTT 3.1.1 clients).
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import ValidationError

from .commands import CommandContext, CommandRegistry, CommandSpec
from .errors import ApplianceError, CommandError, CommandTimeout
from .inbound import (
    CommandRequest,
    Incoming,
    ParsedRequest,
    Reply,
    Verified,
    Verifier,
    parse_request,
    problems,
)
from .protocol.codes import ErrorCode
from .protocol.messages import ErrorBody, ReplyMessage
from .store import Store
from .trust.certs import ROLES

log = logging.getLogger(__name__)

#: Messages admitted together in one store transaction at most (the inbound thread's batch).
BATCH_MAX = 32


#: The reply model is the wire contract's (protocol/messages.py): the kiosk renders with the
#: same class the fleet tools and the centre parse with.
CommandReply = ReplyMessage


#: Refusal codes of the admission checks, in the order they are checked (docs/protocol.md);
#: the trust layer's own codes (docs/trust.md) come in at step 2.
ADMISSION_CODES = (
    ErrorCode.PAYLOAD_TOO_LARGE,
    ErrorCode.INVALID_JSON,
    ErrorCode.INVALID_REQUEST,
    ErrorCode.UNKNOWN_COMMAND,
    ErrorCode.FORBIDDEN_ROLE,
    ErrorCode.INVALID_ARGS,
    ErrorCode.BUSY,
)


class Deadlines:
    """One thread that fires command timeouts (instead of a timer thread per command)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cancelled: set[int] = set()
        self._cond = threading.Condition()
        self._counter = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="deadlines", daemon=True)
        self._thread.start()

    def add(self, when: float, fn: Callable[[], None]) -> int:
        with self._cond:
            self._counter += 1
            heapq.heappush(self._heap, (when, self._counter, fn))
            self._cond.notify()
            return self._counter

    def cancel(self, handle: object) -> None:
        with self._cond:
            if isinstance(handle, int):
                self._cancelled.add(handle)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        _when, handle, fn = heapq.heappop(self._heap)
                        if handle in self._cancelled:
                            self._cancelled.discard(handle)
                            continue
                        break
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
                else:
                    return
            try:
                fn()
            except Exception:
                log.exception("timeout handler failed")


class GroupCommit:
    """Durability of admitted commands without an fsync on the network thread: the dispatcher
    commits with ``durable=False`` and hands over what must wait until that commit is on disk
    (the hand-off to a worker, replies); this thread makes every commit so far durable with one
    :meth:`Store.sync` and only then runs those actions. Commands admitted while a sync runs
    share the next one (group commit). A failed sync runs nothing: a claimed command stays
    ``running`` in the store and is closed as ``interrupted`` at the next start."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._waiting: list[Callable[[], object]] = []
        self._cond = threading.Condition()
        self._closed = False
        self.syncs = 0
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    def after_sync(self, actions: list[Callable[[], object]]) -> None:
        with self._cond:
            self._waiting.extend(actions)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if not self._waiting:
                    return
                batch, self._waiting = self._waiting, []
            try:
                self._store.sync()
            except ApplianceError as exc:
                log.error("%d command action(s) dropped: %s", len(batch), exc.message)
                continue
            self.syncs += 1
            for action in batch:
                try:
                    action()
                except Exception:
                    log.exception("command action after the group commit failed")


class Dispatcher:
    def __init__(
        self,
        registry: CommandRegistry,
        store: Store,
        publish: Callable[..., bool],
        reply_topic: str,
        *,
        emit: Callable[..., tuple[int, str] | None],
        max_payload: int,
        workers: int,
        verifier: Verifier | None = None,
        session_active: Callable[[], bool] = lambda: False,
    ) -> None:
        self.registry = registry
        self.store = store
        self._publish = publish
        self.reply_topic = reply_topic
        self.emit = emit
        self.max_payload = max_payload
        self.verifier = verifier
        self.session_active = session_active
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cmd")
        self._deadlines = Deadlines()
        self._group = GroupCommit(store)
        self._local = threading.local()
        self._running: set[str] = set()
        self._running_lock = threading.Lock()
        self.executed = 0
        self.rejected = 0
        # The hand-off from the MQTT network thread (submit) to the inbound thread: a
        # SimpleQueue (one C-level lock, no Condition round trip); None closes it.
        self._inbox: queue.SimpleQueue[Incoming | None] = queue.SimpleQueue()
        self._inbox_closed = False
        self._inbound_thread = threading.Thread(target=self._inbound, name="inbound", daemon=True)
        self._inbound_thread.start()

    def close(self) -> None:
        self._inbox_closed = True
        self._inbox.put(None)
        self._inbound_thread.join(timeout=5)
        self._group.close()
        self._deadlines.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def mark_interrupted(self) -> int:
        """At start: commands that were running when the daemon died are closed with an
        ``interrupted`` reply (never re-run: at most once), which a repeat then receives."""
        n = 0
        for cid, name in self.store.commands.interrupted():
            reply = CommandReply(
                id=cid,
                cmd=name,
                ok=False,
                error=ErrorBody(
                    code=ErrorCode.INTERRUPTED,
                    message="the daemon stopped while this command ran; it was "
                    "not completed and will not be re-run",
                ),
            )
            if self.store.commands.finish(cid, reply.to_json()):
                n += 1
        return n

    # -- entry points ---------------------------------------------------------------------------

    def submit(self, msg: Incoming) -> None:
        """Queue one message for the ``inbound`` thread and return at once: what the MQTT
        network thread calls, so it goes back to reading the socket (docs/architecture.md
        section 4). Messages are admitted in the order they were submitted."""
        if self._inbox_closed:
            # Not acknowledged: the broker delivers it again at the next start.
            log.warning("command on %s not admitted: the dispatcher is closing", msg.topic)
            return
        self._inbox.put(msg)

    def _inbound(self) -> None:
        """The ``inbound`` thread: verification, admission and read-only commands, in arrival
        order; whatever arrived meanwhile (up to :data:`BATCH_MAX`) is admitted in ONE store
        transaction. A message queued after :meth:`close` is never admitted nor acknowledged
        (the broker delivers it again at the next start)."""
        inbox = self._inbox
        while True:
            first = inbox.get()
            if first is None:
                return
            batch = [first]
            closing = False
            while len(batch) < BATCH_MAX:
                try:
                    more = inbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    closing = True
                    break
                batch.append(more)
            try:
                self.handle_batch(batch)
            except Exception:  # never dies of input: anything here is a bug, logged
                log.exception("inbound batch of %d message(s) failed", len(batch))
            if closing:
                return

    def handle(self, msg: Incoming) -> None:
        """Admit one message now, in the calling thread (tests, tools); see
        :meth:`handle_batch`."""
        self.handle_batch([msg])

    def handle_batch(self, msgs: list[Incoming]) -> None:
        """Admit messages in order. Everything they write (the trust layer's replay state, the
        command-id claims or read-only commands' replies, audit rows) goes into ONE
        transaction, committed without waiting for the disk. A read-only command that ran is
        answered at once: losing its record to a power cut loses nothing (a repeat runs it
        again, changing nothing). Everything else (the hand-off to a worker, a refusal, a
        repeat's answer) waits in :class:`GroupCommit` until the commit is durable, so nothing
        runs on a claim that is not on disk, and commands arriving together share one fsync.
        If the store fails, nothing of the batch was recorded and each message is admitted
        again on its own, so one failure costs only its own message."""
        admitted: list[tuple[list[Callable[[], object]], bool]] = []
        claimed: list[str] = []
        self._local.claimed = claimed
        try:
            with self.store.transaction(durable=False):
                for msg in msgs:
                    admitted.append(self._admit_one(msg))
        except ApplianceError as exc:  # the store itself failed: nothing was recorded
            with self._running_lock:
                self._running.difference_update(claimed)
            if len(msgs) > 1:
                log.warning("batch of %d not admitted (%s): one by one", len(msgs), exc.message)
                for msg in msgs:
                    self.handle_batch([msg])
                return
            log.error("command not admitted, store failure: %s", exc.message)
            msg = msgs[0]
            self._ack(msg)  # answered with the failure: not delivered again
            reply_to = self._reply_destination(msg)
            failure = CommandReply(id=None, ok=False, error=ErrorBody(**exc.to_dict()))
            self._publish_reply(reply_to, msg.correlation_data, failure.to_json().encode())
            return
        waiting: list[Callable[[], object]] = []
        # The read-only replies are collected (by _publish_reply) and handed to the transport
        # with the PUBACKs: one wake-up of the network thread for the whole batch.
        outgoing: list[Reply] = []
        self._local.outgoing = outgoing
        try:
            for deferred, lazy in admitted:
                if lazy:
                    for action in deferred:
                        action()
                else:
                    waiting.extend(deferred)
        finally:
            self._local.outgoing = None
        # Admitted (committed, not yet durable: as when admission ran in paho's callback): now
        # the broker may forget them. After the read-only replies, as paho's own PUBACK came
        # after the callback that answered them, so the reply is not queued behind it.
        handover = msgs[0].handover
        if handover is not None:
            try:
                handover(outgoing, [m.ack for m in msgs if m.ack is not None])
            except Exception:  # a transport bug must not stop the admission of the rest
                log.exception("handing %d reply(s) to the transport failed", len(outgoing))
        else:
            for topic, body, corr in outgoing:
                self._publish_reply(topic, corr, body)
            for msg in msgs:
                self._ack(msg)
        if waiting:
            self._group.after_sync(waiting)

    @staticmethod
    def _ack(msg: Incoming) -> None:
        if msg.ack is not None:
            try:
                msg.ack()
            except Exception:  # acknowledging must never stop the admission of the rest
                log.exception("acknowledging a command message failed")

    def _admit_one(self, msg: Incoming) -> tuple[list[Callable[[], object]], bool]:
        """One message inside the batch's transaction: its deferred actions, and whether they
        may run at once (``lazy``: nothing in them must survive a power cut)."""
        t0 = time.perf_counter()
        deferred: list[Callable[[], object]] = []
        self._local.deferred = deferred
        self._local.lazy = False
        try:
            self._admit(msg, self._reply_destination(msg), t0)
        finally:
            self._local.deferred = None
        return deferred, bool(self._local.lazy)

    def _defer(self, action: Callable[[], object]) -> None:
        deferred = getattr(self._local, "deferred", None)
        if deferred is None:
            action()
        else:
            deferred.append(action)

    def _admit(self, msg: Incoming, reply_to: str, t0: float) -> None:
        actor = "anonymous"
        cid: str | None = None
        name: str | None = None
        trust: dict[str, Any] = {}
        try:
            if len(msg.payload) > self.max_payload:
                raise CommandError(
                    f"payload of {len(msg.payload)} bytes exceeds the maximum {self.max_payload}",
                    code=ErrorCode.PAYLOAD_TOO_LARGE,
                    details={"size": len(msg.payload), "max": self.max_payload},
                )
            try:
                verified = (
                    self.verifier(msg) if self.verifier else Verified(msg.payload, roles=ROLES)
                )
            except ApplianceError:
                plain = parse_request(msg.payload)  # a plain request's id, if readable
                cid, name = plain.id, plain.cmd
                raise
            actor = verified.actor
            if verified.audit is not None:
                trust = {"trust": verified.audit}
            if verified.refused is not None:
                cid, name = verified.request_id, verified.command
                raise verified.refused
            parsed: ParsedRequest = verified.request or parse_request(verified.payload)
            cid, name = parsed.id, parsed.cmd
            if parsed.problem is not None:
                raise parsed.problem
            request = parsed.request
            assert request is not None  # a ParsedRequest has a request or a problem

            if verified.repeat:
                # Authenticated, but its replay state was not checked: answer from the store or
                # refuse; never run.
                known = self.store.commands.lookup(request.id)
                if known is None or known[0] != request.cmd:
                    raise CommandError(
                        f"command id {request.id} has no stored reply", code=ErrorCode.REPLAYED
                    )
                self._answer_known(request, known, actor, trust, reply_to, msg.correlation_data)
                return
            spec = self.registry.get(request.cmd)
            if spec.role not in verified.roles:
                raise CommandError(
                    f"role {spec.role!r} required for {spec.name}",
                    code=ErrorCode.FORBIDDEN_ROLE,
                    details={"required": spec.role, "have": sorted(verified.roles)},
                )
            known = self.store.commands.lookup(request.id)
            if known is not None:
                self._answer_known(request, known, actor, trust, reply_to, msg.correlation_data)
                return
            try:
                args = spec.args_model.model_validate(request.args)
            except ValidationError as exc:
                raise CommandError(
                    f"invalid arguments for {spec.name}",
                    code=ErrorCode.INVALID_ARGS,
                    details={"problems": problems(exc)},
                ) from None
            if spec.intrusive and self.session_active():
                raise CommandError(
                    f"{spec.name} must wait: an enrollment session is active",
                    code=ErrorCode.BUSY,
                    retryable=True,
                )
        except ApplianceError as exc:
            self.rejected += 1
            log.warning(
                "command refused: id=%s cmd=%s code=%s: %s", cid, name, exc.code, exc.message
            )
            self._safe_audit(actor, name or "?", exc.code, id=cid, topic=msg.topic, **trust)
            self._send(
                reply_to,
                msg.correlation_data,
                CommandReply(id=cid, cmd=name, ok=False, error=ErrorBody(**exc.to_dict())),
            )
            return

        if spec.readonly:
            self._run_readonly(
                spec, request, args, actor, trust, reply_to, msg.correlation_data, t0
            )
            return
        claimed, stored, state = self.store.commands.begin(
            request.id, request.cmd, actor, trust or None
        )
        if not claimed:
            self._answer_repeat(request, stored, state, reply_to, msg.correlation_data)
            return
        with self._running_lock:
            self._running.add(request.id)
        self._local.claimed.append(request.id)
        ctx = self._context(request.id, spec.name, spec.timeout_s)
        # The deadline is armed with the hand-off, once the claim is durable: a claim rolled
        # back with its batch has no timer left to fire on a later claim of the same id.
        self._defer(
            lambda: self._start(spec.handler, ctx, args, reply_to, msg.correlation_data, t0)
        )

    def _start(
        self,
        handler: Callable[[CommandContext, Any], dict[str, Any]],
        ctx: CommandContext,
        args: Any,
        reply_to: str,
        corr: bytes | None,
        t0: float,
    ) -> None:
        handle = self._deadlines.add(ctx.deadline, lambda: self._on_timeout(ctx, reply_to, corr))
        self._pool.submit(self._execute, handler, ctx, args, reply_to, corr, handle, t0)

    def _context(self, cid: str, name: str, timeout_s: float) -> CommandContext:
        cancelled = threading.Event()
        return CommandContext(
            command_id=cid,
            name=name,
            deadline=time.monotonic() + timeout_s,
            emit=self._guarded_emit(cid, name, cancelled),
            cancelled=cancelled,
        )

    def _guarded_emit(
        self, cid: str, name: str, cancelled: threading.Event
    ) -> Callable[..., tuple[int, str] | None]:
        """The command's ``ctx.emit``: once its timeout reply is stored, a durable event is
        refused (``timeout``, raised into the handler: a safe point where it stops) instead of
        written, so nothing a command records after its timeout reply reaches the outbox. The
        check and the write run under ``Store.lock``, which the timeout holds while it sets
        ``cancelled`` and stores its reply: the event is in the outbox before the timeout
        reply, or not at all. A transient event (progress, guidance: ``durable=False``) after
        the timeout is dropped without raising: it changes nothing, and device code reports
        progress at points that are not all safe to stop at (the chip encoder's read-back
        step must still report a written card as spoiled). Events a device sends itself
        (``card.spoiled``, ``device.health``) do not go through here."""

        def emit(*args: Any, **kwargs: Any) -> tuple[int, str] | None:
            if not kwargs.get("durable", True):
                return None if cancelled.is_set() else self.emit(*args, **kwargs)
            with self.store.lock:
                if not cancelled.is_set():
                    return self.emit(*args, **kwargs)
            log.warning("command %s (%s): event after its timeout refused", cid, name)
            raise CommandTimeout(f"{name} was cancelled by its timeout")

        return emit

    def _answer_known(
        self,
        request: CommandRequest,
        known: tuple[str, str, str | None],
        actor: str,
        trust: dict[str, Any],
        reply_to: str,
        corr: bytes | None,
    ) -> None:
        """A request whose id is already recorded: the stored first reply (one ``repeat`` audit
        row), or ``invalid_request`` if the id was used for another command (whose reply this
        sender is not entitled to: it may lack that command's role)."""
        name, state, stored = known
        if name != request.cmd:
            self.rejected += 1
            err = CommandError(
                f"command id {request.id} was already used for another command; choose a new id",
                code=ErrorCode.INVALID_REQUEST,
                details={"problems": ["id: already used for another command"]},
            )
            log.warning("command refused: id=%s cmd=%s: id reused", request.id, request.cmd)
            self._safe_audit(
                actor, request.cmd, err.code, id=request.id, reason="id reused", **trust
            )
            self._send(
                reply_to,
                corr,
                CommandReply(
                    id=request.id, cmd=request.cmd, ok=False, error=ErrorBody(**err.to_dict())
                ),
            )
            return
        self._safe_audit(actor, request.cmd, "repeat", id=request.id, state=state, **trust)
        self._answer_repeat(request, stored, state, reply_to, corr)

    def _answer_repeat(
        self,
        request: CommandRequest,
        stored: str | None,
        state: str,
        reply_to: str,
        corr: bytes | None,
    ) -> None:
        with self._running_lock:
            running_here = request.id in self._running
        if stored is not None:
            log.info("command %s repeated: sending the stored reply", request.id)
            self._send_raw(reply_to, corr, stored.encode())
            return
        self._send(
            reply_to,
            corr,
            CommandReply(
                id=request.id,
                cmd=request.cmd,
                ok=False,
                error=ErrorBody(
                    code=ErrorCode.IN_PROGRESS if running_here else ErrorCode.INTERRUPTED,
                    message=f"command id {request.id} is {state}",
                ),
            ),
        )

    def _run_readonly(
        self,
        spec: CommandSpec[Any],
        request: CommandRequest,
        args: Any,
        actor: str,
        trust: dict[str, Any],
        reply_to: str,
        corr: bytes | None,
        t0: float,
    ) -> None:
        """Read-only commands (ping, status, ...) run at once on the ``inbound`` thread and are
        recorded with their reply in the admission's transaction, answered without waiting for
        the disk (no fsync; the reply goes to the transport with the batch's PUBACKs). A crash
        or a power cut before the record is on disk can only make a repeat run a read-only
        command again, which changes nothing, so the at-most-once rule still holds for every
        command with an effect."""
        ctx = self._context(request.id, spec.name, spec.timeout_s)
        reply, outcome = self._call(spec.handler, ctx, args)
        body = reply.to_json()
        if self.store.commands.record(request.id, request.cmd, actor, body, outcome, trust or None):
            self._local.lazy = True  # nothing here must survive a power cut
            self._send_raw(reply_to, corr, body.encode())
        else:  # the same id raced in twice: the first recorded reply is the reply
            again = self.store.commands.stored_reply(request.id)
            if again is not None:
                self._answer_repeat(request, again[0], again[1], reply_to, corr)
        self.executed += 1
        log.debug(
            "command %s (%s) %s in %.2f ms",
            request.id,
            spec.name,
            outcome,
            (time.perf_counter() - t0) * 1000,
        )

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _call(
        handler: Callable[[CommandContext, Any], dict[str, Any]], ctx: CommandContext, args: Any
    ) -> tuple[CommandReply, str]:
        try:
            result = handler(ctx, args)
            return CommandReply(id=ctx.command_id, cmd=ctx.name, ok=True, result=result), "ok"
        except ApplianceError as exc:
            log.warning(
                "command %s (%s) failed: %s: %s", ctx.command_id, ctx.name, exc.code, exc.message
            )
            reply = CommandReply(
                id=ctx.command_id, cmd=ctx.name, ok=False, error=ErrorBody(**exc.to_dict())
            )
            return reply, exc.code
        except Exception as exc:  # a handler bug must not kill the worker or the daemon
            log.exception("command %s (%s) crashed", ctx.command_id, ctx.name)
            reply = CommandReply(
                id=ctx.command_id,
                cmd=ctx.name,
                ok=False,
                error=ErrorBody(
                    code=ErrorCode.INTERNAL_ERROR, message=f"{type(exc).__name__}: {exc}"
                ),
            )
            return reply, ErrorCode.INTERNAL_ERROR

    def _execute(
        self,
        handler: Callable[[CommandContext, Any], dict[str, Any]],
        ctx: CommandContext,
        args: Any,
        reply_to: str,
        corr: bytes | None,
        deadline: object,
        t0: float,
    ) -> None:
        try:
            reply, outcome = self._call(handler, ctx, args)
        finally:
            self._deadlines.cancel(deadline)
            with self._running_lock:
                self._running.discard(ctx.command_id)
        self._finish(ctx, reply, outcome, reply_to, corr)
        self.executed += 1
        log.debug(
            "command %s (%s) %s in %.2f ms",
            ctx.command_id,
            ctx.name,
            outcome,
            (time.perf_counter() - t0) * 1000,
        )

    def _on_timeout(self, ctx: CommandContext, reply_to: str, corr: bytes | None) -> None:
        """The deadline passed: ``cancelled`` is set and the ``timeout`` reply stored in one
        step under ``Store.lock`` (see :meth:`_guarded_emit`); the handler's late result
        then finds the command finished and is neither stored nor sent (:meth:`_finish`)."""
        reply = CommandReply(
            id=ctx.command_id,
            cmd=ctx.name,
            ok=False,
            error=ErrorBody(code=ErrorCode.TIMEOUT, message=f"{ctx.name} did not finish in time"),
        )
        with self.store.lock:
            ctx.cancelled.set()
            self._finish(ctx, reply, ErrorCode.TIMEOUT, reply_to, corr)

    def _finish(
        self,
        ctx: CommandContext,
        reply: CommandReply,
        outcome: str,
        reply_to: str,
        corr: bytes | None,
    ) -> None:
        body = reply.to_json()
        stored = body
        unstored = self.registry.get(ctx.name).unstored
        if unstored and reply.result:
            kept = {k: ("(not stored)" if k in unstored else v) for k, v in reply.result.items()}
            stored = reply.model_copy(update={"result": kept}).to_json()
        try:
            # Committed without waiting for the disk; the reply leaves once the group commit
            # made it durable (shared with the commands finishing or admitted meanwhile), so a
            # repeat after a power cut still gets this first reply.
            first = self.store.commands.finish(ctx.command_id, stored, outcome, durable=False)
        except ApplianceError:
            log.exception("command %s: storing the reply failed", ctx.command_id)
            self._send_raw(reply_to, corr, body.encode())
            return
        if first:
            self._group.after_sync([lambda: self._send_raw(reply_to, corr, body.encode())])

    def _reply_destination(self, msg: Incoming) -> str:
        if msg.response_topic:
            try:
                for level in msg.response_topic.split("/"):
                    if level in ("+", "#") or "\x00" in level:
                        raise ValueError(level)
                return msg.response_topic
            except ValueError:
                log.warning("ignoring invalid response topic %r", msg.response_topic)
        return self.reply_topic

    def _send(self, topic: str, corr: bytes | None, reply: CommandReply) -> None:
        self._send_raw(topic, corr, reply.to_json().encode())

    def _send_raw(self, topic: str, corr: bytes | None, body: bytes) -> None:
        self._defer(lambda: self._publish_reply(topic, corr, body))

    def _publish_reply(self, topic: str, corr: bytes | None, body: bytes) -> None:
        outgoing: list[Reply] | None = getattr(self._local, "outgoing", None)
        if outgoing is not None:  # a batch's read-only reply: sent with its PUBACKs
            outgoing.append((topic, body, corr))
            return
        if not self._publish(topic, body, qos=1, correlation_data=corr):
            log.info("reply to %s not sent (offline); a repeat of the command gets it", topic)

    def _safe_audit(self, actor: str, action: str, outcome: str, **details: Any) -> None:
        try:
            self.store.audit(actor, action, outcome, **details)
        except ApplianceError:
            log.exception("audit write failed")


# CommandRequest lives in inbound.py (parsed once on the way in) and is re-exported here for the
# schemas (protocol.py).
__all__ = [
    "ADMISSION_CODES",
    "BATCH_MAX",
    "CommandReply",
    "CommandRequest",
    "Deadlines",
    "Dispatcher",
    "ErrorBody",
    "GroupCommit",
]
