"""The claim protocol: a kiosk registers with the fleet using a one-time claim token.

Pure codec and checks (no I/O): the kiosk builds a request, the fleet's ``approve`` tool
verifies it and answers, the kiosk opens the answer. Topics (prefix ``kiosk``)::

    kiosk/claims/{device id}/request    kiosk -> fleet, retained
    kiosk/claims/{device id}/response   fleet -> kiosk, retained

The claim id is the device id: a kiosk that already holds its broker certificate may only
write ``claims/<its CN>/request`` (provisioning/acl.template), and the shared ``claimant``
bootstrap certificate may write any.

**Token.** An administrator creates it (``appliance fleet claim-token``): ``<id>.<secret>``, e.g.
``t3f9a1c2e.MFRGGZDFMZTWQ2LKNNWG23TP``. The id names it; the secret never travels: the request
carries ``HMAC-SHA256(secret, context || 0 || body)`` instead, which binds the token to the
exact request (device id, device key, sealing key). A token is single use; the fleet records
which claim used it.

**Request** (JSON)::

    {"typ": "appliance.claim-request.v1", "body": "<base64 body bytes>",
     "sig": "<device signature header of the body>", "proof": "<base64 HMAC>"}
    body = {"claim_id", "device_id", "token_id", "device_key" (ed25519-pub:...),
            "box_key" (x25519-pub:..., a one-time key for the answer), "site", "hostname",
            "version", "issued_at", "nonce"}

The device signs the body with its identity key (proof of possession of the key that will be
registered).

**Response** (JSON)::

    {"typ": "appliance.claim-response.v1", "body": "<base64 body bytes>",
     "mac": "<base64 HMAC-SHA256(secret, context || 0 || body)>" | null}
    body = {"claim_id", "request": "<sha256 hex of the request body it answers>",
            "status": "approved" | "refused", "code", "message", "issued_at",
            "sealed": "<base64 SealedBox(box_key, bundle JSON)>" | null}

Every holder of the claimant certificate can read every response, so the credentials (the
trust bundle and a broker client key if the fleet issues one) travel only inside ``sealed``,
encrypted to the one-time ``box_key`` of the request. The MAC with the token's secret tells the
kiosk that the answer comes from whoever issued its token. A refusal of an unknown token
cannot carry a MAC (the fleet has no secret for it) and is shown as unauthenticated.

**Bundle** (JSON inside ``sealed``): ``device_id``, ``site``, ``groups``, ``root_keys``
(``ed25519-pub:...`` texts), ``enrollment_key`` (``x25519-pub:...`` or null), ``broker``
(``{host, port, prefix}`` or null), ``tls`` (``{ca, cert, key}`` PEM texts or null),
``fleet`` (root key id), ``approved_at``, ``approved_by``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from ..errors import TrustError
from ..protocol.codes import ErrorCode
from ..trust.certs import NAME_RE
from ..trust.keys import (
    DeviceIdentity,
    DeviceSignature,
    b64decode,
    b64encode,
    encode_public_key,
    key_id,
    load_json,
    parse_public_key,
    verify_device_message,
)
from ..trust.sealed import X25519_PUB_PREFIX, parse_enrollment_public_key

REQUEST_TYPE = "appliance.claim-request.v1"
RESPONSE_TYPE = "appliance.claim-response.v1"
CTX_REQUEST = b"appliance/claim-request/v1"
CTX_RESPONSE = b"appliance/claim-response/v1"
MAX_MESSAGE = 64 * 1024
TOKEN_ID_RE_LEN = 9

#: Refusal codes the fleet answers with (docs/provisioning.md).
REFUSAL_CODES = (
    ErrorCode.TOKEN_UNKNOWN,
    ErrorCode.TOKEN_USED,
    ErrorCode.TOKEN_EXPIRED,
    ErrorCode.BAD_PROOF,
    ErrorCode.WRONG_DEVICE,
    ErrorCode.DEVICE_EXISTS,
    ErrorCode.DENIED,
    ErrorCode.MALFORMED_REQUEST,
)


def _bad(message: str, code: str = ErrorCode.MALFORMED_REQUEST, **details: Any) -> TrustError:
    return TrustError(message, code=code, details=details)


# --- tokens -----------------------------------------------------------------------------------


def new_token() -> tuple[str, str]:
    """A fresh ``(token_id, secret)``; the token as typed is ``f"{id}.{secret}"``."""
    token_id = "t" + secrets.token_hex(4)
    secret = b64encode(secrets.token_bytes(15)).replace("+", "A").replace("/", "B")
    return token_id, secret


def split_token(token: str) -> tuple[str, str]:
    """``id.secret`` -> (id, secret), with a clear error for anything else."""
    text = token.strip() if isinstance(token, str) else ""
    parts = text.split(".")
    if (
        len(parts) != 2
        or len(parts[0]) != TOKEN_ID_RE_LEN
        or not parts[0].startswith("t")
        or len(parts[1]) < 16
        or not parts[1].isascii()
    ):
        raise _bad(
            "a claim token looks like 't3f9a1c2e.MFRGGZDFMZTWQ2LKNNWG23TP' (from "
            "'appliance fleet claim-token'); check that it was copied completely",
            code=ErrorCode.TOKEN_MALFORMED,
        )
    return parts[0], parts[1]


def _mac(secret: str, context: bytes, body: bytes) -> bytes:
    return hmac.new(secret.encode("ascii"), context + b"\x00" + body, hashlib.sha256).digest()


# --- request ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimRequest:
    """A parsed (and, from :func:`parse_request`, signature-checked) request."""

    claim_id: str
    device_id: str
    token_id: str
    device_key: bytes
    box_key: bytes
    site: str
    hostname: str
    version: str
    issued_at: int
    body: bytes
    proof: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

    @property
    def device_key_id(self) -> str:
        return key_id(self.device_key)

    def check_proof(self, secret: str) -> bool:
        """Whether the request was made with the token whose secret is ``secret``."""
        return hmac.compare_digest(self.proof, _mac(secret, CTX_REQUEST, self.body))


def build_request(
    identity: DeviceIdentity,
    *,
    device_id: str,
    token: str,
    box_public_key: bytes,
    site: str = "",
    hostname: str = "",
    version: str = "",
    now: float | None = None,
) -> bytes:
    """The request the kiosk publishes (retained) on ``claims/<device id>/request``."""
    token_id, secret = split_token(token)
    if not NAME_RE.match(device_id):
        raise _bad(f"invalid device id {device_id!r}", code=ErrorCode.INVALID_NAME)
    body_obj = {
        "claim_id": device_id,
        "device_id": device_id,
        "token_id": token_id,
        "device_key": encode_public_key(identity.public_key).decode().strip(),
        "box_key": X25519_PUB_PREFIX + b64encode(box_public_key),
        "site": site,
        "hostname": hostname,
        "version": version,
        "issued_at": int(time.time() if now is None else now),
        "nonce": b64encode(secrets.token_bytes(16)),
    }
    body = json.dumps(body_obj, separators=(",", ":")).encode()
    msg = {
        "typ": REQUEST_TYPE,
        "body": b64encode(body),
        "sig": identity.sign(body).to_header(),
        "proof": b64encode(_mac(secret, CTX_REQUEST, body)),
    }
    return json.dumps(msg, separators=(",", ":")).encode()


def _obj(data: bytes, typ: str, what: str) -> dict[str, Any]:
    if not isinstance(data, bytes | bytearray) or len(data) > MAX_MESSAGE:
        raise _bad(f"{what} too large or not bytes")
    try:
        obj = load_json(bytes(data))
    except (UnicodeDecodeError, ValueError):
        raise _bad(f"{what} is not JSON") from None
    if not isinstance(obj, dict) or obj.get("typ") != typ:
        raise _bad(f"{what} is not a {typ} object")
    return obj


def _str(body: dict[str, Any], name: str, limit: int = 200) -> str:
    v = body.get(name)
    if not isinstance(v, str) or len(v) > limit:
        raise _bad(f"field {name!r} must be a string of at most {limit} characters", field=name)
    return v


def parse_request(data: bytes) -> ClaimRequest:
    """Parse a request and check the device's signature over its body (``malformed_request``
    or ``bad_signature``). The token proof is checked by the fleet with the secret."""
    obj = _obj(data, REQUEST_TYPE, "claim request")
    body = b64decode(obj.get("body"), what="body", code=ErrorCode.MALFORMED_REQUEST)
    proof = b64decode(obj.get("proof"), what="proof", code=ErrorCode.MALFORMED_REQUEST)
    try:
        b = load_json(body)
    except (UnicodeDecodeError, ValueError):
        raise _bad("claim request body is not JSON") from None
    if not isinstance(b, dict):
        raise _bad("claim request body is not an object")
    device_id = _str(b, "device_id", 64)
    claim_id = _str(b, "claim_id", 64)
    if not NAME_RE.match(device_id) or claim_id != device_id:
        raise _bad("claim_id must equal a valid device_id")
    try:
        device_key = parse_public_key(_str(b, "device_key"))
        box_key = parse_enrollment_public_key(_str(b, "box_key"))
    except TrustError as exc:
        raise _bad(f"claim request key: {exc.message}") from None
    issued_at = b.get("issued_at")
    if not isinstance(issued_at, int) or isinstance(issued_at, bool) or issued_at < 0:
        raise _bad("issued_at must be a non-negative integer")
    sig = obj.get("sig")
    if not isinstance(sig, str):
        raise _bad("claim request without device signature", code=ErrorCode.UNSIGNED)
    verify_device_message(device_key, body, DeviceSignature.from_header(sig))
    return ClaimRequest(
        claim_id=claim_id,
        device_id=device_id,
        token_id=_str(b, "token_id", 32),
        device_key=device_key,
        box_key=box_key,
        site=_str(b, "site"),
        hostname=_str(b, "hostname"),
        version=_str(b, "version", 64),
        issued_at=issued_at,
        body=body,
        proof=proof,
    )


# --- response ---------------------------------------------------------------------------------


def build_response(
    request: ClaimRequest,
    *,
    status: str,
    code: str = "ok",
    message: str = "",
    secret: str | None,
    bundle: dict[str, Any] | None = None,
    now: float | None = None,
) -> bytes:
    """The fleet's answer. ``bundle`` (approvals only) is sealed to the request's box key;
    ``secret`` (the token's, when known) authenticates the answer."""
    if status not in ("approved", "refused"):
        raise ValueError(f"bad status {status!r}")
    if (status == "approved") != (bundle is not None):
        raise ValueError("an approval carries a bundle, a refusal none")
    sealed = None
    if bundle is not None:
        plain = json.dumps(bundle, separators=(",", ":")).encode()
        sealed = b64encode(bytes(SealedBox(PublicKey(request.box_key)).encrypt(plain)))
    body_obj = {
        "claim_id": request.claim_id,
        "request": request.sha256,
        "status": status,
        "code": code,
        "message": message,
        "issued_at": int(time.time() if now is None else now),
        "sealed": sealed,
    }
    body = json.dumps(body_obj, separators=(",", ":")).encode()
    msg = {
        "typ": RESPONSE_TYPE,
        "body": b64encode(body),
        "mac": b64encode(_mac(secret, CTX_RESPONSE, body)) if secret else None,
    }
    return json.dumps(msg, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ClaimAnswer:
    """What the kiosk learnt from a response."""

    status: str
    code: str
    message: str
    authenticated: bool
    bundle: dict[str, Any] | None


def response_request_hash(data: bytes) -> str | None:
    """The request hash a response answers, or None if it is not a readable response."""
    try:
        obj = _obj(data, RESPONSE_TYPE, "claim response")
        body = load_json(b64decode(obj.get("body"), what="body", code=ErrorCode.MALFORMED_REQUEST))
    except (TrustError, UnicodeDecodeError, ValueError):
        return None
    value = body.get("request") if isinstance(body, dict) else None
    return value if isinstance(value, str) else None


def open_response(
    data: bytes, *, request_body: bytes, token: str, box_private_key: bytes
) -> ClaimAnswer:
    """Check and open the answer to our request. An approval must carry a valid MAC (else
    ``bad_signature``) and a bundle we can open; a refusal without a MAC is reported as
    unauthenticated (only an unknown token gets one)."""
    _token_id, secret = split_token(token)
    obj = _obj(data, RESPONSE_TYPE, "claim response")
    body = b64decode(obj.get("body"), what="body", code=ErrorCode.MALFORMED_REQUEST)
    try:
        b = load_json(body)
    except (UnicodeDecodeError, ValueError):
        raise _bad("claim response body is not JSON") from None
    if not isinstance(b, dict):
        raise _bad("claim response body is not an object")
    if b.get("request") != hashlib.sha256(request_body).hexdigest():
        raise _bad("claim response answers another request", code=ErrorCode.STALE_RESPONSE)
    mac_text = obj.get("mac")
    authenticated = False
    if mac_text is not None:
        mac = b64decode(mac_text, what="mac", code=ErrorCode.MALFORMED_REQUEST)
        if not hmac.compare_digest(mac, _mac(secret, CTX_RESPONSE, body)):
            raise _bad("claim response MAC does not verify", code=ErrorCode.BAD_SIGNATURE)
        authenticated = True
    status, code, message = b.get("status"), b.get("code"), b.get("message")
    if status not in ("approved", "refused") or not isinstance(code, str):
        raise _bad("claim response status/code invalid")
    bundle = None
    if status == "approved":
        if not authenticated:
            raise _bad(
                "an approval without MAC is not from our fleet", code=ErrorCode.BAD_SIGNATURE
            )
        sealed = b64decode(b.get("sealed"), what="sealed", code=ErrorCode.MALFORMED_REQUEST)
        try:
            plain = SealedBox(PrivateKey(box_private_key)).decrypt(sealed)
            bundle = load_json(plain)
        except (CryptoError, UnicodeDecodeError, ValueError):
            raise _bad("the sealed bundle does not open with our claim key") from None
        if not isinstance(bundle, dict):
            raise _bad("the sealed bundle is not an object")
    return ClaimAnswer(
        status=str(status),
        code=code,
        message=str(message or ""),
        authenticated=authenticated,
        bundle=bundle,
    )
