"""The fleet simulator on the production path: each simulated kiosk with its own certificate
from the fleet CA and its own device key (appliance/fleet/simidentity.py), on mosquitto with the
shipped configuration (mutual TLS, the shipped ACL); the fleet service verifies what they sign.
And the reason it exists: kiosks sharing one certificate are refused by the shipped ACL."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.devtools.broker import Mosquitto
from appliance.devtools.fleetkit import FleetKit
from appliance.errors import ConfigError
from appliance.fleet.sim import FleetConfig, FleetSim
from appliance.fleet.simidentity import SimIdentities
from appliance.fleetsvc.db import FleetDB
from appliance.fleetsvc.servecli import FleetService
from appliance.fleetsvc.web import Commander
from appliance.trust.keys import load_public_key
from tests.helpers import wait_for


def _ids(n: int) -> tuple[str, list[str]]:
    prefix = f"si{uuid.uuid4().hex[:6]}"
    return prefix, [f"{prefix}-{i:05d}" for i in range(n)]


def test_identities_issued_once_with_the_device_profile(
    fleet_kit: FleetKit, tmp_path: Path
) -> None:
    _prefix, names = _ids(2)
    ids = SimIdentities.issue(fleet_kit.ca_dir, tmp_path, names)
    cert = x509.load_pem_x509_certificate((tmp_path / f"{names[0]}.crt").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == names[0]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert (tmp_path / f"{names[0]}.key").stat().st_mode & 0o077 == 0
    assert (tmp_path / f"{names[0]}.sign").stat().st_mode & 0o077 == 0
    before = (tmp_path / f"{names[0]}.crt").read_bytes()
    again = SimIdentities.issue(fleet_kit.ca_dir, tmp_path, names)  # cached: nothing re-made
    assert (tmp_path / f"{names[0]}.crt").read_bytes() == before
    assert again.public_keys() == ids.public_keys()
    with pytest.raises(ConfigError) as err:
        FleetConfig(devices=3, id_prefix=_prefix, identities=ids).validate()
    assert ("identities", f"no identity for 1 kiosk(s): {_prefix}-00002 ...") in err.value.problems
    with pytest.raises(ConfigError):
        FleetConfig(devices=2, id_prefix=_prefix, protocol="3.1.1", identities=ids).validate()


def test_simulated_kiosks_on_the_shipped_acl_signed(
    fleet_kit: FleetKit, tls_broker: Mosquitto, tmp_path: Path
) -> None:
    prefix, names = _ids(3)
    ids = SimIdentities.issue(
        fleet_kit.ca_dir,
        tmp_path / "ids",
        names,
        command_roots=[load_public_key(fleet_kit.root_pub)],
    )
    db = FleetDB(f"sqlite:///{tmp_path / 'fleet.db'}")
    svc = FleetService(
        db,
        fleet_kit.options(tls_broker.port),
        ids.public_keys(),
        share_group=f"g{prefix}",
        alarm_interval_s=0.5,
    ).start()
    sim = FleetSim(
        FleetConfig(
            host="localhost",
            port=tls_broker.port,
            devices=3,
            id_prefix=prefix,
            heartbeat_s=0.5,
            event_rate=2.0,
            identities=ids,
        )
    ).start()
    try:
        for name in names:
            row = wait_for(
                lambda n=name: (d := db.device(n)) and d["outbox_depth"] is not None and d,
                20,
                f"{name} online with a heartbeat",
            )
            assert row["state"] == "online" and row["signature"] == "ok", row
        wait_for(lambda: db.recent_events(names[0]), 20, "an event of the first kiosk")
        assert {e["verified"] for e in db.recent_events(names[0])} == {"ok"}

        # Signed commands, verified by the kiosk with the daemon's CommandVerifier; the signed
        # replies stored by the service as the commands' outcomes.
        assert svc.mqtt is not None
        sent = {}
        for cmd, signer in (("ping", "operator"), ("restart", "operator"), ("status", "directory")):
            cid = Commander.new_id()
            db.add_command(cid, names[2], cmd, {}, "test")
            Commander(svc.mqtt, "kiosk", fleet_kit.signer(signer)).send(names[2], cmd, {}, cid=cid)
            sent[cmd] = cid
        done = lambda c: (db.command(sent[c]) or {}).get("status") in ("ok", "failed")  # noqa: E731
        wait_for(lambda: all(done(c) for c in sent), 20, "three replies")
        ping, restart, status = (db.command(sent[c]) or {} for c in ("ping", "restart", "status"))
        assert (ping["status"], ping["verified"], ping["outcome"]["pong"]) == ("ok", "ok", True)
        assert (restart["status"], restart["outcome"]["code"]) == ("failed", "unknown_command")
        assert (status["status"], status["outcome"]["code"]) == ("failed", "forbidden_role")
    finally:
        sim.stop()
        svc.stop()
    assert sim.stats.connect_failures == 0
    # The clean stop's retained offline status is signed too (stored as offline, not bad).
    wait_for(lambda: (db.device(names[1]) or {}).get("state") == "offline", 10, "offline")
    db.close()


def test_a_shared_certificate_is_refused_by_the_shipped_acl(
    fleet_kit: FleetKit, tls_broker: Mosquitto, tmp_path: Path
) -> None:
    """What the simulator did before: every kiosk on one certificate. The broker takes the
    certificate's CN as the username, so only the kiosk named like it may write its topics."""
    prefix, names = _ids(2)
    ids = SimIdentities.issue(fleet_kit.ca_dir, tmp_path / "ids", names)
    db = FleetDB(f"sqlite:///{tmp_path / 'fleet.db'}")
    svc = FleetService(
        db, fleet_kit.options(tls_broker.port), ids.public_keys(), share_group=f"g{prefix}"
    ).start()
    shared = str(tmp_path / "ids" / f"{names[0]}")
    sim = FleetSim(
        FleetConfig(
            host="localhost",
            port=tls_broker.port,
            devices=2,
            id_prefix=prefix,
            heartbeat_s=0.5,
            tls_ca=str(fleet_kit.ca_file),
            tls_cert=shared + ".crt",
            tls_key=shared + ".key",
        )
    ).start()
    try:
        # kiosk 0's writes pass the ACL (unsigned, as this simulator sends them: stored with
        # the verdict "bad", no contact), kiosk 1's are dropped by the broker
        wait_for(lambda: db.device(names[0]), 20, "kiosk 0's messages")
        beats = sim.stats.heartbeats
        wait_for(lambda: sim.stats.heartbeats >= beats + 4, 20, "both kiosks beating")
        assert sim.stats.connected == 2 and sim.stats.connect_failures == 0
        assert db.device(names[1]) is None
    finally:
        sim.stop()
        svc.stop()
        db.close()
