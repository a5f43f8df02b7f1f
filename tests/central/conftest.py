"""Keys of a small fleet for the central-side tests: a fleet home made by the production helper
(root, central enrollment key pair, ingest key and certificate) and a kiosk identity registered
in it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.central.keys import ensure_central_keys
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

    @property
    def kiosk_pub(self) -> Path:
        return self.home.parent / "kiosk" / "device.pub"

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
    keys = ensure_central_keys(home, validity_s=3600)
    root = FleetRoot.load(home)
    assert keys.root_public_key == root.public_key
    kiosk = DeviceIdentity.create(base / "kiosk")
    fleet = Fleet(home, root, keys.ingest, keys.enrollment, kiosk, PackageStore(home / "central"))
    fleet.register(DEVICE, kiosk)
    return fleet


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return make_fleet(tmp_path)
