"""EF.SOD: CMS SignedData over an LDSSecurityObject, and Passive Authentication.

ICAO 9303 Part 10 §4.6.2 (EF.SOD, RFC 5652 SignedData) and Part 11 §5.1.
asn1crypto builds and parses the ASN.1; cryptography does the hashing and signatures. The
kiosk only *verifies*; :func:`sign_sod` serves the central issuer and the tests (the kiosk
never holds a Document Signer key).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from asn1crypto import algos, cms, core
from asn1crypto import x509 as a_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ..errors import ConfigError, ProtocolError, TrustError
from ..protocol.codes import ErrorCode
from .tlv import malformed, parse_single, tlv

LDS_SECURITY_OBJECT_OID = "2.23.136.1.1.1"  # id-icao-ldsSecurityObject
SIGNED_DATA_OID = "1.2.840.113549.1.7.2"
HashName = Literal["sha1", "sha224", "sha256", "sha384", "sha512"]
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class DataGroupHash(core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012 (asn1crypto's declaration style)
        ("dataGroupNumber", core.Integer),
        ("dataGroupHashValue", core.OctetString),
    ]


class DataGroupHashValues(core.SequenceOf):  # type: ignore[misc]
    _child_spec = DataGroupHash


class LdsVersionInfo(core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012
        ("ldsVersion", core.PrintableString),
        ("unicodeVersion", core.PrintableString),
    ]


class LdsSecurityObject(core.Sequence):  # type: ignore[misc]
    """Part 10 §4.6.2.2: LDSSecurityObject (version 0, or 1 with ldsVersionInfo)."""

    _fields = [  # noqa: RUF012
        ("version", core.Integer),
        ("hashAlgorithm", algos.DigestAlgorithm),
        ("dataGroupHashValues", DataGroupHashValues),
        ("ldsVersionInfo", LdsVersionInfo, {"optional": True}),
    ]


def dg_hash(data: bytes, alg: str) -> bytes:
    if alg not in _HASHES:
        raise malformed(f"unsupported hash algorithm {alg!r}")
    return hashlib.new(alg, data).digest()


def build_lds_security_object(dg_files: Mapping[int, bytes], alg: HashName = "sha256") -> bytes:
    """DER LDSSecurityObject hashing each DG file's full bytes (tag included)."""
    if not dg_files:
        raise ValueError("no data groups to hash")
    obj = LdsSecurityObject(
        {
            "version": 0,
            "hashAlgorithm": {"algorithm": alg},
            "dataGroupHashValues": [
                {"dataGroupNumber": n, "dataGroupHashValue": dg_hash(dg_files[n], alg)}
                for n in sorted(dg_files)
            ],
        }
    )
    der: bytes = obj.dump()
    return der


def _sig_alg_for(key: Any, alg: str) -> tuple[str, Any]:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"{alg}_ecdsa", None
    if isinstance(key, rsa.RSAPrivateKey):
        return f"{alg}_rsa", None
    raise ValueError("Document Signer key must be RSA or EC")


def sign_sod(
    dg_files: Mapping[int, bytes],
    ds_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    ds_cert: x509.Certificate,
    alg: HashName = "sha256",
) -> bytes:
    """Build EF.SOD (``77 { ContentInfo(SignedData) }``) signed by the Document Signer.

    Signed attributes carry the content type and the message digest (RFC 5652 §5.3/§11).
    """
    content = build_lds_security_object(dg_files, alg)
    signed_attrs = cms.CMSAttributes(
        [
            cms.CMSAttribute({"type": "content_type", "values": [LDS_SECURITY_OBJECT_OID]}),
            cms.CMSAttribute({"type": "message_digest", "values": [dg_hash(content, alg)]}),
        ]
    )
    to_sign = signed_attrs.dump()  # DER SET OF: the bytes RFC 5652 §5.4 says are signed
    h = _HASHES[alg]()
    sig_name, _ = _sig_alg_for(ds_key, alg)
    if isinstance(ds_key, ec.EllipticCurvePrivateKey):
        signature = ds_key.sign(to_sign, ec.ECDSA(h))
    else:
        signature = ds_key.sign(to_sign, padding.PKCS1v15(), h)
    cert = a_x509.Certificate.load(ds_cert.public_bytes(serialization.Encoding.DER))
    signer = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                {
                    "issuer_and_serial_number": {
                        "issuer": cert.issuer,
                        "serial_number": cert.serial_number,
                    }
                }
            ),
            "digest_algorithm": {"algorithm": alg},
            "signed_attrs": signed_attrs,
            "signature_algorithm": {"algorithm": sig_name},
            "signature": signature,
        }
    )
    signed_data = cms.SignedData(
        {
            "version": "v3",
            "digest_algorithms": [{"algorithm": alg}],
            "encap_content_info": {
                "content_type": LDS_SECURITY_OBJECT_OID,
                "content": content,
            },
            "certificates": [cert],
            "signer_infos": [signer],
        }
    )
    info = cms.ContentInfo({"content_type": "signed_data", "content": signed_data})
    return tlv(0x77, info.dump())


