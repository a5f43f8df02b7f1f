"""The outbox delivery acknowledgement (trust/outboxack.py): who may send one, for which kiosk,
and what a kiosk deletes on it (store.Outbox.ack_ranges); the ingest's range batching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.errors import TrustError
from appliance.fleet.acker import OutboxAcker, to_ranges
from appliance.store import Store
from appliance.trust.certs import FleetRoot
from appliance.trust.keys import b64decode, b64encode
from appliance.trust.outboxack import build_outbox_ack, verify_outbox_ack

from .fleet import NOW, Fleet


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(FleetRoot.create(tmp_path / "root"), tmp_path)


def _verify(fleet: Fleet, data: bytes, **kw: object) -> tuple[str, list[tuple[int, int, str]]]:
    args: dict[str, object] = {"device_id": "kiosk-001", "now": NOW}
    args.update(kw)
    return verify_outbox_ack(data, [fleet.root.public_key], **args)  # type: ignore[arg-type]


def test_signed_by_an_ingest_certificate_is_accepted(fleet: Fleet) -> None:
    key = fleet.operator(("ingest",))
    issuer, ranges = _verify(fleet, build_outbox_ack(key, "kiosk-001", [(1, 5, "e5")]))
    assert issuer == key.key_id
    assert ranges == [(1, 5, "e5")]


def test_every_refusal_has_its_code(fleet: Fleet, tmp_path: Path) -> None:
    ingest = fleet.operator(("ingest",))
    good = build_outbox_ack(ingest, "kiosk-001", [(1, 2, "e2")])
    other_root = Fleet(FleetRoot.create(tmp_path / "other"), tmp_path)
    forged = json.loads(good)
    body = json.loads(b64decode(forged["body"], what="body"))
    body["ranges"] = [[1, 999, "e999"]]
    forged["body"] = b64encode(json.dumps(body).encode())
    cases = [
        (
            build_outbox_ack(fleet.operator(("operator",)), "kiosk-001", [(1, 2, "e")]),
            "forbidden_role",
        ),
        (build_outbox_ack(ingest, "kiosk-002", [(1, 2, "e2")]), "wrong_target"),
        (
            build_outbox_ack(
                fleet.operator(("ingest",), devices=("kiosk-002",)), "kiosk-001", [(1, 1, "e")]
            ),
            "wrong_target",
        ),
        (
            build_outbox_ack(other_root.operator(("ingest",)), "kiosk-001", [(1, 1, "e")]),
            "untrusted_issuer",
        ),
        (
            build_outbox_ack(
                fleet.operator(("ingest",), not_after=NOW - 10), "kiosk-001", [(1, 1, "e")]
            ),
            "cert_expired",
        ),
        (json.dumps(forged).encode(), "bad_signature"),
        (build_outbox_ack(None, "kiosk-001", [(1, 2, "e2")]), "unsigned"),
        (b"not json", "malformed_envelope"),
        (b'{"typ": "appliance.sealed-ack.v1", "sig": "x"}', "malformed_envelope"),
    ]
    for data, code in cases:
        with pytest.raises(TrustError) as err:
            _verify(fleet, data)
        assert err.value.code == code, (code, err.value.message)


def test_malformed_ranges_are_refused(fleet: Fleet) -> None:
    for ranges in ([], [[0, 1, "e"]], [[5, 4, "e"]], [[1, 2]], [[1, "2", "e"]], [[1, 2, 3]]):
        with pytest.raises(TrustError) as err:
            _verify(fleet, _unsigned(ranges), allow_unsigned=True)
        assert err.value.code == "malformed_envelope", ranges


def _unsigned(ranges: object) -> bytes:
    body = {"device": "kiosk-001", "issued_at": NOW, "issuer": "unsigned", "ranges": ranges}
    raw = b64encode(json.dumps(body).encode())
    return json.dumps({"typ": "appliance.outbox-ack.v1", "body": raw}).encode()


def test_unsigned_only_in_development_mode_and_only_for_this_kiosk(fleet: Fleet) -> None:
    assert _verify(fleet, _unsigned([[3, 4, "e4"]]), allow_unsigned=True)[1] == [(3, 4, "e4")]
    with pytest.raises(TrustError) as err:
        _verify(fleet, build_outbox_ack(None, "kiosk-009", [(1, 1, "e")]), allow_unsigned=True)
    assert err.value.code == "wrong_target"


def test_kiosk_deletes_a_range_only_if_its_last_row_carries_the_named_id(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    try:
        rows = store.outbox.put_many([("t", "kiosk/k/events/t", {"n": n}) for n in range(10)])
        ids = dict(rows)
        # a stale acknowledgement (another life of this database): nothing deleted
        assert store.outbox.ack_ranges([(1, 5, "not-the-id")]) == 0
        assert store.outbox.depth() == 10
        # seqs beyond the outbox: nothing
        assert store.outbox.ack_ranges([(11, 20, "x")]) == 0
        assert store.outbox.ack_ranges([(1, 3, ids[3]), (6, 7, ids[7])]) == 5
        assert [r.seq for r in store.outbox.pending()] == [4, 5, 8, 9, 10]
        assert store.outbox.oldest_seq() == 4
        # a replay deletes nothing more
        assert store.outbox.ack_ranges([(1, 3, ids[3])]) == 0
        assert store.outbox.depth() == 5
    finally:
        store.close()


def test_to_ranges_groups_contiguous_seqs() -> None:
    assert to_ranges({}) == []
    assert to_ranges({5: "e5"}) == [(5, 5, "e5")]
    seqs = {1: "a", 2: "b", 3: "c", 7: "g", 9: "i", 10: "j"}
    assert to_ranges(seqs) == [(1, 3, "c"), (7, 7, "g"), (9, 10, "j")]


def test_acker_batches_per_device_and_keeps_a_failed_batch(fleet: Fleet) -> None:
    sent: list[tuple[str, bytes]] = []
    fail = [True]

    def publish(topic: str, payload: bytes) -> bool:
        if fail[0]:
            return False
        sent.append((topic, payload))
        return True

    key = fleet.operator(("ingest",), devices=("*",))
    acker = OutboxAcker(publish, key=key, prefix="kiosk")
    for seq in (1, 2, 3, 5):
        acker.stored("kiosk-001", seq, f"e{seq}")
    acker.stored("kiosk-002", 1, "x1")
    acker.flush()
    assert sent == [] and acker.failed == 2
    fail[0] = False
    acker.stored("kiosk-001", 4, "e4")
    acker.flush()
    by_topic = dict(sent)
    assert set(by_topic) == {"kiosk/kiosk-001/outbox/ack", "kiosk/kiosk-002/outbox/ack"}
    _issuer, ranges = verify_outbox_ack(
        by_topic["kiosk/kiosk-001/outbox/ack"],
        [fleet.root.public_key],
        device_id="kiosk-001",
        now=NOW,
    )
    assert ranges == [(1, 5, "e5")]
    assert acker.acked == 6
