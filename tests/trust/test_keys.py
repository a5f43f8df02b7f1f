"""Device identity keys: files, permissions, atomic writes, detached signatures."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from appliance.errors import TrustError
from appliance.trust import keys
from appliance.trust.keys import DeviceIdentity, DeviceSignature, verify_device_message


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_create_writes_0600_key_and_loads_back(tmp_path: Path) -> None:
    ident = DeviceIdentity.create(tmp_path / "state")
    key_file = tmp_path / "state" / keys.DEVICE_KEY_FILE
    assert _mode(key_file) == 0o600
    assert _mode(tmp_path / "state") == 0o700
    again = DeviceIdentity.load(tmp_path / "state")
    assert again.public_key == ident.public_key
    assert again.key_id == ident.key_id
    assert keys.load_public_key(tmp_path / "state" / keys.DEVICE_PUB_FILE) == ident.public_key
    # No temporary files left behind by the atomic write.
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["device.key", "device.pub"]
    # The key material never shows in repr (it ends up in logs).
    assert key_file.read_text().split(":")[1].strip() not in repr(again)


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    DeviceIdentity.create(tmp_path)
    with pytest.raises(TrustError) as err:
        DeviceIdentity.create(tmp_path)
    assert err.value.code == "key_exists"


def test_load_or_create_is_idempotent(tmp_path: Path) -> None:
    a = DeviceIdentity.load_or_create(tmp_path)
    b = DeviceIdentity.load_or_create(tmp_path)
    assert a.public_key == b.public_key


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o620])
def test_load_refuses_group_or_other_permissions(tmp_path: Path, mode: int) -> None:
    DeviceIdentity.create(tmp_path)
    os.chmod(tmp_path / keys.DEVICE_KEY_FILE, mode)
    with pytest.raises(TrustError) as err:
        DeviceIdentity.load(tmp_path)
    assert err.value.code == "key_permissions"
    assert "chmod 600" in err.value.message


def test_load_refuses_symlink(tmp_path: Path) -> None:
    DeviceIdentity.create(tmp_path / "real")
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / keys.DEVICE_KEY_FILE).symlink_to(tmp_path / "real" / keys.DEVICE_KEY_FILE)
    with pytest.raises(TrustError) as err:
        DeviceIdentity.load(tmp_path / "link")
    assert err.value.code == "key_unreadable"


def test_missing_and_malformed_keys(tmp_path: Path) -> None:
    with pytest.raises(TrustError) as err:
        DeviceIdentity.load(tmp_path)
    assert err.value.code == "key_missing"
    keys.write_private_file(tmp_path / keys.DEVICE_KEY_FILE, b"garbage\n")
    with pytest.raises(TrustError) as err:
        DeviceIdentity.load(tmp_path)
    assert err.value.code == "key_malformed"
    keys.write_private_file(tmp_path / keys.DEVICE_KEY_FILE, b"ed25519-seed:AAAA\n", overwrite=True)
    with pytest.raises(TrustError) as err:
        DeviceIdentity.load(tmp_path)
    assert err.value.code == "key_malformed"


def test_mismatched_public_file_is_refused(tmp_path: Path) -> None:
    DeviceIdentity.create(tmp_path / "a")
    other = DeviceIdentity.create(tmp_path / "b")
    keys.write_public_file(
        tmp_path / "a" / keys.DEVICE_PUB_FILE, keys.encode_public_key(other.public_key)
    )
    with pytest.raises(TrustError) as err:
        DeviceIdentity.load(tmp_path / "a")
    assert err.value.code == "key_malformed"


def test_sign_and_verify_exact_bytes(tmp_path: Path) -> None:
    ident = DeviceIdentity.create(tmp_path)
    payload = b'{"id":"c1","ok":true,  "result":{}}'
    sig = ident.sign(payload)
    verify_device_message(ident.public_key, payload, sig)
    # Round trip through the header form used on the wire.
    verify_device_message(ident.public_key, payload, DeviceSignature.from_header(sig.to_header()))
    # Same JSON meaning, different bytes: refused (no canonicalisation).
    with pytest.raises(TrustError) as err:
        verify_device_message(ident.public_key, b'{"id":"c1","ok":true,"result":{}}', sig)
    assert err.value.code == "bad_signature"


def test_verify_rejects_other_key_and_flipped_bits(tmp_path: Path) -> None:
    a = DeviceIdentity.create(tmp_path / "a")
    b = DeviceIdentity.create(tmp_path / "b")
    sig = a.sign(b"event")
    with pytest.raises(TrustError) as err:
        verify_device_message(b.public_key, b"event", sig)
    assert err.value.code == "untrusted_issuer"
    flipped = bytearray(sig.signature)
    flipped[10] ^= 1
    with pytest.raises(TrustError) as err:
        verify_device_message(a.public_key, b"event", DeviceSignature(a.key_id, bytes(flipped)))
    assert err.value.code == "bad_signature"


def test_domain_separation(tmp_path: Path) -> None:
    """A device-message signature never verifies as a command or config signature."""
    ident = DeviceIdentity.create(tmp_path)
    sig = ident.sign(b"data")
    keys.verify_detached(ident.public_key, keys.CTX_DEVICE_MESSAGE, b"data", sig.signature)
    for ctx in (keys.CTX_COMMAND, keys.CTX_CONFIG, keys.CTX_CERTIFICATE, keys.CTX_ACK):
        with pytest.raises(TrustError):
            keys.verify_detached(ident.public_key, ctx, b"data", sig.signature)


@pytest.mark.parametrize(
    "header", ["", "ed25519;;AAAA", "rsa;k;AAAA", "ed25519;k", "ed25519;k;!!notb64"]
)
def test_bad_signature_headers(header: str) -> None:
    with pytest.raises(TrustError):
        DeviceSignature.from_header(header)


def test_atomic_write_replaces_without_leftovers(tmp_path: Path) -> None:
    target = tmp_path / "f.key"
    keys.write_private_file(target, b"one")
    keys.write_private_file(target, b"two", overwrite=True)
    assert target.read_bytes() == b"two"
    assert _mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f.key"]


def test_b64decode_accepts_only_canonical_text() -> None:
    assert keys.b64decode("QQ==", what="x") == b"A"
    for text in ("QR==", "QQ", "Q Q==", "QQ==\n", 5):
        with pytest.raises(TrustError):
            keys.b64decode(text, what="x")