@dataclass(frozen=True)
class Sod:
    """A parsed EF.SOD."""

    hash_algorithm: str
    dg_hashes: dict[int, bytes]
    ds_certificate: x509.Certificate | None
    signed_bytes: bytes  # the DER SET of signed attributes (what the signature covers)
    signature: bytes
    signature_algorithm: str
    digest_algorithm: str
    message_digest: bytes | None
    content_type_attr: str | None
    content: bytes
    pss_salt: int | None = None


def parse_sod(data: bytes) -> Sod:
    """Parse EF.SOD; malformed structure raises ProtocolError(lds_malformed)."""
    inner = parse_single(data, 0x77)
    try:
        info = cms.ContentInfo.load(inner)
        if info["content_type"].dotted != SIGNED_DATA_OID:
            raise malformed("EF.SOD does not hold CMS SignedData")
        sd = info["content"]
        encap = sd["encap_content_info"]
        if encap["content_type"].dotted != LDS_SECURITY_OBJECT_OID:
            raise malformed("EF.SOD content is not an LDSSecurityObject")
        content_obj = encap["content"]
        content = content_obj.contents if hasattr(content_obj, "contents") else bytes(content_obj)
        lso = LdsSecurityObject.load(content)
        alg = lso["hashAlgorithm"]["algorithm"].native
        hashes_: dict[int, bytes] = {}
        for item in lso["dataGroupHashValues"]:
            n = int(item["dataGroupNumber"].native)
            if n in hashes_:
                raise malformed(f"EF.SOD hashes DG{n} twice")
            hashes_[n] = bytes(item["dataGroupHashValue"].native)
        signers = sd["signer_infos"]
        if len(signers) != 1:
            raise malformed(f"EF.SOD must have exactly one signer, has {len(signers)}")
        si = signers[0]
        certs = [
            x509.load_der_x509_certificate(c.chosen.dump())
            for c in (sd["certificates"] if sd["certificates"].native is not None else [])
        ]
        ds = _select_signer_cert(si, certs)
        attrs = si["signed_attrs"]
        if attrs.native is None:
            raise malformed("EF.SOD signer has no signed attributes")
        md: bytes | None = None
        ctype: str | None = None
        for attr in attrs:
            t = attr["type"].native
            if t == "message_digest":
                md = bytes(attr["values"][0].native)
            elif t == "content_type":
                ctype = attr["values"][0].dotted
        signed_bytes = b"\x31" + attrs.dump()[1:]  # re-tag [0] IMPLICIT as SET (RFC 5652 §5.4)
        sig_alg = si["signature_algorithm"]
        salt: int | None = None
        if sig_alg["algorithm"].native == "rsassa_pss":
            salt = int(sig_alg["parameters"]["salt_length"].native)
        return Sod(
            hash_algorithm=str(alg),
            dg_hashes=hashes_,
            ds_certificate=ds,
            signed_bytes=signed_bytes,
            signature=bytes(si["signature"].native),
            signature_algorithm=str(sig_alg["algorithm"].native),
            digest_algorithm=str(si["digest_algorithm"]["algorithm"].native),
            message_digest=md,
            content_type_attr=ctype,
            content=bytes(content),
            pss_salt=salt,
        )
    except ProtocolError:
        raise
    except Exception as exc:  # asn1crypto parses lazily and raises assorted types on bad DER
        raise malformed(f"EF.SOD does not parse: {type(exc).__name__}: {exc}") from exc


