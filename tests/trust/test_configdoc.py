"""Signed desired-configuration documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.errors import TrustError
from appliance.trust.certs import FleetRoot
from appliance.trust.configdoc import sign_config, verify_config
from appliance.trust.keys import CTX_COMMAND, b64decode, b64encode, sign_detached

from .fleet import NOW, Fleet

TOML = b'# site config\n[site]\nname = "Ha Noi 01"\n\n[mqtt]\nport = 8883\n'


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(FleetRoot.create(tmp_path / "root"), tmp_path)


def _verify(fleet: Fleet, doc: bytes, **kw: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {"device_id": "kiosk-001", "groups": ("hanoi",), "now": NOW}
    args.update(kw)
    return verify_config(doc, [fleet.root.public_key], **args)  # type: ignore[arg-type]


def _code(fleet: Fleet, doc: bytes, **kw: object) -> str:
    with pytest.raises(TrustError) as err:
        _verify(fleet, doc, **kw)
    return err.value.code


def test_round_trip_exact_bytes(fleet: Fleet) -> None:
    admin = fleet.operator(roles=("admin",), devices=("*",))
    doc = sign_config(TOML, key=admin, version=7, target="kiosk-001", issued_at=NOW)
    v = _verify(fleet, doc, newer_than=6)
    assert (v.version, v.content, v.format, v.issuer) == (7, TOML, "toml", admin.key_id)
    assert v.to_audit()["content_len"] == len(TOML)
    j = b'{"site": {"name": "x"}}'
    doc = sign_config(j, key=admin, version=1, target="group:hanoi", fmt="json", issued_at=NOW)
    assert _verify(fleet, doc).content == j


def test_refusals(fleet: Fleet) -> None:
    admin = fleet.operator(roles=("admin",), devices=("*",))
    good = sign_config(TOML, key=admin, version=7, target="kiosk-001", issued_at=NOW)
    assert _code(fleet, good, newer_than=7) == "replayed"
    assert _code(fleet, good, newer_than=9) == "replayed"
    assert _code(fleet, good, device_id="kiosk-002") == "wrong_target"
    grp = sign_config(TOML, key=admin, version=8, target="group:hue", issued_at=NOW)
    assert _code(fleet, grp) == "wrong_target"
    op = fleet.operator(roles=("operator", "technician"), devices=("*",))
    assert _code(fleet, sign_config(TOML, key=op, version=8, target="kiosk-001")) == (
        "forbidden_role"
    )
    scoped = fleet.operator(roles=("admin",), devices=("kiosk-002",))
    doc = sign_config(TOML, key=scoped, version=8, target="kiosk-001", issued_at=NOW)
    assert _code(fleet, doc) == "wrong_target"
    rogue = fleet.operator(roles=("admin",), devices=("*",), root=FleetRoot.create(fleet.tmp / "x"))
    assert _code(fleet, sign_config(TOML, key=rogue, version=8, target="kiosk-001")) == (
        "untrusted_issuer"
    )
    old = fleet.operator(
        roles=("admin",), devices=("*",), issued_at=NOW - 2000, not_after=NOW - 1000
    )
    doc = sign_config(TOML, key=old, version=8, target="kiosk-001", issued_at=NOW - 1500)
    assert _code(fleet, doc) == "cert_expired"
    future = sign_config(TOML, key=admin, version=8, target="kiosk-001", issued_at=NOW + 3600)
    assert _code(fleet, future) == "not_yet_valid"
    assert _verify(fleet, future, now=0.0).version == 8  # unsynced clock: not judged


def test_time_floor_with_unsynced_clock(fleet: Fleet) -> None:
    old = fleet.operator(
        roles=("admin",), devices=("*",), issued_at=NOW - 2000, not_after=NOW - 1000
    )
    doc = sign_config(TOML, key=old, version=8, target="kiosk-001", issued_at=NOW - 1500)
    assert _verify(fleet, doc, now=0.0).version == 8  # sane_after is before NOW - 9
    assert _code(fleet, doc, now=0.0, time_floor=NOW) == "cert_expired"


def test_tampering_and_domain_separation(fleet: Fleet) -> None:
    admin = fleet.operator(roles=("admin",), devices=("*",))
    doc = json.loads(sign_config(TOML, key=admin, version=3, target="kiosk-001", issued_at=NOW))
    body = json.loads(b64decode(doc["body"], what="b"))
    body["content"] = b64encode(TOML.replace(b"8883", b"1883"))
    raw = json.dumps(body).encode()
    doc["body"] = b64encode(raw)
    assert _code(fleet, json.dumps(doc).encode()) == "bad_signature"
    # A signature the same admin made for a command does not verify as a configuration.
    doc["sig"] = b64encode(sign_detached(admin.signing_key, CTX_COMMAND, raw))
    assert _code(fleet, json.dumps(doc).encode()) == "bad_signature"
    del doc["sig"]
    assert _code(fleet, json.dumps(doc).encode()) == "unsigned"
    assert _code(fleet, TOML) == "malformed_envelope"
    assert _code(fleet, b'{"site": 1}') == "unsigned"
    assert _code(fleet, b"[]") == "malformed_envelope"


def test_content_must_parse(fleet: Fleet) -> None:
    admin = fleet.operator(roles=("admin",), devices=("*",))
    with pytest.raises(TrustError):
        sign_config(b"[site\nname=", key=admin, version=1, target="kiosk-001")
    with pytest.raises(TrustError):
        sign_config(b"[1, 2]", key=admin, version=1, target="kiosk-001", fmt="json")
    with pytest.raises(TrustError):
        sign_config(TOML, key=admin, version=0, target="kiosk-001")
    with pytest.raises(TrustError):
        sign_config(TOML, key=admin, version=1, target="kiosk-001", fmt="yaml")
    # A signed but unparsable body (signed by hand, bypassing sign_config's check).
    from appliance.trust.keys import CTX_CONFIG

    body = {
        "version": 2,
        "target": "kiosk-001",
        "format": "toml",
        "content": b64encode(b"= broken"),
        "issued_at": NOW,
        "issuer": admin.key_id,
    }
    raw = json.dumps(body).encode()
    doc = {
        "typ": "appliance.config.v1",
        "cert": admin.certificate.to_token(),
        "body": b64encode(raw),
        "sig": b64encode(sign_detached(admin.signing_key, CTX_CONFIG, raw)),
    }
    assert _code(fleet, json.dumps(doc).encode()) == "malformed_envelope"


def test_revoked_admin(fleet: Fleet) -> None:
    admin = fleet.operator(roles=("admin",), devices=("*",))
    doc = sign_config(TOML, key=admin, version=2, target="kiosk-001", issued_at=NOW)
    assert _code(fleet, doc, revoked={admin.key_id}) == "cert_revoked"
