"""Bad input to every device-side verifier gives a TrustError with a code, never a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.errors import TrustError
from appliance.trust.certs import FleetRoot, OperatorCertificate
from appliance.trust.configdoc import sign_config, verify_config
from appliance.trust.keys import DeviceSignature
from appliance.trust.sealed import build_ack, verify_ack

from .fleet import NOW, Fleet

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# JSON-ish values, so the fuzzing reaches past the JSON parser into the field checks.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    tmp = tmp_path_factory.mktemp("fuzz")
    return Fleet(FleetRoot.create(tmp / "root"), tmp)


def _mutations(doc: bytes) -> st.SearchStrategy[bytes]:
    """Replace one top-level field of a valid document with an arbitrary JSON value."""
    obj = json.loads(doc)
    return st.tuples(st.sampled_from(sorted(obj)), json_values).map(
        lambda kv: json.dumps({**obj, kv[0]: kv[1]}).encode()
    )


@SETTINGS
@given(data=st.data())
def test_verify_config_never_crashes(fleet: Fleet, data: st.DataObject) -> None:
    admin = fleet.operator(roles=("admin",), devices=("*",))
    good = sign_config(b"[a]\nb = 1\n", key=admin, version=3, target="kiosk-001", issued_at=NOW)
    doc = data.draw(st.one_of(st.binary(max_size=500), _mutations(good)))
    try:
        verify_config(doc, [fleet.root.public_key], device_id="kiosk-001", now=NOW)
    except TrustError as exc:
        assert exc.code
    else:
        assert doc == good or json.loads(doc) == json.loads(good)


@SETTINGS
@given(data=st.data())
def test_verify_ack_never_crashes(fleet: Fleet, data: st.DataObject) -> None:
    ingest = fleet.operator(roles=("ingest",), devices=("*",))
    good = build_ack(ingest, "kiosk-001", [("r1", "ab" * 32)], issued_at=NOW)
    ack = data.draw(st.one_of(st.binary(max_size=500), _mutations(good)))
    try:
        verify_ack(ack, [fleet.root.public_key], device_id="kiosk-001", now=NOW)
    except TrustError as exc:
        assert exc.code


@SETTINGS
@given(st.one_of(st.text(max_size=300), json_values))
def test_certificate_tokens_never_crash(token: object) -> None:
    with pytest.raises(TrustError):
        OperatorCertificate.from_token(token)


@SETTINGS
@given(st.text(max_size=200))
def test_signature_headers_never_crash(text: str) -> None:
    try:
        DeviceSignature.from_header(text)
    except TrustError as exc:
        assert exc.code in ("unsigned", "bad_signature")


def test_fuzz_fixture_documents_verify(fleet: Fleet, tmp_path: Path) -> None:
    """The unmutated documents used above do verify (the fuzzing starts from valid input)."""
    admin = fleet.operator(roles=("admin",), devices=("*",))
    good = sign_config(b"[a]\nb = 1\n", key=admin, version=3, target="kiosk-001", issued_at=NOW)
    assert verify_config(good, [fleet.root.public_key], device_id="kiosk-001", now=NOW).version == 3
    ingest = fleet.operator(roles=("ingest",), devices=("*",))
    ack = build_ack(ingest, "kiosk-001", [("r1", "ab" * 32)], issued_at=NOW)
    assert verify_ack(ack, [fleet.root.public_key], device_id="kiosk-001", now=NOW).records


DEEP = b"[" * 100_000  # exhausts json's recursion: must be bad input, not a RecursionError


def test_deeply_nested_json_everywhere(fleet: Fleet, tmp_path: Path) -> None:
    import sqlite3
    import threading

    from appliance.trust.envelope import TRUST_SCHEMA_SQL, CommandVerifier, EnvelopeBuilder
    from appliance.trust.keys import b64encode

    conn = sqlite3.connect(tmp_path / "d.db", isolation_level=None)
    for stmt in TRUST_SCHEMA_SQL:
        conn.execute(stmt)
    v = CommandVerifier(
        roots=[fleet.root.public_key],
        device_id="kiosk-001",
        role_table={"enroll.start": "operator"},
        conn=conn,
        lock=threading.Lock(),
        clock=fleet.clock,
    )
    assert v.check(DEEP).code == "malformed_envelope"
    # Deep nesting inside an authentic payload: the payload-command hook must not crash.
    from appliance.trust.adapter import request_command

    op = fleet.operator()
    env = EnvelopeBuilder(op, clock=fleet.clock).build("enroll.start", DEEP, "kiosk-001")
    assert v.check(env, payload_command=request_command).accepted
    for fn in (
        lambda: verify_config(DEEP, [fleet.root.public_key], device_id="kiosk-001", now=NOW),
        lambda: verify_ack(DEEP, [fleet.root.public_key], device_id="kiosk-001", now=NOW),
        lambda: OperatorCertificate.from_token(b64encode(DEEP) + "." + b64encode(bytes(64))),
    ):
        with pytest.raises(TrustError) as err:
            fn()
        assert err.value.code in ("malformed_envelope", "malformed_certificate")
    admin = fleet.operator(roles=("admin",), devices=("*",))
    for content, fmt in ((b"a = " + DEEP, "toml"), (DEEP, "json")):
        with pytest.raises(TrustError) as err:
            sign_config(content, key=admin, version=1, target="kiosk-001", fmt=fmt)
        assert err.value.code == "malformed_envelope"
    conn.close()