def _select_signer_cert(si: Any, certs: list[x509.Certificate]) -> x509.Certificate | None:
    sid = si["sid"]
    if sid.name == "issuer_and_serial_number":
        serial = sid.chosen["serial_number"].native
        issuer_der = sid.chosen["issuer"].dump()
        for c in certs:
            if c.serial_number == serial and c.issuer.public_bytes() == issuer_der:
                return c
        # DER of the Name can differ in string types; fall back to serial only.
        for c in certs:
            if c.serial_number == serial:
                return c
    return certs[0] if len(certs) == 1 else None


# --- Passive Authentication -------------------------------------------------------------------

DgStatus = Literal["ok", "mismatch", "not_in_sod", "not_read"]


@dataclass
class PaResult:
    """Outcome of Passive Authentication (Part 11 §5.1). ``passed`` only when every check holds."""

    signature_valid: bool = False
    chain_valid: bool = False
    hash_algorithm: str | None = None
    ds_subject: str | None = None
    csca_subject: str | None = None
    data_groups: dict[int, DgStatus] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    # DGs hashed in EF.SOD that the reader could not read (DG3 behind EAC): not checked, and
    # not counted as a failure when the caller said so (``require_all=False``).
    not_read: list[int] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            self.signature_valid
            and self.chain_valid
            and not self.errors
            and all(s == "ok" for s in self.data_groups.values())
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "signature_valid": self.signature_valid,
            "chain_valid": self.chain_valid,
            "hash_algorithm": self.hash_algorithm,
            "ds_subject": self.ds_subject,
            "csca_subject": self.csca_subject,
            "data_groups": {f"DG{n}": s for n, s in sorted(self.data_groups.items())},
            "not_read": [f"DG{n}" for n in self.not_read],
            "errors": list(self.errors),
        }

    def raise_for_failure(self) -> None:
        """Raise TrustError with a stable code naming the first failed check."""
        if self.passed:
            return
        if not self.signature_valid:
            code = ErrorCode.SOD_SIGNATURE_INVALID
        elif not self.chain_valid:
            code = ErrorCode.SOD_CHAIN_INVALID
        elif any(s != "ok" for s in self.data_groups.values()):
            code = ErrorCode.DG_HASH_MISMATCH
        else:
            code = ErrorCode.PASSIVE_AUTHENTICATION_FAILED
        raise TrustError(
            "Passive Authentication failed: " + "; ".join(self.errors or [code]),
            code=code,
            details=self.to_dict(),
        )


def _verify_signature(
    pub: Any, signature: bytes, data: bytes, sig_alg: str, digest: str, pss_salt: int | None
) -> None:
    hash_name = digest
    for name in _HASHES:
        if sig_alg.startswith(name + "_"):
            hash_name = name
    if hash_name not in _HASHES:
        raise InvalidSignature(f"unsupported digest {hash_name}")
    h = _HASHES[hash_name]()
    if isinstance(pub, rsa.RSAPublicKey):
        pad: padding.AsymmetricPadding
        if sig_alg == "rsassa_pss":
            pad = padding.PSS(mgf=padding.MGF1(h), salt_length=pss_salt or h.digest_size)
        else:
            pad = padding.PKCS1v15()
        pub.verify(signature, data, pad, h)
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        pub.verify(signature, data, ec.ECDSA(h))
    else:
        raise InvalidSignature("unsupported public key type")


