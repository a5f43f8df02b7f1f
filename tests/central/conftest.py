"""Keys of a small fleet for the central-side tests: a root, an ingest operator, the central
enrollment key pair and a kiosk identity registered in a fleet home."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from appliance.central.store import PackageStore
from appliance.fleet.registry import DeviceRecord, FleetRegistry
from appliance.trust.certs import FleetRoot, OperatorKey
from appliance.trust.keys import DeviceIdentity, encode_public_key
from appliance.trust.sealed import EnrollmentKeyPair

DEVICE = "kiosk-c1"


@dataclass
class Fleet:
    home: Path
    root: FleetRoot
    ingest: OperatorKey
    enrollment: EnrollmentKeyPair
    kiosk: DeviceIdentity
    store: PackageStore

    def register(self, device: str, identity: DeviceIdentity) -> None:
        FleetRegistry(self.home).save_device(
            DeviceRecord(
                device_id=device,
                public_key=encode_public_key(identity.public_key).decode().strip(),
                key_id=identity.key_id,
            )
        )


def make_fleet(base: Path) -> Fleet:
    home = base / "fleet"
    root = FleetRoot.create(home)
    sk = SigningKey.generate()
    cert = root.issue(
        bytes(sk.verify_key),
        roles=["ingest"],
        devices=["*"],
        not_after=int(time.time()) + 3600,
        name="central",
    )
    enrollment = EnrollmentKeyPair.generate()
    enrollment.save(home)
    kiosk = DeviceIdentity.create(base / "kiosk")
    fleet = Fleet(
        home, root, OperatorKey(sk, cert), enrollment, kiosk, PackageStore(base / "central")
    )
    fleet.register(DEVICE, kiosk)
    return fleet


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return make_fleet(tmp_path)
