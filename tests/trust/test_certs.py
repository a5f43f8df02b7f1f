"""Fleet root and operator certificates: exact-bytes signing, chain and validity checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from appliance.errors import TrustError
from appliance.trust.certs import FleetRoot, OperatorCertificate, OperatorKey, verify_certificate
from appliance.trust.keys import b64decode, b64encode, save_signing_key

NOW = 1_800_000_000


@pytest.fixture
def root(tmp_path: Path) -> FleetRoot:
    return FleetRoot.create(tmp_path / "root")


def _issue(root: FleetRoot, **kw: object) -> tuple[SigningKey, OperatorCertificate]:
    sk = SigningKey.generate()
    args: dict[str, object] = {
        "roles": ["operator"],
        "devices": ["kiosk-001"],
        "not_after": NOW + 3600,
        "issued_at": NOW - 10,
        "name": "Nguyen Van A",
    }
    args.update(kw)
    return sk, root.issue(bytes(sk.verify_key), **args)  # type: ignore[arg-type]


def test_issue_and_verify_round_trip(root: FleetRoot, tmp_path: Path) -> None:
    _sk, cert = _issue(root, groups=["hanoi"])
    parsed = verify_certificate(cert.to_token(), [root.public_key], now=NOW)
    assert parsed == cert
    assert parsed.roles == ("operator",)
    assert parsed.covers("kiosk-001", [])
    assert parsed.covers("kiosk-999", ["hanoi"])
    assert not parsed.covers("kiosk-999", ["hue"])
    # The root reloads from its 0600 file and still verifies the same certificate.
    again = FleetRoot.load(tmp_path / "root")
    assert again.key_id == root.key_id


def test_signature_is_over_exact_bytes(root: FleetRoot) -> None:
    _sk, cert = _issue(root)
    # Re-serialise the same JSON with other whitespace: the meaning is equal, the bytes are not.
    reformatted = json.dumps(json.loads(cert.body), indent=1).encode()
    token = f"{b64encode(reformatted)}.{b64encode(cert.signature)}"
    with pytest.raises(TrustError) as err:
        verify_certificate(token, [root.public_key], now=NOW)
    assert err.value.code == "untrusted_issuer"


def test_widened_roles_are_detected(root: FleetRoot) -> None:
    _sk, cert = _issue(root)
    body = json.loads(cert.body)
    body["roles"] = ["admin", "operator"]
    forged = json.dumps(body, separators=(",", ":")).encode()
    token = f"{b64encode(forged)}.{b64encode(cert.signature)}"
    with pytest.raises(TrustError) as err:
        verify_certificate(token, [root.public_key], now=NOW)
    assert err.value.code == "untrusted_issuer"


def test_other_root_is_untrusted(root: FleetRoot, tmp_path: Path) -> None:
    other = FleetRoot.create(tmp_path / "other")
    _sk, cert = _issue(other)
    with pytest.raises(TrustError) as err:
        verify_certificate(cert, [root.public_key], now=NOW)
    assert err.value.code == "untrusted_issuer"
    # Root rotation: a device that trusts both roots accepts either.
    assert verify_certificate(cert, [root.public_key, other.public_key], now=NOW) == cert


def test_expiry_and_not_before(root: FleetRoot) -> None:
    _sk, cert = _issue(root)
    with pytest.raises(TrustError) as err:
        verify_certificate(cert, [root.public_key], now=NOW + 3601)
    assert err.value.code == "cert_expired"
    assert verify_certificate(cert, [root.public_key], now=NOW + 3601, skew_s=60) == cert
    with pytest.raises(TrustError) as err:
        verify_certificate(cert, [root.public_key], now=NOW - 100)
    assert err.value.code == "not_yet_valid"
    assert verify_certificate(cert, [root.public_key], now=NOW - 100, check_not_before=False)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b.c",
        "!!!.AAAA",
        b64encode(b"not json") + "." + b64encode(b"\0" * 64),
        b64encode(b"[]") + "." + b64encode(b"\0" * 64),
        b64encode(b'{"typ":"appliance.operator-cert.v1"}') + "." + b64encode(b"\0" * 64),
        b64encode(b"{}") + "." + b64encode(b"\0" * 10),
    ],
)
def test_malformed_tokens(root: FleetRoot, token: str) -> None:
    with pytest.raises(TrustError) as err:
        verify_certificate(token, [root.public_key], now=NOW)
    assert err.value.code == "malformed_certificate"


def test_malformed_fields(root: FleetRoot) -> None:
    _sk, cert = _issue(root)
    base = json.loads(cert.body)
    cases = [
        {"roles": []},
        {"roles": ["superuser"]},
        {"devices": ["bad/name"]},
        {"groups": ["*"]},
        {"not_after": base["issued_at"]},
        {"issued_at": -1},
        {"issued_at": True},
        {"key_id": "0000000000000000"},
        {"public_key": b64encode(b"short")},
    ]
    for change in cases:
        body = dict(base, **change)
        raw = json.dumps(body).encode()
        with pytest.raises(TrustError) as err:
            OperatorCertificate.from_body(raw, cert.signature)
        assert err.value.code == "malformed_certificate", change


def test_issue_validates_inputs(root: FleetRoot) -> None:
    pub = bytes(SigningKey.generate().verify_key)
    with pytest.raises(TrustError) as err:
        root.issue(pub, roles=["root"], devices=["k1"], not_after=NOW + 1, issued_at=NOW)
    assert err.value.code == "invalid_role"
    with pytest.raises(TrustError) as err:
        root.issue(pub, roles=["admin"], devices=["k/1"], not_after=NOW + 1, issued_at=NOW)
    assert err.value.code == "invalid_name"
    with pytest.raises(TrustError) as err:
        root.issue(pub, roles=["admin"], not_after=NOW + 1, issued_at=NOW)
    assert err.value.code == "invalid_name"
    with pytest.raises(TrustError) as err:
        root.issue(pub, roles=["admin"], devices=["*"], not_after=NOW, issued_at=NOW)
    assert err.value.code == "invalid_validity"
    with pytest.raises(TrustError):
        root.issue(b"short", roles=["admin"], devices=["*"], not_after=NOW + 1)


def test_operator_key_load_checks_pairing(root: FleetRoot, tmp_path: Path) -> None:
    sk, cert = _issue(root)
    save_signing_key(sk, tmp_path / "op.key", tmp_path / "op.pub", overwrite=False)
    (tmp_path / "op.cert").write_text(cert.to_token() + "\n")
    op = OperatorKey.load(tmp_path / "op.key", tmp_path / "op.cert")
    assert op.key_id == cert.key_id
    _sk2, cert2 = _issue(root)
    (tmp_path / "op2.cert").write_text(cert2.to_token())
    with pytest.raises(TrustError) as err:
        OperatorKey.load(tmp_path / "op.key", tmp_path / "op2.cert")
    assert err.value.code == "key_malformed"
    assert b64decode(b64encode(b"x"), what="x") == b"x"