def passive_authentication(
    sod_bytes: bytes,
    dg_files: Mapping[int, bytes],
    trust_anchors: Sequence[x509.Certificate],
    *,
    now: dt.datetime | None = None,
    require_all: bool = True,
) -> PaResult:
    """Check EF.SOD's signature, the DS certificate against the CSCA trust anchors, and every
    DG hash. ``require_all``: a DG in the SOD that was not supplied counts as a failure;
    otherwise it is listed in ``not_read`` (a relying party that cannot read DG3 without EAC).

    Never raises for a failed check (it is recorded); malformed EF.SOD raises ProtocolError.
    """
    now = now or dt.datetime.now(dt.UTC)
    sod = parse_sod(sod_bytes)
    res = PaResult(hash_algorithm=sod.hash_algorithm)
    # 1. Signature over the signed attributes, and the attributes bind the content.
    ds = sod.ds_certificate
    if ds is None:
        res.errors.append("EF.SOD carries no Document Signer certificate")
    else:
        res.ds_subject = ds.subject.rfc4514_string()
        try:
            _verify_signature(
                ds.public_key(),
                sod.signature,
                sod.signed_bytes,
                sod.signature_algorithm,
                sod.digest_algorithm,
                sod.pss_salt,
            )
            ok = True
        except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
            ok = False
            res.errors.append("EF.SOD signature does not verify with the DS certificate")
        if ok:
            if sod.content_type_attr != LDS_SECURITY_OBJECT_OID:
                res.errors.append("signed content-type attribute is not ldsSecurityObject")
            elif sod.message_digest != dg_hash(sod.content, sod.digest_algorithm):
                res.errors.append("signed message digest does not match the LDSSecurityObject")
            else:
                res.signature_valid = True
        # 2. DS certificate -> CSCA (Part 11 §5.1.1 step 2; Part 12 for the PKI).
        res.chain_valid = _check_chain(ds, trust_anchors, now, res)
    # 3. Every DG hash.
    for n, expected in sorted(sod.dg_hashes.items()):
        if n not in dg_files:
            if require_all:
                res.data_groups[n] = "not_read"
                res.errors.append(f"DG{n} is in EF.SOD but was not supplied")
            else:
                res.not_read.append(n)
            continue
        if dg_hash(dg_files[n], sod.hash_algorithm) == expected:
            res.data_groups[n] = "ok"
        else:
            res.data_groups[n] = "mismatch"
            res.errors.append(f"DG{n} hash does not match EF.SOD")
    for n in sorted(set(dg_files) - set(sod.dg_hashes)):
        res.data_groups[n] = "not_in_sod"
        res.errors.append(f"DG{n} is not covered by EF.SOD")
    return res


def _check_chain(
    ds: x509.Certificate, anchors: Sequence[x509.Certificate], now: dt.datetime, res: PaResult
) -> bool:
    if not (ds.not_valid_before_utc <= now <= ds.not_valid_after_utc):
        res.errors.append("Document Signer certificate is outside its validity period")
        return False
    candidates = [a for a in anchors if a.subject == ds.issuer]
    if not candidates:
        res.errors.append("no CSCA in the trust bundle issued the Document Signer certificate")
        return False
    for csca in candidates:
        try:
            ds.verify_directly_issued_by(csca)
        except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
            continue
        if not (csca.not_valid_before_utc <= now <= csca.not_valid_after_utc):
            res.errors.append("CSCA certificate is outside its validity period")
            return False
        try:
            bc = csca.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            res.errors.append("trust anchor is not a CA certificate")
            return False
        res.csca_subject = csca.subject.rfc4514_string()
        return True
    res.errors.append("Document Signer certificate signature does not verify with the CSCA")
    return False


def load_trust_bundle(path: Path | str) -> list[x509.Certificate]:
    """CSCA certificates from a PEM file or a directory of ``*.pem``/``*.crt``/``*.der``."""
    p = Path(path)
    files = (
        sorted(f for f in p.iterdir() if f.suffix.lower() in (".pem", ".crt", ".cer", ".der"))
        if p.is_dir()
        else [p]
    )
    certs: list[x509.Certificate] = []
    for f in files:
        try:
            raw = f.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read trust bundle {f}: {exc.strerror}",
                [("hardware.card.trust_bundle", f"cannot read {f}")],
            ) from exc
        try:
            if b"-----BEGIN" in raw:
                certs.extend(x509.load_pem_x509_certificates(raw))
            else:
                certs.append(x509.load_der_x509_certificate(raw))
        except ValueError as exc:
            raise ConfigError(
                f"trust bundle {f} holds no valid certificate",
                [("hardware.card.trust_bundle", f"{f}: {exc}")],
            ) from exc
    if not certs:
        raise ConfigError(
            f"trust bundle {p} holds no certificate",
            [("hardware.card.trust_bundle", "no CSCA certificate found")],
        )
    return certs
