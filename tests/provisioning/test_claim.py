"""The claim protocol's codec and the fleet's decision, without a broker: token proof, device
signature, sealed bundle, MAC, and the single use of a token (also under concurrency)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from nacl.public import PrivateKey

from appliance.errors import TrustError
from appliance.fleet.approve import KioskBroker, answer_claim, judge
from appliance.fleet.registry import FleetRegistry
from appliance.provisioning import claim
from appliance.trust.certs import FleetRoot
from appliance.trust.keys import DeviceIdentity, b64decode, b64encode

NOW = 1_800_000_000


@pytest.fixture
def reg(tmp_path: Path) -> FleetRegistry:
    FleetRoot.create(tmp_path / "home")
    return FleetRegistry(tmp_path / "home")


def kiosk(tmp: Path, name: str) -> tuple[DeviceIdentity, PrivateKey]:
    return DeviceIdentity.create(tmp / name), PrivateKey.generate()


def request(ident: DeviceIdentity, box: PrivateKey, token: str, device: str = "kiosk-1") -> bytes:
    return claim.build_request(
        ident, device_id=device, token=token, box_public_key=bytes(box.public_key), now=NOW
    )


def test_request_round_trip_and_tampering(tmp_path: Path) -> None:
    ident, box = kiosk(tmp_path, "k")
    tid, secret = claim.new_token()
    raw = request(ident, box, f"{tid}.{secret}")
    req = claim.parse_request(raw)
    assert (req.device_id, req.token_id, req.device_key) == ("kiosk-1", tid, ident.public_key)
    wrong = secret[:-1] + ("Y" if secret.endswith("X") else "X")  # differs in the last char
    assert req.check_proof(secret) and not req.check_proof(wrong)
    # The token's secret never travels.
    assert secret.encode() not in raw
    # Any change of the body breaks the device signature.
    obj = json.loads(raw)
    body = json.loads(b64decode(obj["body"], what="b"))
    body["device_id"] = body["claim_id"] = "kiosk-2"
    obj["body"] = b64encode(json.dumps(body).encode())
    with pytest.raises(TrustError) as err:
        claim.parse_request(json.dumps(obj).encode())
    assert err.value.code == "bad_signature"
    for junk in (b"", b"[]", b"{", b'{"typ": "x"}', b"\xff" * 10, b"[" * 100_000):
        with pytest.raises(TrustError):
            claim.parse_request(junk)


@pytest.mark.parametrize(
    "bad", ["", "abc", "t123.short", "x1234567.AAAAAAAAAAAAAAAAAAAA", "t1.a.b"]
)
def test_malformed_tokens_explained(bad: str) -> None:
    with pytest.raises(TrustError) as err:
        claim.split_token(bad)
    assert err.value.code == "token_malformed" and "appliance fleet claim-token" in str(err.value)


def test_approval_is_sealed_and_authenticated(reg: FleetRegistry, tmp_path: Path) -> None:
    _rec, token = reg.create_token(device="kiosk-1", ttl_s=3600, groups=["hanoi"], now=NOW)
    ident, box = kiosk(tmp_path, "k")
    raw = request(ident, box, token)
    req = claim.parse_request(raw)
    out = answer_claim(reg, req, broker=KioskBroker("mqtt.example", 8883, "kiosk"), now=NOW)
    assert out.verdict.status == "approved"
    # Only the holder of the one-time box key can read the bundle.
    assert b"ed25519-pub" not in out.response and b"mqtt.example" not in out.response
    answer = claim.open_response(
        out.response, request_body=req.body, token=token, box_private_key=bytes(box)
    )
    assert answer.authenticated and answer.status == "approved"
    assert answer.bundle is not None
    assert answer.bundle["groups"] == ["hanoi"] and answer.bundle["broker"]["port"] == 8883
    assert answer.bundle["root_keys"] == [(reg.home / "root.pub").read_text().strip()]
    # Another box key cannot open it; another token's secret cannot authenticate it.
    with pytest.raises(TrustError):
        claim.open_response(
            out.response,
            request_body=req.body,
            token=token,
            box_private_key=bytes(PrivateKey.generate()),
        )
    tid, _ = claim.split_token(token)
    with pytest.raises(TrustError) as err:
        claim.open_response(
            out.response,
            request_body=req.body,
            token=f"{tid}.BBBBBBBBBBBBBBBBBBBB",
            box_private_key=bytes(box),
        )
    assert err.value.code == "bad_signature"
    # An answer to another request is recognised as stale.
    with pytest.raises(TrustError) as err:
        claim.open_response(
            out.response, request_body=req.body + b" ", token=token, box_private_key=bytes(box)
        )
    assert err.value.code == "stale_response"
    # The device is registered with the key it claimed with.
    dev = reg.device("kiosk-1")
    assert dev is not None and dev.public_key_bytes == ident.public_key


def test_every_refusal_code(reg: FleetRegistry, tmp_path: Path) -> None:
    ident, box = kiosk(tmp_path, "k")

    def verdict(token: str, device: str = "kiosk-1", now: float = NOW) -> str:
        req = claim.parse_request(request(ident, box, token, device))
        return judge(reg, req, now=now).code

    assert verdict("t12345678.AAAAAAAAAAAAAAAAAAAA") == "token_unknown"
    _r, token = reg.create_token(device="kiosk-1", ttl_s=60, now=NOW)
    tid, _secret = claim.split_token(token)
    assert verdict(f"{tid}.AAAAAAAAAAAAAAAAAAAA") == "bad_proof"
    assert verdict(token, now=NOW + 61) == "token_expired"
    assert verdict(token, device="kiosk-9") == "wrong_device"
    # An unbound token, for a device id registered with another key.
    _r, free = reg.create_token(device=None, ttl_s=60, now=NOW)
    other, obox = kiosk(tmp_path, "other")
    first = claim.parse_request(request(other, obox, free, "kiosk-7"))
    assert answer_claim(reg, first, broker=None, now=NOW).verdict.status == "approved"
    _r, free2 = reg.create_token(device=None, ttl_s=60, now=NOW)
    assert verdict(free2, device="kiosk-7") == "device_exists"
    # The used token: refused for anybody else, an idempotent repeat for the same claim.
    assert verdict(free, device="kiosk-8") == "token_used"
    again = answer_claim(reg, first, broker=None, now=NOW + 5)
    assert again.verdict.status == "approved" and again.verdict.repeat
    # Refusals carry the reason and the next step, authenticated when the token is known.
    req = claim.parse_request(request(ident, box, free, "kiosk-8"))
    out = answer_claim(reg, req, broker=None, now=NOW)
    ans = claim.open_response(
        out.response, request_body=req.body, token=free, box_private_key=bytes(box)
    )
    assert (ans.status, ans.code, ans.authenticated) == ("refused", "token_used", True)
    assert "claim-token" in ans.message


def test_unknown_token_refusal_is_unauthenticated_and_approval_needs_mac(
    reg: FleetRegistry, tmp_path: Path
) -> None:
    ident, box = kiosk(tmp_path, "k")
    token = "t12345678.AAAAAAAAAAAAAAAAAAAA"
    req = claim.parse_request(request(ident, box, token))
    out = answer_claim(reg, req, broker=None, now=NOW)
    ans = claim.open_response(
        out.response, request_body=req.body, token=token, box_private_key=bytes(box)
    )
    assert (ans.status, ans.code, ans.authenticated) == ("refused", "token_unknown", False)
    # A forged "approval" without MAC (e.g. on an open development broker) is refused.
    forged = claim.build_response(
        req, status="approved", secret=None, bundle={"device_id": "kiosk-1"}, now=NOW
    )
    with pytest.raises(TrustError) as err:
        claim.open_response(forged, request_body=req.body, token=token, box_private_key=bytes(box))
    assert err.value.code == "bad_signature"


def test_a_token_is_used_once_even_by_concurrent_approvals(
    reg: FleetRegistry, tmp_path: Path
) -> None:
    _r, token = reg.create_token(device=None, ttl_s=600, now=NOW)
    reqs = []
    for i in range(6):
        ident, box = kiosk(tmp_path, f"k{i}")
        reqs.append(claim.parse_request(request(ident, box, token, f"kiosk-{i}")))
    results: list[str] = []
    barrier = threading.Barrier(len(reqs))

    def go(r: claim.ClaimRequest) -> None:
        barrier.wait()
        results.append(answer_claim(FleetRegistry(reg.home), r, broker=None, now=NOW).verdict.code)

    threads = [threading.Thread(target=go, args=(r,)) for r in reqs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["ok"] + ["token_used"] * 5
    assert len(reg.devices()) == 1
    assert (reg.home / "claims" / "tokens.json").stat().st_mode & 0o777 == 0o600
