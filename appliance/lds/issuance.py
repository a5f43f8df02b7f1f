"""The issuance package: LDS files with EF.SOD already signed centrally.

The fleet side (and the tests) BUILD a package with :func:`build_issuance_package`, which needs
a Document Signer key; the kiosk only CHECKS one with :func:`verify_package` against the CSCA
certificates of its trust bundle before it touches a card. The wire form is JSON::

    {"version": 1, "package_id": "...", "files": {"EF.COM": "<base64>", "DG1": ..., "EF.SOD": ...}}
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..errors import ProtocolError, TrustError
from .files import (
    FILE_FIDS,
    Dg13,
    decode_dg1,
    decode_dg2,
    decode_dg13,
    decode_ef_com,
    encode_dg1,
    encode_dg2,
    encode_dg13,
    encode_ef_com,
)
from .mrz import Td1
from .package import IssuancePackage
from .sod import HashName, PaResult, parse_sod, passive_authentication, sign_sod
from .tlv import header_size

# The wire model lives in package.py so the kiosk can accept it without loading the crypto.


@dataclass(frozen=True)
class VerifiedPackage:
    """A package whose SOD chain and DG hashes held; ready to write."""

    package_id: str
    files: dict[str, bytes]  # name -> bytes, in writing order (EF.COM, DGs, EF.SOD last)
    mrz: Td1
    pa: PaResult

    @property
    def dg_files(self) -> dict[int, bytes]:
        return {int(n[2:]): b for n, b in self.files.items() if n.startswith("DG")}


def _dg_number(name: str) -> int:
    return int(name[2:])


def verify_package(
    pkg: IssuancePackage,
    trust_anchors: Sequence[x509.Certificate],
    *,
    now: dt.datetime | None = None,
) -> VerifiedPackage:
    """Every check the kiosk makes before writing. Raises TrustError (signature, chain, hashes)
    or ProtocolError(lds_malformed) (a file that does not parse, EF.COM inconsistent)."""
    files = {str(k): bytes(v) for k, v in pkg.files.items()}
    for name, data in files.items():
        # Each file must be exactly one TLV with the outer tag of its kind.
        hdr, length = header_size(data)
        if hdr + length != len(data):
            raise ProtocolError(
                f"{name} length field does not match its size",
                device="card",
                code="lds_malformed",
                details={"file": name},
            )
    com = decode_ef_com(files["EF.COM"])
    dg_names = sorted((n for n in files if n.startswith("DG")), key=_dg_number)
    if sorted(com.data_groups) != [_dg_number(n) for n in dg_names]:
        raise ProtocolError(
            "EF.COM does not list exactly the data groups in the package",
            device="card",
            code="lds_malformed",
            details={"ef_com": list(com.data_groups), "package": dg_names},
        )
    mrz = decode_dg1(files["DG1"])
    if "DG2" in files:
        decode_dg2(files["DG2"])
    if "DG13" in files:
        decode_dg13(files["DG13"])
    dgs = {_dg_number(n): files[n] for n in dg_names}
    sod = parse_sod(files["EF.SOD"])
    missing = sorted(set(dgs) - set(sod.dg_hashes))
    if missing:
        raise TrustError(
            "EF.SOD does not cover every data group",
            code="dg_hash_mismatch",
            details={"not_in_sod": missing},
        )
    pa = passive_authentication(files["EF.SOD"], dgs, trust_anchors, now=now)
    pa.raise_for_failure()
    ordered = {
        "EF.COM": files["EF.COM"],
        **{n: files[n] for n in dg_names},
        "EF.SOD": files["EF.SOD"],
    }
    return VerifiedPackage(pkg.package_id, ordered, mrz, pa)


def build_issuance_package(
    *,
    package_id: str,
    mrz: Td1,
    dg13: Dg13 | None,
    face_records: list[bytes] | None,
    ds_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    ds_cert: x509.Certificate,
    hash_alg: HashName = "sha256",
) -> IssuancePackage:
    """Build EF.COM, DG1, DG2, DG13 and EF.SOD signed with the Document Signer (issuer side)."""
    dgs: dict[int, bytes] = {1: encode_dg1(mrz)}
    if face_records:
        dgs[2] = encode_dg2(face_records)
    if dg13 is not None:
        dgs[13] = encode_dg13(dg13)
    sod = sign_sod(dgs, ds_key, ds_cert, hash_alg)
    files: dict[str, bytes] = {"EF.COM": encode_ef_com(sorted(dgs))}
    files.update({f"DG{n}": b for n, b in sorted(dgs.items())})
    files["EF.SOD"] = sod
    return IssuancePackage.model_validate(
        {"package_id": package_id, "files": {k: _b64(v) for k, v in files.items()}}
    )


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


def package_digest(pkg: IssuancePackage) -> str:
    """A short SHA-256 over the package's files (for audit rows; never the content itself)."""
    h = hashlib.sha256()
    for name in sorted(pkg.files):
        h.update(name.encode() + b"\0" + bytes(pkg.files[name]))
    return h.hexdigest()[:16]


def fid_of(name: str) -> int:
    return FILE_FIDS[name]
