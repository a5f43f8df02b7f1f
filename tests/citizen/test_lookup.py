"""Citizen lookup without a broker: the directory's core answering the kiosk's client directly
(real keys under the kit's fleet root, real signatures, a real SQLite directory store).

The same flow through mosquitto with TLS and the shipped ACL is tests/central/test_lookup_e2e.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nacl.public import PrivateKey

from appliance.central.citizens import Citizen, synthetic_citizen
from appliance.central.directory import DirectoryCore, DirectoryStore
from appliance.central.package import decode_chunk, split_package
from appliance.central.store import PackageStore
from appliance.central.testkit import build_package, portrait_record
from appliance.citizen.lookup import (
    CorrectionRequest,
    LookupClient,
    LookupFailed,
    check_corrections,
    response_topic,
)
from appliance.devtools.fleetkit import FleetKit
from appliance.errors import CommandError
from appliance.trust.certs import OperatorKey
from appliance.trust.keys import DeviceIdentity, load_public_key

DEV = "kiosk-lk1"
TODAY = dt.date(2026, 12, 3)


def _citizen(ref: str, **update: Any) -> Citizen:
    return synthetic_citizen(ref, today=TODAY).model_copy(update=update)


@pytest.fixture
def directory(tmp_path: Path) -> DirectoryStore:
    store = DirectoryStore(tmp_path / "directory.sqlite")
    store.load(
        {
            "CIT-L1": _citizen("CIT-L1", old_id_number="012345678"),
            "CIT-L2": _citizen("CIT-L2"),
        }
    )
    return store


Tamper = Callable[[bytes], bytes]


def wire(
    kit: FleetKit,
    store: DirectoryStore,
    *,
    key: OperatorKey | None = None,
    tamper: Tamper | None = None,
    device: str = DEV,
) -> tuple[LookupClient, DirectoryCore]:
    """The kiosk's client and the directory's core, each publishing straight to the other."""
    box: list[LookupClient] = []

    def to_kiosk(_topic: str, payload: bytes, _corr: bytes | None) -> bool:
        # whatever topic the directory chose, the answer reaches this kiosk (a broker would
        # deliver it only on the kiosk's own topic: the ACL; the tests check the kiosk too)
        box[0].on_message(box[0].response_topic, tamper(payload) if tamper else payload)
        return True

    core = DirectoryCore(store, key or kit.signer("directory"), to_kiosk)

    def to_directory(topic: str, body: bytes, rt: str, corr: bytes) -> bool:
        # the broker's ACL puts the kiosk's own id in the topic; a test may pretend otherwise
        core.handle(topic.replace(DEV, device), body, response_topic_=rt, correlation_data=corr)
        return True

    client = LookupClient(
        prefix="kiosk", device_id=DEV, publish=to_directory, roots=[load_public_key(kit.root_pub)]
    )
    box.append(client)
    return client, core


def test_known_citizen_by_cccd_and_by_cmnd_number(
    fleet_kit: FleetKit, directory: DirectoryStore
) -> None:
    client, core = wire(fleet_kit, directory)
    c = _citizen("CIT-L1", old_id_number="012345678")
    res = client.lookup(c.personal_id, timeout_s=2)
    assert res.status == "found" and res.enrollment == "none"
    assert res.citizen is not None
    assert res.citizen["full_name"] == c.full_name
    assert res.citizen["date_of_birth"] == c.date_of_birth.isoformat()
    assert res.citizen["citizen_ref"] == "CIT-L1"
    assert res.issuer == fleet_kit.signer("directory").key_id
    by_old = client.lookup("012345678", timeout_s=2)
    assert by_old.status == "found" and by_old.citizen == res.citizen
    assert client.looked_up("CIT-L1") == res.citizen
    assert core.stats["found"] == 2


def test_unknown_citizen_is_not_found(fleet_kit: FleetKit, directory: DirectoryStore) -> None:
    client, _core = wire(fleet_kit, directory)
    res = client.lookup("001099999999", timeout_s=2)
    assert res.status == "not_found" and res.citizen is None and res.enrollment == "none"
    assert client.looked_up("CIT-L1") is None


def test_bad_number_refused_before_it_travels(
    fleet_kit: FleetKit, directory: DirectoryStore
) -> None:
    client, core = wire(fleet_kit, directory)
    with pytest.raises(CommandError) as err:
        client.lookup("12345", timeout_s=1)
    assert err.value.code == "invalid_args" and "number" in err.value.message
    assert sum(core.stats.values()) == 0


def test_directory_answers_invalid_request_naming_the_field(
    fleet_kit: FleetKit, directory: DirectoryStore
) -> None:
    sent: list[bytes] = []
    core = DirectoryCore(
        directory, fleet_kit.signer("directory"), lambda t, p, c: sent.append(p) or True
    )
    req = {"request_id": "r1", "nonce": "ab" * 16, "number": "12-34", "extra": 1}
    core.handle(f"kiosk/{DEV}/lookup/request", json.dumps(req).encode())
    body = json.loads(base64.b64decode(json.loads(sent[0])["body"]))
    assert body["status"] == "invalid_request" and body["device"] == DEV
    assert {p["field"] for p in body["problems"]} == {"number", "extra"}
    # without a request id there is nothing to bind an answer to: dropped
    assert core.handle(f"kiosk/{DEV}/lookup/request", b"not json") is None
    assert len(sent) == 1 and core.stats["dropped"] == 1


def _flip_sig(payload: bytes) -> bytes:
    env = json.loads(payload)
    sig = bytearray(base64.b64decode(env["sig"]))
    sig[0] ^= 1
    env["sig"] = base64.b64encode(bytes(sig)).decode()
    return json.dumps(env).encode()


def _edit_body(**changes: Any) -> Tamper:
    """Change the body without re-signing (the signature then fails)."""

    def tamper(payload: bytes) -> bytes:
        env = json.loads(payload)
        body = json.loads(base64.b64decode(env["body"]))
        body.update(changes)
        env["body"] = base64.b64encode(json.dumps(body).encode()).decode()
        return json.dumps(env).encode()

    return tamper


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        (_flip_sig, "bad_signature"),
        (_edit_body(status="not_found"), "bad_signature"),
    ],
)
def test_answer_with_a_bad_signature_refused(
    fleet_kit: FleetKit, directory: DirectoryStore, tamper: Tamper, code: str
) -> None:
    client, _core = wire(fleet_kit, directory, tamper=tamper)
    with pytest.raises(LookupFailed) as err:
        client.lookup(_citizen("CIT-L1").personal_id, timeout_s=0.3)
    assert err.value.code == code
    assert client.refused == 1 and client.looked_up("CIT-L1") is None


def test_answer_signed_without_the_directory_role_refused(
    fleet_kit: FleetKit, directory: DirectoryStore
) -> None:
    client, _core = wire(fleet_kit, directory, key=fleet_kit.signer("operator"))
    with pytest.raises(LookupFailed) as err:
        client.lookup(_citizen("CIT-L1").personal_id, timeout_s=0.3)
    assert err.value.code == "forbidden_role"


def test_answer_for_another_device_refused(fleet_kit: FleetKit, directory: DirectoryStore) -> None:
    client, _core = wire(fleet_kit, directory, device="kiosk-other")
    with pytest.raises(LookupFailed) as err:
        client.lookup(_citizen("CIT-L1").personal_id, timeout_s=0.3)
    assert err.value.code == "wrong_target"


def test_answer_for_another_request_refused(fleet_kit: FleetKit, directory: DirectoryStore) -> None:
    """A genuine signed answer, replayed to a later request with the same request id but
    another nonce (and a genuine answer for another request id, which waits for nobody)."""
    captured: list[bytes] = []
    client, core = wire(fleet_kit, directory, tamper=lambda p: captured.append(p) or p)
    number = _citizen("CIT-L1").personal_id
    first = client.lookup(number, timeout_s=2)
    # the old answer arrives again, for nobody: ignored and counted
    client.on_message(response_topic("kiosk", DEV), captured[0])
    assert client.refused == 1
    # a request whose answer is the old one (its own request id, another nonce): refused
    old_body = json.loads(base64.b64decode(json.loads(captured[0])["body"]))
    key = fleet_kit.signer("directory")
    from appliance.citizen.lookup import ANSWER_CONTEXT, ANSWER_TYPE
    from appliance.trust.signeddoc import sign_document

    def replay(topic: str, body: bytes, _rt: str, _corr: bytes) -> bool:
        rid = json.loads(body)["request_id"]
        fields = {k: v for k, v in old_body.items() if k not in ("device", "issued_at", "issuer")}
        doc = sign_document(key, ANSWER_TYPE, ANSWER_CONTEXT, DEV, {**fields, "request_id": rid})
        client.on_message(response_topic("kiosk", DEV), doc)
        return True

    client._publish = replay
    with pytest.raises(LookupFailed) as err:
        client.lookup(number, timeout_s=0.3)
    assert err.value.code == "wrong_request"
    assert first.status == "found" and core.stats["found"] == 1


def test_directory_never_answers_an_invalid_record(
    fleet_kit: FleetKit, directory: DirectoryStore
) -> None:
    """A record that no longer passes (edited behind the directory's back) is not answered."""
    c = _citizen("CIT-L2")
    rec = directory.find(c.personal_id)
    assert rec is not None
    rec["date_of_birth"] = "2099-01-01"
    with directory._tx() as conn:
        conn.execute("UPDATE citizens SET record=? WHERE citizen_ref='CIT-L2'", (json.dumps(rec),))
    client, _core = wire(fleet_kit, directory)
    res = client.lookup(c.personal_id, timeout_s=2)
    assert res.status == "record_invalid" and res.citizen is None
    assert "date_of_birth" in {p["field"] for p in res.problems}


def test_already_enrolled_citizen(
    fleet_kit: FleetKit, directory: DirectoryStore, tmp_path: Path
) -> None:
    """A complete upload for CIT-L1 without a verdict yet (held: device not approved) is
    ``pending``; once the centre verified a package it is ``completed``. (The verification
    itself runs on the real receiver in tests/central/test_lookup_e2e.py.)"""
    packages = PackageStore(tmp_path / "central")
    directory.sync_packages(packages)
    assert directory.enrollment_state("CIT-L1") == ("none", [])
    built = build_package(
        DeviceIdentity.create(tmp_path / "dev"),
        bytes(PrivateKey.generate().public_key),
        device=DEV,
        records=[("face", 0, portrait_record())],
        citizen_ref="CIT-L1",
    )
    chunks = split_package(built.package_id, built.data, 4096)
    for c in chunks[:-1]:
        packages.put_chunk(DEV, *decode_chunk(c))
    client, _core = wire(fleet_kit, directory)
    number = _citizen("CIT-L1").personal_id
    directory.sync_packages(packages)
    assert client.lookup(number, timeout_s=2).enrollment == "none"  # a chunk still missing
    packages.put_chunk(DEV, *decode_chunk(chunks[-1]))
    assert client.lookup(number, timeout_s=2).enrollment == "none"  # not synced yet
    directory.sync_packages(packages)
    res = client.lookup(number, timeout_s=2)
    assert res.status == "found" and res.enrollment == "pending"
    assert res.enrollments == [{"device": DEV, "package_id": built.package_id, "state": "pending"}]

    d = packages.package_dir(DEV, built.package_id)
    result = {
        "status": "complete",
        "device": DEV,
        "package_id": built.package_id,
        "verified_at": 1.0,
        "summary": {"citizen_ref": "CIT-L1"},
    }
    (d / "result.json").write_text(json.dumps(result))
    directory.sync_packages(packages)
    res = client.lookup(number, timeout_s=2)
    assert res.enrollment == "completed"
    assert [e["package_id"] for e in res.enrollments] == [built.package_id]
    other = client.lookup(_citizen("CIT-L2").personal_id, timeout_s=2)
    assert other.enrollment == "none"


def test_corrections_checked_against_the_answered_record() -> None:
    c = _citizen("CIT-L1")
    record = {
        k: (v.isoformat() if isinstance(v, dt.date) else v)
        for k, v in c.model_dump(exclude_none=True).items()
    }
    good = CorrectionRequest(field="full_name", original=c.full_name, requested="Trần Văn Bình")
    assert check_corrections(record, [good], today=TODAY) == []
    cases = [
        (
            CorrectionRequest(field="personal_id", original=c.personal_id, requested="1"),
            "unknown_field",
        ),
        (
            CorrectionRequest(
                field="full_name", original="Someone Else", requested="Trần Văn Bình"
            ),
            "type",
        ),
        (
            CorrectionRequest(field="full_name", original=c.full_name, requested="Trần"),
            "name_words",
        ),
        (
            CorrectionRequest(
                field="date_of_birth", original=record["date_of_birth"], requested="2099-01-01"
            ),
            "birth_future",
        ),
    ]
    for corr, rule in cases:
        problems = check_corrections(record, [corr], today=TODAY)
        assert (f"corrections.{corr.field}", rule) in {(p.field, str(p.rule)) for p in problems}, (
            corr
        )
    twice = check_corrections(record, [good, good], today=TODAY)
    assert [p.field for p in twice] == ["corrections.full_name"]


def test_centre_records_corrections_for_a_decision(directory: DirectoryStore) -> None:
    c = _citizen("CIT-L1", old_id_number="012345678")
    manifest = {
        "citizen_ref": "CIT-L1",
        "corrections": [
            {"field": "full_name", "original": c.full_name, "requested": "Trần Văn Bình"},
            {"field": "sex", "original": c.sex, "requested": "X"},
        ],
    }
    assert directory.record_corrections(DEV, "b" * 32, manifest) == 2
    assert directory.record_corrections(DEV, "b" * 32, manifest) == 0  # a repeat adds nothing
    rows = {r["field"]: r for r in directory.corrections("CIT-L1")}
    assert set(rows) == {"full_name", "sex"}
    assert rows["full_name"]["state"] == "pending" and rows["full_name"]["original"] == c.full_name
    assert rows["sex"]["state"] == "invalid"
    assert rows["sex"]["problems"][0]["field"] == "corrections.sex"
    # the directory's record itself is unchanged
    assert directory.find(c.personal_id)["full_name"] == c.full_name  # type: ignore[index]
