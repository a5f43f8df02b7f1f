"""Issuer-side tool: build an issuance package, or check one as the kiosk would.

    python -m appliance.lds.tool build --person person.json --ds-key ds.key --ds-cert ds.pem \\
        [--face-record face.fac] [--skip-citizen-check] --out package.json
    python -m appliance.lds.tool verify --package package.json --trust-bundle csca.pem
    python -m appliance.lds.tool test-pki --out DIR

``person.json``: ``{"package_id", "document_number", "birth" (YYMMDD), "sex" (M/F/<),
"expiry" (YYMMDD), "family_name", "given_names", "dg13": {Dg13 fields}}``; names may carry
Vietnamese diacritics (transliterated for the MRZ, kept in DG13). The face record is an
ISO/IEC 19794-5 record (the camera's output). The Document Signer key belongs to the central
issuer: never copy it to a kiosk.

``build`` refuses, before signing, citizen data a kiosk would refuse (``citizen_invalid``,
every field and rule listed; docs/citizen-data.md): DG13 checked as a citizen record and DG1's
MRZ against it, and a 12-digit (CCCD) document number without DG13. ``--skip-citizen-check``
builds such a package anyway, for tests of that refusal only. ``verify`` makes every check
the kiosk makes before writing, the citizen check included.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from ..citizen.validation import CitizenDataInvalid
from ..errors import ApplianceError
from .files import Dg13, encode_dg1, encode_dg13
from .issuance import build_issuance_package, check_citizen_data, verify_package
from .mrz import Td1
from .package import IssuancePackage
from .sod import load_trust_bundle
from .testpki import make_test_pki, write_test_pki


def _build(args: argparse.Namespace) -> int:
    person: dict[str, Any] = json.loads(args.person.read_text(encoding="utf-8"))
    key = serialization.load_pem_private_key(args.ds_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("the Document Signer key must be EC or RSA")
    cert = x509.load_pem_x509_certificate(args.ds_cert.read_bytes())
    td1 = Td1(
        document_number=person["document_number"],
        birth=person["birth"],
        sex=person["sex"],
        expiry=person["expiry"],
        primary=person["family_name"],
        secondary=person.get("given_names", ""),
    )
    dg13 = Dg13(**person["dg13"]) if person.get("dg13") else None
    if args.skip_citizen_check:
        print(
            "warning: citizen data NOT checked (--skip-citizen-check): "
            "a kiosk refuses this package if it is inconsistent",
            file=sys.stderr,
        )
    else:
        # The files' own format first (a malformed field is bad input, exit 2), then the
        # citizen (exit 1), before the Document Signer signs anything.
        encode_dg1(td1)
        if dg13 is not None:
            encode_dg13(dg13)
        check_citizen_data(td1, dg13)
    faces = [args.face_record.read_bytes()] if args.face_record else None
    pkg = build_issuance_package(
        package_id=person["package_id"],
        mrz=td1,
        dg13=dg13,
        face_records=faces,
        ds_key=key,
        ds_cert=cert,
    )
    args.out.write_text(pkg.model_dump_json(), encoding="utf-8")
    print(f"wrote {args.out} ({', '.join(pkg.files)})")
    return 0


def _verify(args: argparse.Namespace) -> int:
    pkg = IssuancePackage.model_validate_json(args.package.read_text(encoding="utf-8"))
    v = verify_package(pkg, load_trust_bundle(args.trust_bundle))
    print(
        json.dumps(
            {"package_id": v.package_id, "passive_authentication": v.pa.to_dict()},
            indent=2,
            ensure_ascii=False,
        )
    )
    return 0


def _test_pki(args: argparse.Namespace) -> int:
    paths = write_test_pki(make_test_pki(), args.out)
    for name, p in paths.items():
        print(f"{name}: {p}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m appliance.lds.tool", description=__doc__)
    ap.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build and sign an issuance package")
    b.add_argument("--person", type=Path, required=True, help="person JSON (see above)")
    b.add_argument("--ds-key", type=Path, required=True, help="Document Signer key, PEM")
    b.add_argument("--ds-cert", type=Path, required=True, help="Document Signer cert, PEM")
    b.add_argument(
        "--face-record",
        type=Path,
        default=None,
        help="ISO/IEC 19794-5 face record for DG2 (default: no DG2)",
    )
    b.add_argument(
        "--skip-citizen-check",
        action="store_true",
        help="build even when the citizen data is inconsistent (tests of the kiosk's refusal "
        "only: a kiosk refuses such a package with citizen_invalid)",
    )
    b.add_argument("--out", type=Path, required=True, help="package JSON to write")
    v = sub.add_parser("verify", help="check a package as the kiosk does before writing")
    v.add_argument("--package", type=Path, required=True, help="package JSON")
    v.add_argument("--trust-bundle", type=Path, required=True, help="CSCA PEM file or dir")
    t = sub.add_parser("test-pki", help="make a throw-away CSCA + DS (tests and demos only)")
    t.add_argument("--out", type=Path, required=True, help="directory to write to")
    args = ap.parse_args(argv)
    try:
        return int({"build": _build, "verify": _verify, "test-pki": _test_pki}[args.cmd](args))
    except CitizenDataInvalid as exc:
        print(f"error: {exc.code}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    except ApplianceError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except (ValidationError, ValueError, KeyError, OSError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
