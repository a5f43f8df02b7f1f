"""Fleet side of the claim protocol (:mod:`appliance.provisioning.claim`): check a kiosk's
claim request against the one-time tokens of the fleet home, record the approved device, and
build the answer with its sealed trust bundle.

Checks, in order, each with its refusal code: the token id is known (``token_unknown``), the
request was made with the token's secret (``bad_proof``), the token is unused
(``token_used``; the same claim with the same device key approved again is not a reuse, the
answer is simply sent again), not expired (``token_expired``), bound to this device id if it
was created for one (``wrong_device``), and the device id is not registered with another key
(``device_exists``, unless ``replace``).
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ApplianceError, TrustError
from ..protocol.codes import ErrorCode
from ..provisioning.claim import ClaimRequest, build_response
from ..trust.certs import ROOT_PUB_FILE
from ..trust.keys import encode_public_key, key_id, load_public_key
from .registry import DeviceRecord, FleetRegistry, TokenRecord, load_home_enrollment_key

log = logging.getLogger(__name__)

#: The technician's next step after each refusal (keyed by the code, a str).
NEXT_STEPS: dict[str, str] = {
    ErrorCode.TOKEN_UNKNOWN: "the token is not one of this fleet's: check the fleet home "
    "(--home) or create a token with 'appliance fleet claim-token' and re-run 'appliance "
    "provision' with it",
    ErrorCode.BAD_PROOF: "the request was not made with the token's secret (mistyped "
    "token?): re-run 'appliance provision --claim-token ...' with the exact token",
    ErrorCode.TOKEN_USED: "a claim token is single use: create a new one with 'appliance fleet "
    "claim-token' and re-run 'appliance provision --claim-token NEW'",
    ErrorCode.TOKEN_EXPIRED: "create a new token with 'appliance fleet claim-token' and re-run "
    "'appliance provision --claim-token NEW'",
    ErrorCode.WRONG_DEVICE: "the token was created for another device id: use that device id or "
    "create a token for this one",
    ErrorCode.DEVICE_EXISTS: "this device id is registered with another key: if the kiosk was "
    "re-installed, approve with --replace; otherwise choose another device id",
    ErrorCode.DENIED: "the administrator refused the claim; ask why before trying again",
}


@dataclass(frozen=True)
class Verdict:
    status: str  # approved / refused
    code: str
    message: str
    token: TokenRecord | None
    repeat: bool = False  # an approval sent again for the same claim


def judge(reg: FleetRegistry, req: ClaimRequest, *, now: float, replace: bool = False) -> Verdict:
    """The decision for ``req`` (no state changes). Call under ``reg.locked()`` when acting on
    it, so two approvals cannot both use one token."""
    tok = reg.token(req.token_id)
    if tok is None:
        return Verdict(
            "refused", ErrorCode.TOKEN_UNKNOWN, f"unknown claim token {req.token_id}", None
        )
    if not req.check_proof(tok.secret):
        return Verdict(
            "refused", ErrorCode.BAD_PROOF, "the request's token proof does not verify", tok
        )
    if tok.used_by is not None:
        if tok.used_by == req.claim_id and tok.used_key == req.device_key_id:
            return Verdict("approved", "ok", "approved (sent again)", tok, repeat=True)
        return Verdict(
            "refused",
            ErrorCode.TOKEN_USED,
            f"claim token {tok.token_id} was already used by claim {tok.used_by}",
            tok,
        )
    if now > tok.expires_at:
        return Verdict(
            "refused", ErrorCode.TOKEN_EXPIRED, f"claim token {tok.token_id} expired", tok
        )
    if tok.device is not None and tok.device != req.device_id:
        return Verdict(
            "refused",
            ErrorCode.WRONG_DEVICE,
            f"claim token {tok.token_id} is for device {tok.device}, not {req.device_id}",
            tok,
        )
    existing = reg.device(req.device_id)
    if existing is not None and existing.key_id != req.device_key_id and not replace:
        return Verdict(
            "refused",
            ErrorCode.DEVICE_EXISTS,
            f"device {req.device_id} is already registered with key {existing.key_id}",
            tok,
        )
    return Verdict("approved", "ok", "approved", tok)


@dataclass(frozen=True)
class KioskBroker:
    """Where the approved kiosk should connect (written into its configuration)."""

    host: str
    port: int
    prefix: str


def issue_broker_certificate(
    device_id: str, ca_dir: Path, script: Path, *, days: int = 825
) -> dict[str, str]:
    """Run ``provisioning/issue-device-cert`` for ``device_id``; return the PEM texts
    ``{ca, cert, key}`` (the key file lives only in a private temporary directory)."""
    with tempfile.TemporaryDirectory(prefix="claim-cert-") as tmp:
        proc = subprocess.run(
            [str(script), "--ca-dir", str(ca_dir), "--out", tmp, "--days", str(days), device_id],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ApplianceError(
                f"issue-device-cert failed ({proc.returncode}): {proc.stderr.strip()}",
                code=ErrorCode.CERT_ISSUE_FAILED,
            )
        out = Path(tmp)
        return {
            "ca": (out / "ca.crt").read_text(),
            "cert": (out / f"{device_id}.crt").read_text(),
            "key": (out / f"{device_id}.key").read_text(),
        }


def build_bundle(
    reg: FleetRegistry,
    req: ClaimRequest,
    token: TokenRecord,
    *,
    broker: KioskBroker | None,
    tls: dict[str, str] | None,
    extra_groups: list[str],
    approved_by: str,
    now: float,
) -> dict[str, Any]:
    root_pub = load_public_key(reg.home / ROOT_PUB_FILE)
    groups = sorted(set(token.groups) | set(extra_groups))
    return {
        "device_id": req.device_id,
        "site": token.site or req.site,
        "groups": groups,
        "root_keys": [encode_public_key(root_pub).decode().strip()],
        "enrollment_key": load_home_enrollment_key(reg.home),
        "broker": None
        if broker is None
        else {"host": broker.host, "port": broker.port, "prefix": broker.prefix},
        "tls": tls,
        "fleet": key_id(root_pub),
        "approved_at": int(now),
        "approved_by": approved_by,
    }


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    response: bytes
    device: DeviceRecord | None


def answer_claim(
    reg: FleetRegistry,
    req: ClaimRequest,
    *,
    broker: KioskBroker | None,
    issue_tls: Any = None,
    extra_groups: list[str] | None = None,
    approved_by: str = "",
    replace: bool = False,
    deny: str | None = None,
    now: float | None = None,
) -> Outcome:
    """Decide, record and build the response bytes, all under the registry lock.

    ``issue_tls``: ``None``, or a callable ``(device_id) -> {ca, cert, key}`` that issues the
    kiosk's broker certificate. ``deny``: refuse with this reason (``denied``)."""
    t = time.time() if now is None else now
    with reg.locked():
        verdict = judge(reg, req, now=t, replace=replace)
        if deny is not None and verdict.status == "approved":
            verdict = Verdict("refused", ErrorCode.DENIED, deny, verdict.token)
        secret = verdict.token.secret if verdict.token is not None else None
        if verdict.status != "approved":
            resp = build_response(
                req,
                status="refused",
                code=verdict.code,
                message=f"{verdict.message}; next: {NEXT_STEPS.get(verdict.code, '')}",
                secret=secret,
                now=t,
            )
            log.info("claim %s refused: %s", req.claim_id, verdict.code)
            return Outcome(verdict, resp, None)
        token = verdict.token
        if token is None:  # approved verdicts always carry their token
            raise TrustError("approval without token", code=ErrorCode.INTERNAL_ERROR)
        tls = issue_tls(req.device_id) if issue_tls is not None else None
        bundle = build_bundle(
            reg,
            req,
            token,
            broker=broker,
            tls=tls,
            extra_groups=extra_groups or [],
            approved_by=approved_by,
            now=t,
        )
        record = DeviceRecord(
            device_id=req.device_id,
            public_key=encode_public_key(req.device_key).decode().strip(),
            key_id=req.device_key_id,
            site=bundle["site"],
            groups=bundle["groups"],
            claim_token=token.token_id,
            approved_at=int(t),
            approved_by=approved_by,
        )
        if not verdict.repeat:
            reg.use_token(token.token_id, req.claim_id, req.device_key_id, int(t))
        reg.save_device(record)
        resp = build_response(
            req,
            status="approved",
            message=verdict.message,
            secret=token.secret,
            bundle=bundle,
            now=t,
        )
        log.info("claim %s approved (device key %s)", req.claim_id, req.device_key_id)
        return Outcome(verdict, resp, record)
