"""The issuance package: LDS files with EF.SOD already signed centrally.

The fleet side (and the tests) BUILD a package with :func:`build_issuance_package`, which needs
a Document Signer key; the kiosk only CHECKS one with :func:`verify_package` against the CSCA
certificates of its trust bundle before it touches a card. The wire form is JSON::

    {"version": 1, "package_id": "...", "files": {"EF.COM": "<base64>", "DG1": ..., "EF.SOD": ...}}
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..citizen.validation import (
    CitizenDataInvalid,
    Problem,
    Rule,
    check_citizen,
    normalise_text,
)
from ..errors import ProtocolError, TrustError
from ..protocol.codes import ErrorCode
from .files import (
    FILE_FIDS,
    NO_EXPIRY_TEXT,
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
from .mrz import NO_EXPIRY, Td1, transliterate
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
    """Every check the kiosk makes before writing. Raises TrustError (signature, chain, hashes),
    ProtocolError(lds_malformed) (a file that does not parse, EF.COM inconsistent), or, once
    Passive Authentication has passed, :class:`CitizenDataInvalid` (``citizen_invalid``) for
    citizen data that must not reach a chip (:func:`check_citizen_data`).

    ``now`` is the kiosk's clock for the certificates' validity and, as the date in Vietnam,
    the "today" of the citizen checks (born / issued in the future).
    """
    files = {str(k): bytes(v) for k, v in pkg.files.items()}
    for name, data in files.items():
        # Each file must be exactly one TLV with the outer tag of its kind.
        hdr, length = header_size(data)
        if hdr + length != len(data):
            raise ProtocolError(
                f"{name} length field does not match its size",
                device="card",
                code=ErrorCode.LDS_MALFORMED,
                details={"file": name},
            )
    com = decode_ef_com(files["EF.COM"])
    dg_names = sorted((n for n in files if n.startswith("DG")), key=_dg_number)
    if sorted(com.data_groups) != [_dg_number(n) for n in dg_names]:
        raise ProtocolError(
            "EF.COM does not list exactly the data groups in the package",
            device="card",
            code=ErrorCode.LDS_MALFORMED,
            details={"ef_com": list(com.data_groups), "package": dg_names},
        )
    mrz = decode_dg1(files["DG1"])
    if "DG2" in files:
        decode_dg2(files["DG2"])
    dg13 = decode_dg13(files["DG13"]) if "DG13" in files else None
    dgs = {_dg_number(n): files[n] for n in dg_names}
    sod = parse_sod(files["EF.SOD"])
    missing = sorted(set(dgs) - set(sod.dg_hashes))
    if missing:
        raise TrustError(
            "EF.SOD does not cover every data group",
            code=ErrorCode.DG_HASH_MISMATCH,
            details={"not_in_sod": missing},
        )
    now = now or dt.datetime.now(dt.UTC)
    pa = passive_authentication(files["EF.SOD"], dgs, trust_anchors, now=now)
    # The signature first: a DG13 altered after signing is dg_hash_mismatch, not a citizen.
    pa.raise_for_failure()
    check_citizen_data(mrz, dg13, today=now.astimezone(_VIETNAM).date())
    ordered = {
        "EF.COM": files["EF.COM"],
        **{n: files[n] for n in dg_names},
        "EF.SOD": files["EF.SOD"],
    }
    return VerifiedPackage(pkg.package_id, ordered, mrz, pa)


# Vietnam's time (UTC+7, no daylight saving time): the date of "today" in the citizen checks.
_VIETNAM = dt.timezone(dt.timedelta(hours=7))
# A CCCD's document number: the 12-digit personal identification number (docs/card.md).
_CCCD_NUMBER = re.compile(r"[0-9]{12}")


def check_citizen_data(mrz: Td1, dg13: Dg13 | None, *, today: dt.date | None = None) -> None:
    """The kiosk's citizen check of a package (docs/card.md, "Citizen data"): a CCCD (a
    12-digit document number) must carry DG13, and DG13 and DG1 must pass
    :func:`check_issuance_data`. A document whose number is not 12 digits is not a CCCD (the
    ICAO 9303 specimens of the chip tests): it has no citizen record, and nothing is checked.
    Raises :class:`CitizenDataInvalid`.
    """
    if dg13 is None:
        if _CCCD_NUMBER.fullmatch(mrz.document_number):
            raise CitizenDataInvalid(
                [
                    Problem(
                        "DG13",
                        Rule.REQUIRED,
                        "a CCCD (12-digit document number) needs DG13, the citizen's details",
                    )
                ],
                where="issuance package",
            )
        return
    check_issuance_data(mrz, dg13, today=today)


_DG13_SEX = {"Nam": "M", "Nữ": "F"}
_DG13_TEXTS = (
    "full_name",
    "sex",
    "nationality",
    "ethnicity",
    "religion",
    "place_of_origin",
    "permanent_residence",
    "identifying_marks",
    "father",
    "mother",
    "spouse",
)


def check_issuance_data(mrz: Td1, dg13: Dg13 | None, *, today: dt.date | None = None) -> None:
    """Refuse citizen data that must not reach a chip (docs/citizen-data.md): DG13's details
    through the one citizen validation (stage issuance), and DG1's MRZ against them (number,
    birth date, sex, expiry or the fillers of a card without one, transliterated name).
    Raises :class:`CitizenDataInvalid` listing every problem. Without DG13 there is no record
    to check the MRZ against: nothing is done.
    """
    if dg13 is None:
        return
    sex = dg13.sex if dg13.sex is None else _DG13_SEX.get(unicodedata.normalize("NFC", dg13.sex))
    record = {
        "personal_id": dg13.personal_id,
        "full_name": dg13.full_name,
        "date_of_birth": dg13.date_of_birth,
        "sex": sex if sex is not None else dg13.sex,
        "nationality": dg13.nationality,
        "ethnicity": dg13.ethnicity,
        "religion": dg13.religion,
        "place_of_origin": dg13.place_of_origin,
        "permanent_residence": dg13.permanent_residence,
        "identifying_marks": dg13.identifying_marks,
        "date_of_issue": dg13.date_of_issue,
        # "Không thời hạn": no expiry (issued from 58; Law on Identification 2023 art. 21).
        "date_of_expiry": None if dg13.date_of_expiry == NO_EXPIRY_TEXT else dg13.date_of_expiry,
        "father": dg13.father,
        "mother": dg13.mother,
        "spouse": dg13.spouse,
        "old_id_number": dg13.old_id_number,
    }
    problems = check_citizen(record, today=today)
    if not problems:
        # The chip keeps the text as written: it must already be in NFC with single spaces
        # (the validation normalises a record; here nothing is rewritten, so it refuses).
        for name in _DG13_TEXTS:
            value = getattr(dg13, name)
            if value is not None and value != normalise_text(value):
                problems.append(
                    Problem(name, Rule.NOT_NORMALISED, "not in Unicode NFC with single spaces")
                )
        problems += _mrz_disagreements(mrz, record)
    if problems:
        raise CitizenDataInvalid(problems, where="issuance package")


def _mrz_disagreements(mrz: Td1, record: dict[str, str | None]) -> list[Problem]:
    def yymmdd(text: str | None) -> str | None:
        # DG13 dates are ddMMyyyy or dd/MM/yyyy (already validated): the MRZ's YYMMDD.
        digits = (text or "").replace("/", "")
        return digits[6:8] + digits[2:4] + digits[0:2] if len(digits) == 8 else None

    out: list[Problem] = []

    def differ(field: str, what: str) -> None:
        out.append(Problem(f"DG1.{field}", Rule.MRZ_MISMATCH, f"the MRZ's {what} is not DG13's"))

    if mrz.document_number != record["personal_id"]:
        differ("document_number", "document number")
    if mrz.birth != yymmdd(record["date_of_birth"]):
        differ("birth", "birth date")
    if mrz.sex != record["sex"]:
        differ("sex", "sex")
    # A card without expiry carries fillers in the MRZ (mrz.NO_EXPIRY, docs/card.md).
    expiry = yymmdd(record["date_of_expiry"]) or NO_EXPIRY
    if mrz.expiry != expiry:
        differ("expiry", "expiry date")
    try:
        same_name = transliterate(f"{mrz.primary} {mrz.secondary}") == transliterate(
            record["full_name"] or ""
        )
    except ValueError:
        same_name = False
    if not same_name:
        differ("name", "name")
    return out


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
