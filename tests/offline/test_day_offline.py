"""A simulated day offline for a mobile team (issue 16, "A day offline"), accelerated.

The kiosk is the real daemon (in this process, so the test can drive its enrollment manager
the way the kiosk's local screen does: offline, enrollments cannot arrive as MQTT commands),
with the simulated kit's camera and fingerprint emulator at the fast pace, the production
trust configuration (mutual TLS, the fleet root, the central enrollment key). The centre is
the real directory, receiver and package store, with the fleet kit's keys.

1. At the office (broker up): the kiosk fetches the signed batch of the area's citizens and
   looks one citizen up (its clock anchors on the directory's signed time). The broker stops,
   and the daemon is restarted in the village: its whole run is without a broker.
2. The day, broker unreachable from the daemon's start: 50 citizens are looked up (answered
   from the batch) and enrolled through the manager's local API (portrait, one finger, one
   missing finger). On
   the way the disk is "nearly full" (the free-space reading is made too small: the test runs
   unprivileged and cannot fill a real file system safely) and an enrollment is refused with
   ``no_room`` before anything is written; with room again it goes through.
3. Midday, the first packages are exported to "removable media" and imported at the centre
   (the same verification as the MQTT path).
4. Evening, the broker is back: the kiosk uploads its queue; the centre verifies what it did
   not import, answers the imported ones with their receipts again; every package is
   delivered exactly once (one verified copy each), and the kiosk purges everything.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance import cli
from appliance.capabilities.base import Job
from appliance.central.citizens import synthetic_citizen
from appliance.central.directory import Directory, DirectoryCore, DirectoryStore, load_directory_key
from appliance.central.keys import load_central_keys
from appliance.central.receiver import Receiver, ReceiverCore, import_packages
from appliance.central.store import PackageStore
from appliance.config import load
from appliance.daemon import Daemon
from appliance.devtools.broker import Mosquitto, free_port
from appliance.devtools.fleetkit import FleetKit
from appliance.enrollment.session import (
    FingerArgs,
    PortraitArgs,
    StartArgs,
)
from appliance.errors import ApplianceError
from appliance.timekeeping import TIMESYNC_FLAG
from appliance.trust.keys import load_public_key
from tests.helpers import wait_for

pytestmark = pytest.mark.slow

DEV = "kiosk-mobile"
N = 50
EXPORT_AT = 20  # packages finished before the midday export
FULL_AT = 30  # the disk is "nearly full" when the 31st enrollment starts


def _tls(kit: FleetKit, port: int, identity: str) -> dict[str, Any]:
    o = kit.options(port, identity)
    return {"ca_certs": str(o.ca_file), "certfile": str(o.cert_file), "keyfile": str(o.key_file)}


class Kiosk:
    """The daemon running in a thread of this process."""

    def __init__(self, kit: FleetKit, base: Path, port: int) -> None:
        toml = (
            f'[device]\nid = "{DEV}"\nprofile = "sim"\n'
            f'[mqtt]\nhost = "localhost"\nport = {port}\n'
            "reconnect_min_s = 0.05\nreconnect_max_s = 0.5\n"
            "[telemetry]\nheartbeat_s = 3600\n"
            "[simulation]\nfingerprint = true\ncard = false\nline_rate = false\n"
            "[hardware.card]\nenabled = false\n"
            "[enrollment]\nchunk_timeout_s = 2\n" + kit.kiosk_tls_toml(DEV)
        )
        base.mkdir(parents=True, exist_ok=True)
        (base / "appliance.toml").write_text(toml)
        self.state = base / "state"
        self.daemon = Daemon(
            load(base / "appliance.toml", require_file=True),
            self.state,
            config_path=base / "appliance.toml",
        )
        self._thread = threading.Thread(target=self.daemon.run, name="kiosk", daemon=True)
        self._thread.start()
        wait_for(lambda: self.daemon.lookup is not None, 30, "the kiosk's services")
        assert self.daemon.enrollment is not None and self.daemon.clock is not None
        self.manager = self.daemon.enrollment
        self.lookup = self.daemon.lookup
        self.clock = self.daemon.clock
        self.store = self.daemon.store
        assert self.store is not None

    def online(self) -> bool:
        svc = self.daemon.services
        return bool(svc and svc.agent and svc.agent.connected)

    def uploads(self) -> dict[str, str]:
        assert self.store is not None
        with self.store.lock:
            rows = self.store.conn.execute(
                "SELECT package_id, state FROM enrollment_uploads"
            ).fetchall()
        return {r[0]: r[1] for r in rows}

    def stop(self) -> None:
        self.daemon.request_stop()
        self._thread.join(30)


@pytest.fixture
def day(fleet_kit: FleetKit, tmp_path: Path) -> Iterator[dict[str, Any]]:
    port = free_port("127.0.0.1")
    today = dt.date.today()
    directory = DirectoryStore(tmp_path / "directory.sqlite")
    people = {
        f"CIT-MOB-{i:03d}": synthetic_citizen(f"CIT-MOB-{i:03d}", today=today) for i in range(N)
    }
    directory.load(people)
    numbers = [c.personal_id for c in people.values()]
    directory.create_batch("bt-village", numbers=numbers, valid_s=36 * 3600)
    kiosk = Kiosk(fleet_kit, tmp_path / "kiosk", port)
    brokers: list[Mosquitto] = []
    ctx: dict[str, Any] = {
        "port": port,
        "kit": fleet_kit,
        "kiosk": kiosk,
        "directory": directory,
        "people": people,
        "tmp": tmp_path,
        "brokers": brokers,
    }
    yield ctx
    ctx["kiosk"].stop()
    for b in brokers:
        b.stop()


def _broker(ctx: dict[str, Any], name: str) -> Mosquitto:
    m = ctx["kit"].broker(ctx["tmp"] / name, port=ctx["port"]).start()
    ctx["brokers"].append(m)
    return m


def _enroll(kiosk: Kiosk, ref: str) -> dict[str, Any]:
    m = kiosk.manager
    m.start(
        StartArgs(
            citizen_ref=ref,
            finger_policy=[2, 3],
            exceptions=[{"position": 3, "reason": "missing"}],
        ),
        job=Job.local(10),
    )
    m.portrait(PortraitArgs(timeout_s=30), job=Job.local(40))
    m.finger(FingerArgs(position=2, timeout_s=30), job=Job.local(40))
    return dict(m.finish(job=Job.local(30)))


def test_a_day_offline_fifty_enrollments_disk_full_export_import_and_reconnection(
    day: dict[str, Any],
) -> None:
    kit: FleetKit = day["kit"]
    kiosk: Kiosk = day["kiosk"]
    port: int = day["port"]
    people = day["people"]

    # 1. At the office: the batch, and a lookup that anchors the kiosk's time.
    office = _broker(day, "office")
    core = DirectoryCore(day["directory"], load_directory_key(kit.home), lambda *_a: False)
    directory = Directory(core, host="localhost", port=port, tls=_tls(kit, port, "directory"))
    directory.start()
    wait_for(kiosk.online, 30, "the kiosk online at the office")
    batch = kiosk.lookup.fetch_batch("bt-village", timeout_s=30)
    assert batch["total"] == N
    first = next(iter(people.values()))
    assert kiosk.lookup.lookup(first.personal_id, timeout_s=10).source == "directory"
    assert kiosk.clock.source() in ("ntp", "signed_centre")
    directory.stop()
    office.stop()
    # The kiosk is switched off and on again in the village: the day's run of the daemon never
    # sees a broker. The batch and the time anchor come back from the state directory.
    kiosk.stop()
    kiosk = day["kiosk"] = Kiosk(kit, day["tmp"] / "kiosk", port)
    assert not kiosk.online()
    assert kiosk.lookup.batch is not None and kiosk.lookup.batch.summary() is not None

    # 2. The day: no broker at all.
    package_ids: list[str] = []
    usb = day["tmp"] / "usb"
    exported: list[str] = []
    refused = None
    for i, (ref, person) in enumerate(people.items()):
        looked = kiosk.lookup.lookup(person.personal_id, timeout_s=1)
        assert looked.source == "batch" and looked.citizen is not None
        assert looked.citizen["citizen_ref"] == ref
        if i == FULL_AT:
            before = kiosk.uploads()
            needed = kiosk.manager.space_estimate.total
            kiosk.manager.free_space = lambda _p, n=needed: n - 1  # nearly full
            with pytest.raises(ApplianceError) as full:
                _enroll(kiosk, ref)
            refused = full.value
            assert kiosk.manager.active() is None and kiosk.uploads() == before  # nothing lost
            from appliance.enrollment.space import free_bytes

            kiosk.manager.free_space = free_bytes  # room again (the real reading)
        package_ids.append(_enroll(kiosk, ref)["package_id"])
        if len(package_ids) == EXPORT_AT:
            # 3. Midday: the queue so far goes to removable media.
            argv = ["enrollment", "export", "--to", str(usb), "--state-dir", str(kiosk.state)]
            assert cli.main(argv) == 0
            listing = json.loads((usb / DEV / "export.json").read_text())
            exported = [p["package_id"] for p in listing["packages"]]
    assert refused is not None and refused.code == "no_room"
    assert refused.details["free_bytes"] < refused.details["needed_bytes"]
    assert exported == package_ids[:EXPORT_AT]
    assert set(kiosk.uploads().values()) == {"pending"} and len(kiosk.uploads()) == N

    # ... imported at the centre with the upload's verification.
    keys = load_central_keys(kit.home)
    packages = PackageStore(day["tmp"] / "central")
    device_pub = load_public_key(kiosk.state / "device.pub")
    rcore = ReceiverCore(
        packages,
        keys.enrollment,
        keys.ingest,
        lambda dev: device_pub if dev == DEV else None,
        lambda *_a: False,
        background=False,
    )
    imported = import_packages(rcore, usb)
    assert imported["counts"] == {"complete": EXPORT_AT}

    # 4. Evening: the broker is back.
    _broker(day, "evening")
    rcore.background = True
    receiver = Receiver(
        rcore,
        host="localhost",
        port=port,
        client_id="central-day-offline",
        tls=_tls(kit, port, "central"),
    ).start()
    try:
        wait_for(lambda: set(kiosk.uploads().values()) == {"purged"}, 120, "every package purged")
    finally:
        receiver.stop(end_session=True)
    results = packages.results(DEV)
    assert sorted(r["package_id"] for r in results) == sorted(package_ids)  # each once
    assert all(r["status"] == "complete" for r in results)
    assert rcore.stats["complete"] == N  # verified once each: 20 imported, 30 uploaded
    assert not list((kiosk.state / "outgoing").glob("*.pkg"))
    assert not list((kiosk.state / "sealed").glob("*.sealed"))
    # Every package says where its time came from; none is below the kiosk's floor.
    expected = "ntp" if TIMESYNC_FLAG.exists() else "signed_centre"
    for pid in package_ids:
        manifest = json.loads((packages.package_dir(DEV, pid) / "manifest.json").read_text())
        assert manifest["time_source"] == expected, manifest["time_source"]
        assert manifest["finished_at"] >= manifest["time_floor"] >= batch["issued_at"]
