"""The outbox delivery acknowledgement: the fleet's ingest tells a kiosk which events it stored.

With ``mqtt.delivery = "end_to_end"`` a kiosk keeps each outbox row after the broker's PUBACK,
until the ingest that stored the event acknowledges it on ``{prefix}/{device}/outbox/ack``
(docs/protocol.md, "Delivery acknowledgement"; docs/reliability.md section 1: a broker
acknowledges QoS 1 before the message is on disk, so a broker crash loses what only it held).

Document (``signeddoc``; type ``appliance.outbox-ack.v1``, context
``appliance/outbox-ack/v1``, role ``ingest``)::

    body = {"device": "kiosk-001", "issued_at": 1800000000, "issuer": "<key id>",
            "ranges": [[first_seq, last_seq, "<event id of last_seq>"], ...]}

Every range names the id of its last event: the kiosk deletes ``first..last`` only if its row
``last_seq`` carries that id. So an acknowledgement meant for an earlier life of the kiosk's
database (re-provisioned, seq restarted) or for another stream deletes nothing, and a replay
is harmless (the rows are already gone).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

from ..errors import TrustError
from ..protocol.codes import ErrorCode
from .certs import OperatorKey
from .signeddoc import sign_document, unsigned_document, verify_document

OUTBOX_ACK_TYPE = "appliance.outbox-ack.v1"
CTX_OUTBOX_ACK = b"appliance/outbox-ack/v1"
OUTBOX_ACK_ROLES = frozenset({"ingest"})
MAX_RANGES = 1000
MAX_OUTBOX_ACK_BYTES = 128 * 1024

Range = tuple[int, int, str]


def _fields(ranges: Iterable[Range]) -> dict[str, Any]:
    out = [[a, b, eid] for a, b, eid in ranges]
    if not out or len(out) > MAX_RANGES:
        raise ValueError(f"an outbox acknowledgement names 1 to {MAX_RANGES} ranges")
    return {"ranges": out}


def build_outbox_ack(
    key: OperatorKey | None,
    device_id: str,
    ranges: Iterable[Range],
    *,
    issued_at: int | None = None,
) -> bytes:
    """Ingest side. ``key`` None: an unsigned acknowledgement, for kiosks in development mode."""
    fields = _fields(ranges)
    if key is None:
        return unsigned_document(OUTBOX_ACK_TYPE, device_id, fields)
    return sign_document(
        key, OUTBOX_ACK_TYPE, CTX_OUTBOX_ACK, device_id, fields, issued_at=issued_at
    )


def verify_outbox_ack(
    data: bytes,
    roots: Sequence[bytes],
    *,
    device_id: str,
    now: float,
    revoked: Collection[str] = (),
    allow_unsigned: bool = False,
) -> tuple[str, list[Range]]:
    """Kiosk side: ``(issuer, ranges)``; ``TrustError`` with the codes of
    :func:`signeddoc.verify_document`, or ``malformed_envelope`` for bad ranges."""
    doc = verify_document(
        data,
        roots,
        typ=OUTBOX_ACK_TYPE,
        context=CTX_OUTBOX_ACK,
        device_id=device_id,
        roles=OUTBOX_ACK_ROLES,
        now=now,
        revoked=revoked,
        max_bytes=MAX_OUTBOX_ACK_BYTES,
        allow_unsigned=allow_unsigned,
        what="outbox acknowledgement",
    )
    items = doc.body.get("ranges")
    if not isinstance(items, list) or not 0 < len(items) <= MAX_RANGES:
        raise TrustError(
            f"outbox acknowledgement ranges must be a list of 1 to {MAX_RANGES}",
            code=ErrorCode.MALFORMED_ENVELOPE,
        )
    ranges: list[Range] = []
    for item in items:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or not all(type(v) is int for v in item[:2])
            or not isinstance(item[2], str)
            or not 1 <= item[0] <= item[1]
        ):
            raise TrustError(
                "each acknowledged range is [first_seq, last_seq, event id], 1 <= first <= last",
                code=ErrorCode.MALFORMED_ENVELOPE,
            )
        ranges.append((item[0], item[1], item[2]))
    return doc.issuer, ranges
