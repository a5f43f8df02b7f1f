"""The package codec: chain, container, chunks."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.enrollment import package as pk
from appliance.errors import ProtocolError
from appliance.protocol import package as contract


def test_chain_follows_mosip_rule_over_raw_digests() -> None:
    assert hashlib.sha256(b"").hexdigest().upper() == pk.CHAIN_START
    d1 = pk.record_digest(b"record one")
    h1 = pk.chain_next(pk.CHAIN_START, d1)
    assert (
        h1
        == hashlib.sha256(hashlib.sha256(b"").digest() + hashlib.sha256(b"record one").digest())
        .hexdigest()
        .upper()
    )
    d2 = pk.record_digest(b"record two")
    assert pk.chain_over([d1, d2]) == [h1, pk.chain_next(h1, d2)]


def test_chain_detects_swapped_and_dropped_records() -> None:
    digests = [pk.record_digest(bytes([i]) * 10) for i in range(4)]
    hashes = pk.chain_over(digests)
    recs = [{"sha256": d, "hash": h} for d, h in zip(digests, hashes, strict=True)]
    pk.verify_chain(recs, hashes[-1])
    swapped = [recs[1], recs[0], *recs[2:]]
    with pytest.raises(ProtocolError, match="chain broken"):
        pk.verify_chain(swapped, hashes[-1])
    with pytest.raises(ProtocolError):
        pk.verify_chain(recs[:-1], hashes[-1])  # the last one dropped
    with pytest.raises(ProtocolError):
        pk.verify_chain(recs[1:], hashes[-1])  # the first one dropped


def test_container_round_trip_and_truncation() -> None:
    data = contract.encode_container(b'{"a":1}', "ed25519;k;sig", [b"x" * 100, b"", b"y"])
    c = contract.decode_container(data)
    assert c.manifest_bytes == b'{"a":1}' and c.signature == "ed25519;k;sig"
    assert c.sealed_files == (b"x" * 100, b"", b"y")
    for cut in (3, len(contract.MAGIC) + 2, len(data) - 1):
        with pytest.raises(contract.PackageFormatError) as err:
            contract.decode_container(data[:cut])
        assert err.value.code == "package_malformed"


def test_the_kiosk_wraps_the_contract_s_decoder_into_its_error() -> None:
    """The kiosk re-exports the contract's codec; a bad package is its ``bad_package``."""
    assert pk.encode_container is contract.encode_container
    data = pk.encode_container(b'{"device":"k1"}', "ed25519;k;sig", [b"x"])
    assert pk.manifest_of(pk.decode_container(data)) == {"device": "k1"}
    with pytest.raises(ProtocolError) as err:
        pk.decode_container(data[:-1])
    assert err.value.code == "bad_package" and "impossible" in err.value.message
    with pytest.raises(ProtocolError, match="not an object"):
        pk.manifest_of(pk.decode_container(pk.encode_container(b"[1]", "s", [])))


@settings(max_examples=200, derandomize=True)
@given(st.binary(max_size=300))
def test_garbage_never_crashes_the_decoders(blob: bytes) -> None:
    for fn in (contract.decode_container, contract.decode_chunk):
        with contextlib.suppress(contract.PackageFormatError):
            fn(blob)


def test_chunks_carry_their_checksum() -> None:
    payload = b"z" * 1000
    header = {
        "package_id": "pkg-1",
        "index": 0,
        "count": 1,
        "total_bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "package_sha256": hashlib.sha256(payload).hexdigest(),
    }
    raw = pk.encode_chunk(header, payload)
    decoded, body = contract.decode_chunk(raw)
    assert decoded.index == 0 and body == payload
    with pytest.raises(contract.PackageFormatError, match="SHA-256") as err:
        contract.decode_chunk(raw[:-1] + b"Z")
    assert err.value.code == "chunk_malformed"
    assert b"".join(pk.split(b"abcdefg", 3)) == b"abcdefg"
