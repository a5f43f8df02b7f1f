"""The enrollment fault rig shared by tests/faults/test_enrollment_faults.py (a few kills, CI)
and bench/enrollment_faults.py (the long seeded loop).

Real components only, in the production configuration: mosquitto with mutual TLS and the
shipped ACL (a :class:`FleetKit`'s broker), the daemon as a process on the simulated kit
(fingerprint emulator on a pty, generated camera scene) commanded with signed commands, and the
real central receiver (:class:`appliance.central.receiver.Receiver` with its
:class:`PackageStore`) in this process, connected as the ACL's ``central`` identity.
A scripted driver runs enrollment sessions (start, portrait, fingers, finish) through the
controller; the daemon is killed with SIGKILL at a random point of a capture, of the finish,
or of the upload, and restarted; the driver then carries on with whatever session the kiosk
resumed. :meth:`EnrollmentFaultRig.check` counts the invariants of issue 8.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from appliance.central.keys import load_central_keys
from appliance.central.receiver import Receiver, ReceiverCore, registry_device_keys
from appliance.central.store import PackageStore
from appliance.devtools.broker import Mosquitto
from appliance.devtools.fleetkit import FleetKit
from appliance.drivers.fingerprint.emulator import FingerprintEmulator
from appliance.fleet.registry import DeviceRecord, FleetRegistry
from appliance.store import Store
from appliance.trust.keys import DeviceIdentity, encode_public_key
from appliance.trust.sealed import scan_for_plaintext_biometrics
from tests.helpers import DaemonProcess, wait_for

PHASES = ("capture", "finish", "upload")
# Small chunks and a short re-send timer: an upload spans many chunks, so a kill lands in it.
ENROLLMENT_TOML = "[enrollment]\nchunk_bytes = 4096\nupload_window = 4\nchunk_timeout_s = 1\n"


class EnrollmentFaultRig:
    """One kiosk, one receiver, one controller on one broker; see the module docstring."""

    def __init__(
        self,
        work: Path,
        broker: Mosquitto,
        device: str = "kiosk-enr-faults",
        *,
        kit: FleetKit,
        external_sensor: bool = False,
        card: bool = False,
    ) -> None:
        """``external_sensor``: run the fingerprint emulator here (paced at the line rate, so
        an image takes seconds on the wire) behind a stable link, instead of the sim kit's
        child process, so the test can unplug and replug it (:attr:`sensor`). ``card``: the
        sim kit's card stack too (private pcscd + vpcd, the card emulator a child process of
        the daemon). ``broker``: ``kit``'s TLS broker."""
        self.work = work
        self.broker = broker
        self.device = device
        self.home = kit.home_copy(work / "fleet")  # the kit's keys, this rig's registry
        keys = load_central_keys(self.home)
        self.store = PackageStore(self.home / "central")
        self.daemon = DaemonProcess(work / "kiosk", broker, device, kit=kit)
        text = self.daemon.config_path.read_text()
        text = text.replace("[hardware.camera]\nenabled = false\n", "[hardware.camera]\n")
        self.sensor: FingerprintEmulator | None = None
        if external_sensor:
            link = work / "ttyFP"
            self.sensor = FingerprintEmulator("r307", seed=1, pace=True)
            self.sensor.set_auto_finger("good", 10)
            self.sensor.start_pty(link)
            text = text.replace(
                "[hardware.fingerprint]\nenabled = false\n",
                f'[hardware.fingerprint]\nport = "{link}"\n',
            )
        else:
            text = text.replace(
                "[hardware.fingerprint]\nenabled = false\n", "[hardware.fingerprint]\n"
            )
            text = text.replace(
                "[simulation]\nfingerprint = false\n",
                "[simulation]\nfingerprint = true\nline_rate = false\n",
            )
        if card:
            text = text.replace("[hardware.card]\nenabled = false\n", "[hardware.card]\n")
            text = text.replace("card = false\n", "card = true\n", 1)
        self.card = card
        self.daemon.config_path.write_text(text + ENROLLMENT_TOML)
        self.ctl = kit.controller(broker.port, signer="fleet-all").connect()
        self.core = ReceiverCore(
            self.store,
            keys.enrollment,
            keys.ingest,
            registry_device_keys(self.home),
            lambda _t, _p: False,
        )
        self.receiver = Receiver(
            self.core,
            host=broker.host,
            port=broker.port,
            client_id=f"central-{device}",
            tls={
                "ca_certs": str(kit.ca_file),
                "certfile": str(kit.certs / "central.crt"),
                "keyfile": str(kit.certs / "central.key"),
            },
        )
        self.kit = kit
        self.finished_events = self.ctl.subscribe(f"kiosk/{device}/events/enrollment.finished")
        self.reported: set[str] = set()  # package ids the kiosk reported finished
        self.kills: Counter[str] = Counter()  # phase the driver was in at each kill
        self.sessions_started = 0
        self.abort = threading.Event()
        self.phase = "idle"
        self._registered = False
        self._citizen = 0

    # -- processes ---------------------------------------------------------------------------

    def start(self) -> EnrollmentFaultRig:
        self.receiver.start()
        self.ensure_running()
        return self

    def running(self) -> bool:
        return self.daemon.proc is not None and self.daemon.proc.poll() is None

    def ensure_running(self, timeout: float = 40.0) -> None:
        """Start the daemon if it is down; wait until it answers with a healthy sensor."""
        self.abort.clear()
        if not self.running():
            self.daemon.start()
        wait_for((self.daemon.state_dir / "device.pub").exists, timeout, "device key")
        if not self._registered:
            ident = DeviceIdentity.load(self.daemon.state_dir)
            FleetRegistry(self.home).save_device(
                DeviceRecord(
                    device_id=self.device,
                    public_key=encode_public_key(ident.public_key).decode().strip(),
                    key_id=ident.key_id,
                )
            )
            self._registered = True
        wait_for(self._sensor_ok, timeout, "the daemon online with its fingerprint sensor")

    def _sensor_ok(self) -> bool:
        r = self._req("status", {}, 2.0)
        if not (r and r.get("ok")):
            return False
        devices = r["result"]["devices"]
        kinds = ("fingerprint", "card") if self.card else ("fingerprint",)
        return all(devices[k]["state"] == "ok" for k in kinds)

    def kill9(self) -> None:
        self.daemon.kill9()

    def leftover_processes(self) -> list[int]:
        """Processes still running from this rig's state directory other than the daemon:
        emulators the sim kit started that outlived a killed daemon."""
        mine = str(self.daemon.state_dir)
        daemon_pid = self.daemon.proc.pid if self.running() and self.daemon.proc else None
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == daemon_pid:
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if mine in cmdline and " sim " in cmdline:
                pids.append(int(proc.name))
        return pids

    def close(self) -> None:
        self.abort.set()
        if self.running():
            self.daemon.terminate()
        self.receiver.stop()
        self.ctl.close()
        if self.sensor is not None:
            self.sensor.stop()
        for pid in self.leftover_processes():  # started (indirectly) by this rig: end them
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    # -- the scripted driver -----------------------------------------------------------------

    def _req(self, cmd: str, args: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """A command's reply, or None if the rig aborted (the daemon was killed) or timed out."""
        q = self.ctl.send(self.device, cmd, args)
        deadline = time.monotonic() + timeout
        while not self.abort.is_set() and time.monotonic() < deadline:
            try:
                return q.get(timeout=0.05)
            except queue.Empty:
                continue
        return None

    def drive(self) -> str | None:
        """Carry the active session (or a new one) to ``finish``; the package id or None."""
        st = self._req("enrollment.status", {}, 10)
        if st is None or not st.get("ok"):
            return None
        if st["result"]["active"] is None:
            self._citizen += 1
            self.phase = "start"
            r = self._req(
                "enrollment.start",
                {"citizen_ref": f"CIT-F-{self._citizen:04d}", "finger_policy": [2, 7]},
                10,
            )
            if r is None or not r.get("ok"):
                return None
            self.sessions_started += 1
        while not self.abort.is_set():
            rv = self._req("enrollment.review", {}, 10)
            if rv is None or not rv.get("ok"):
                return None  # no session: it was finished or aborted meanwhile
            res = rv["result"]
            if res["portrait"] is None:
                self.phase = "capture"
                self._req("enrollment.portrait", {"timeout_s": 20}, 60)
            elif res["remaining"]:
                pos = res["remaining"][0]
                self.phase = "capture"
                r = self._req(
                    "enrollment.finger",
                    {"position": pos, "attempts": 1, "min_quality": 10},
                    60,
                )
                code = (r or {}).get("error", {}).get("code")
                if code in ("quality_not_met", "device_timeout"):
                    self._req("enrollment.skip", {"position": pos, "reason": "unreadable"}, 10)
            else:
                self.phase = "finish"
                r = self._req("enrollment.finish", {}, 60)
                if r is None or not r.get("ok"):
                    return None
                pid = str(r["result"]["package_id"])
                self.reported.add(pid)
                self.phase = "upload"
                return pid
        return None

    def round_with_kill(self, rnd: random.Random) -> str:
        """Run the driver and kill -9 the daemon at a random point of a random phase;
        returns the phase the driver was in when the signal went."""
        return self.round_with_kill_in(rnd.choice(PHASES), rnd)

    def round_with_kill_in(self, target: str, rnd: random.Random) -> str:
        """As :meth:`round_with_kill`, in the given phase (``capture``, ``finish``, ``upload``)."""
        self.ensure_running()
        delay = rnd.uniform(0, {"capture": 0.5, "finish": 0.15, "upload": 0.6}[target])
        self.phase = "idle"
        self.abort.clear()
        worker = threading.Thread(target=self.drive, name="enroll-driver", daemon=True)
        worker.start()
        deadline = time.monotonic() + 60
        while self.phase != target and worker.is_alive() and time.monotonic() < deadline:
            self.abort.wait(0.005)
        # A random point inside the phase (an injection point, not a wait for a condition).
        threading.Event().wait(delay)
        hit = self.phase
        self.kill9()
        self.abort.set()
        worker.join(30)
        self.kills[hit] += 1
        return hit

    def settle(self, timeout: float = 120.0) -> None:
        """Restart, finish any resumed session, and wait until every upload is purged."""
        self.ensure_running()
        self.abort.clear()
        for _ in range(5):
            st = self._req("enrollment.status", {}, 10)
            if st is not None and st.get("ok") and st["result"]["active"] is None:
                break
            self.drive()

        def drained() -> bool:
            st = self._req("enrollment.status", {}, 5)
            return bool(st and st.get("ok") and st["result"]["uploads"] == [])

        wait_for(drained, timeout, "every package uploaded, receipted and purged")

    # -- the invariants ----------------------------------------------------------------------

    def check(self) -> dict[str, Any]:
        """Stop the daemon and count: lost, duplicated, corrupted, integrity, plaintext."""
        while True:
            try:
                _t, payload, _r = self.finished_events.get_nowait()
            except queue.Empty:
                break
            self.reported.add(str(json.loads(payload)["data"]["package_id"]))
        if self.running():
            self.daemon.terminate()
        state = self.daemon.state_dir
        leftovers = self.leftover_processes()
        store = Store(state)
        integrity = store.integrity_check()
        with store.lock:
            uploads = store.conn.execute(
                "SELECT package_id, state FROM enrollment_uploads"
            ).fetchall()
            active = store.conn.execute(
                "SELECT COUNT(*) FROM enrollment_sessions WHERE state='active'"
            ).fetchone()[0]
        store.close()
        self.reported |= {str(u[0]) for u in uploads}
        results = {r["package_id"]: r for r in self.store.results(self.device)}
        complete = {pid for pid, r in results.items() if r["status"] == "complete"}
        citizens = Counter(results[pid]["summary"].get("citizen_ref") for pid in complete)
        sealed_left = sorted(p.name for p in (state / "sealed").glob("*"))
        outgoing_left = sorted(p.name for p in (state / "outgoing").glob("*"))
        tmp_appliance = Path(tempfile.gettempdir()) / "appliance"
        plaintext = scan_for_plaintext_biometrics([p for p in (state, tmp_appliance) if p.exists()])
        return {
            "kills": sum(self.kills.values()),
            "kills_by_phase": dict(self.kills),
            "sessions_started": self.sessions_started,
            "packages_reported_finished": len(self.reported),
            "packages_verified": len(complete),
            "lost": len(self.reported - complete),
            "duplicated": sum(n - 1 for n in citizens.values() if n > 1),
            "unexpected_at_central": len(complete - self.reported),
            "corrupted": sum(1 for r in results.values() if r["status"] != "complete"),
            "uploads_not_purged": sum(1 for u in uploads if u[1] != "purged"),
            "stuck_uploads": [(str(u[0]), str(u[1])) for u in uploads if u[1] != "purged"],
            "sessions_left_active": int(active),
            "receiver_stats": dict(self.core.stats),
            "orphaned_emulators": len(leftovers),
            "integrity_check": integrity,
            "sealed_left": sealed_left,
            "outgoing_left": outgoing_left,
            "plaintext_files": [str(p) for p, _kind in plaintext],
        }
