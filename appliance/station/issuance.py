"""The station's side of instant issuance: ask the centre for the issuance package of the
enrollment just submitted, and take only a verified answer (docs/local-api.md "Card issuance").

The request is plain ``{"enrollment": "<package id>"}`` on ``{prefix}/{device}/card/request``;
answers arrive on ``{prefix}/{device}/card/issuance`` (:meth:`IssuanceClient.on_message`, the
network thread) and are verified there (:func:`verify_issuance_answer`: chain to a fleet root,
signature, the ``ingest`` role, this device). An answer that does not verify is dropped and
counted; the station keeps asking until a good one comes or its deadline passes. Nothing of an
answer is written anywhere: after a restart the station simply asks again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence

from ..capabilities.card_delivery import IssuanceAnswer, verify_issuance_answer
from ..errors import ApplianceError, CommandError
from ..protocol.codes import ErrorCode
from ..protocol.topics import Topics

log = logging.getLogger(__name__)

ASK_EVERY_S = 2.0  # while the centre answers "pending" (the package is being verified)


class IssuanceClient:
    def __init__(
        self,
        *,
        topics: Topics,
        publish: Callable[[str, bytes], bool],
        roots: Sequence[bytes],
        revoked: Collection[str] = (),
        now: Callable[[], float] = time.time,
    ) -> None:
        self.topics = topics
        self._publish = publish
        self.roots = list(roots)
        self.revoked = list(revoked)
        self._now = now
        self._cv = threading.Condition()
        # Answers for the enrollments being waited for only: a package holds the portrait (DG2),
        # so nothing of it stays in memory after its wait (nor arrives for nobody).
        self._answers: dict[str, IssuanceAnswer] = {}
        self._waiting: set[str] = set()
        self.refused = 0  # answers that did not verify, all time
        self.last_refusal: dict[str, object] | None = None

    @property
    def subscription(self) -> str:
        return self.topics.card_issuance

    def on_message(self, topic: str, payload: bytes) -> None:
        if topic != self.topics.card_issuance:
            return
        try:
            answer = verify_issuance_answer(
                payload,
                self.roots,
                device_id=self.topics.device,
                now=self._now(),
                revoked=self.revoked,
            )
        except ApplianceError as exc:
            log.warning("issuance answer refused: %s: %s", exc.code, exc.message)
            with self._cv:
                self.refused += 1
                self.last_refusal = exc.to_dict()
                self._cv.notify_all()
            return
        with self._cv:
            if answer.enrollment in self._waiting:
                self._answers[answer.enrollment] = answer
                self._cv.notify_all()

    def ask(self, enrollment: str) -> bool:
        body = json.dumps({"enrollment": enrollment}).encode()
        return self._publish(self.topics.card_request, body)

    def wait(
        self,
        enrollment: str,
        *,
        timeout_s: float,
        cancelled: threading.Event | None = None,
        ask_every_s: float = ASK_EVERY_S,
    ) -> IssuanceAnswer:
        """The centre's ``ready`` answer for ``enrollment``. ``issuance_refused`` (the
        centre's cause in ``details.cause``), ``issuance_timeout`` (nothing good in
        ``timeout_s``; ``details.last_refusal``: the last answer that did not verify) or
        ``cancelled``."""
        with self._cv:
            self._waiting.add(enrollment)
        try:
            return self._wait(enrollment, timeout_s, cancelled, ask_every_s)
        finally:
            with self._cv:
                self._waiting.discard(enrollment)
                self._answers.pop(enrollment, None)

    def _wait(
        self,
        enrollment: str,
        timeout_s: float,
        cancelled: threading.Event | None,
        ask_every_s: float,
    ) -> IssuanceAnswer:
        deadline = time.monotonic() + timeout_s
        while True:
            if cancelled is not None and cancelled.is_set():
                raise CommandError("the card step was cancelled", code=ErrorCode.CANCELLED)
            left = deadline - time.monotonic()
            if left <= 0:
                raise ApplianceError(
                    f"no issuance package from the centre for {enrollment} in {timeout_s:.0f} s",
                    code=ErrorCode.ISSUANCE_TIMEOUT,
                    retryable=True,
                    details={"enrollment": enrollment, "last_refusal": self.last_refusal},
                )
            self.ask(enrollment)
            until = time.monotonic() + min(ask_every_s, left)
            with self._cv:
                while True:
                    answer = self._answers.get(enrollment)
                    if answer is not None and answer.status != "pending":
                        break
                    if answer is not None:  # pending: ask again at the next round
                        self._answers.pop(enrollment, None)
                    rest = until - time.monotonic()
                    if rest <= 0 or (cancelled is not None and cancelled.is_set()):
                        answer = None
                        break
                    self._cv.wait(min(rest, 0.25))
            if answer is None:
                continue
            if answer.status == "refused":
                raise ApplianceError(
                    f"the centre will not issue a card: {answer.message or answer.code}",
                    code=ErrorCode.ISSUANCE_REFUSED,
                    details={"cause": answer.code, "enrollment": enrollment},
                )
            return answer
