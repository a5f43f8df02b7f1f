"""Fixtures of the update tests: a throw-away fleet root with a ``release`` key (and an admin
key, which must not be able to sign releases)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from appliance.trust.certs import FleetRoot, OperatorKey
from appliance.trust.keys import load_public_key


@dataclass
class ReleaseKeys:
    home: Path
    root_pub: bytes
    release: OperatorKey
    admin: OperatorKey


def _signer(root: FleetRoot, roles: tuple[str, ...]) -> OperatorKey:
    sk = SigningKey.generate()
    now = int(time.time())
    cert = root.issue(
        bytes(sk.verify_key), roles=roles, devices=("*",), not_after=now + 86400, issued_at=now
    )
    return OperatorKey(sk, cert)


@pytest.fixture(scope="session")
def release_keys(tmp_path_factory: pytest.TempPathFactory) -> ReleaseKeys:
    home = tmp_path_factory.mktemp("release-home")
    root = FleetRoot.create(home)
    return ReleaseKeys(
        home=home,
        root_pub=load_public_key(home / "root.pub"),
        release=_signer(root, ("release",)),
        admin=_signer(root, ("admin",)),
    )
