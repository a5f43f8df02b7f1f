"""Ingest side of end-to-end delivery: acknowledge the events this ingest has stored.

Kiosks with ``mqtt.delivery = "end_to_end"`` keep every outbox event until an ingest says it
stored it (trust/outboxack.py). An ingest calls :meth:`OutboxAcker.stored` once an event is
in its own store (duplicates too: the kiosk re-sent it because the acknowledgement did not
reach it); a background thread batches, per kiosk, the stored ``seq`` values into ranges every
``interval_s`` and publishes one acknowledgement per kiosk on ``{prefix}/{device}/outbox/ack``
(QoS 1), signed with an ``ingest`` certificate (``key``), or unsigned for kiosks in
development mode (``key=None``).

Ranges name only what this instance stored, never "everything up to": with shared
subscriptions every instance sees a part of each kiosk's stream, and a seq missing here (lost
by a broker crash) stays unacknowledged, so the kiosk sends it again.

A failed publish keeps the batch for the next round; a lost acknowledgement costs only a
re-sent event, which the ingest drops by ``id`` and acknowledges again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..protocol.topics import Topics, validate_segment
from ..trust.certs import OperatorKey
from ..trust.outboxack import MAX_RANGES, Range, build_outbox_ack

log = logging.getLogger(__name__)


def to_ranges(seqs: dict[int, str]) -> list[Range]:
    """``{seq: event id}`` as sorted contiguous ranges ``(first, last, id of last)``."""
    out: list[Range] = []
    first = prev = None
    for seq in sorted(seqs):
        if prev is not None and seq == prev + 1:
            prev = seq
            continue
        if first is not None and prev is not None:
            out.append((first, prev, seqs[prev]))
        first = prev = seq
    if first is not None and prev is not None:
        out.append((first, prev, seqs[prev]))
    return out


class OutboxAcker:
    """Batches and publishes outbox acknowledgements. ``publish(topic, payload) -> bool``
    must send at QoS 1 (thread-safe); False keeps the batch for the next round."""

    def __init__(
        self,
        publish: Callable[[str, bytes], bool],
        *,
        key: OperatorKey | None,
        prefix: str = "kiosk",
        interval_s: float = 0.2,
        before_flush: Callable[[], None] | None = None,
    ) -> None:
        self.publish = publish
        # Called before a round is acknowledged: make what was stored durable (e.g. fsync).
        self.before_flush = before_flush
        self.key = key
        self.prefix = validate_segment(prefix, "topic prefix")
        self.interval_s = interval_s
        self._pending: dict[str, dict[int, str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-acker", daemon=True)
        self.sent = 0  # acknowledgements published
        self.acked = 0  # events they named
        self.failed = 0

    def start(self) -> OutboxAcker:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Flush what is pending, then stop."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self.flush()

    def stored(self, device: str, seq: int, event_id: str) -> None:
        """The event is in this ingest's store (or was already): acknowledge it."""
        with self._lock:
            self._pending.setdefault(device, {})[seq] = event_id

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, {}
        if batch and self.before_flush is not None:
            self.before_flush()
        for device, seqs in batch.items():
            ranges = to_ranges(seqs)
            for i in range(0, len(ranges), MAX_RANGES):
                part = ranges[i : i + MAX_RANGES]
                try:
                    topic = Topics(self.prefix, device).outbox_ack
                    ok = self.publish(topic, build_outbox_ack(self.key, device, part))
                except (ValueError, OSError) as exc:
                    log.warning("outbox acknowledgement to %s not sent: %s", device, exc)
                    ok = False
                if ok:
                    self.sent += 1
                    self.acked += sum(b - a + 1 for a, b, _ in part)
                    continue
                self.failed += 1
                with self._lock:  # retry with the next round (newer entries win)
                    keep = self._pending.setdefault(device, {})
                    for a, b, _eid in part:
                        for seq in range(a, b + 1):
                            keep.setdefault(seq, seqs[seq])

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.flush()
            except Exception:  # the acker must outlive any one bad round
                log.exception("outbox acker: flush failed")
