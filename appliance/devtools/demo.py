"""``appliance demo``: the kiosk's main job, end to end, on this machine, in the production
configuration on the simulated hardware kit.

1. A throw-away fleet in ``<workdir>/kit`` made with the production tooling
   (:mod:`.fleetkit`): the fleet CA and the broker, ``controller``, ``central`` and
   ``claimant`` certificates (provisioning/issue-device-cert), the fleet root, ``operator`` and
   ``admin`` signing keys, the central enrollment key and the ``ingest`` signer.
2. mosquitto on 127.0.0.1 with the shipped configuration: mutual TLS, identity from the
   certificate, the shipped ACL (provisioning/render-broker-config).
3. The kiosk is claim-provisioned: ``appliance provision`` with a one-time claim token through
   the claimant certificate, approved by ``appliance fleet approve`` (which issues the kiosk's
   broker certificate); signed commands only, end-to-end delivery on.
4. An ingest (``appliance fleet controller --ack``) records the kiosk's events and acknowledges
   them with the ``ingest`` key; the daemon (a real subprocess) runs the simulated kit: the
   fingerprint emulator on a pty, the generated camera scene, the card emulator behind a
   private pcscd + vpcd.
5. ``appliance fleet enroll --issue`` (signed with the operator key; its receiver connects as
   ``central``) enrolls a synthetic citizen (portrait, fingers in the 4-4-2 order, a missing
   finger recorded as such), waits for the sealed, signed package to be verified centrally and
   purged from the kiosk, issues the citizen's card and verifies it.

The kiosk's station is on (``[station]``, attended by a throw-away officer who is also a
supervisor): once the daemon is up the demo checks that the screen's local API answers this
boot's token (and refuses a request without it) and prints the screen's loopback URL with the
token, and the officer's id and PIN, so that a person running the demo can open the screen in a
browser on this machine and enroll from it.

For that the demo runs the centre's side in the background until Ctrl-C (unless ``--once``;
also with ``--no-enroll``), as subprocesses with the throw-away fleet's production identities
(logs and the citizens file in ``<workdir>/centre``): ``appliance fleet directory`` (broker
identity ``directory``, answers signed by the ``directory`` key) loaded with a few synthetic
citizens (:func:`~appliance.central.citizens.synthetic_citizen`, fictitious), ``appliance
fleet receive`` (identity ``central``: verifies, stores and acknowledges the kiosk's packages,
so they are purged from the kiosk) and ``appliance fleet issue-desk`` (identity ``central``;
the simulated kit's Document Signer), sharing the store ``<home>/central``. The scripted
enrollment then uses that receiver (``fleet enroll --external-receiver``). The citizen
numbers to look up on the screen are printed with its URL. (``--dev`` runs no centre.)

Then it prints a summary and how to watch and command the kiosk with mosquitto_sub /
mosquitto_pub (TLS, the controller certificate) and ``appliance fleet send``. ``--dev`` runs the
old development mode instead: plain MQTT without ACL, unsigned commands, no provisioning.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..protocol.topics import Topics
from .broker import Mosquitto, free_port, mqtt_connack
from .controller import Controller
from .fleetkit import FleetKit

if TYPE_CHECKING:
    from ..central.citizens import Citizen


SCREEN_HELP = (
    "The kiosk's screen: the demo prints its loopback URL (with this boot's token), the "
    "officer's id and PIN and three citizen numbers. Open the URL in a browser on this machine, "
    "tap Bắt đầu (Begin), sign in as the officer, type a number on the keypad and Tra cứu (Look "
    "up): the citizen's data comes from the citizen directory the demo runs in the background "
    "(a few synthetic citizens), with the receiver (verifies the package; the kiosk purges it) "
    "and the issuance desk (the card taken at the kiosk), until Ctrl-C; also with --no-enroll, "
    "not with --once or --dev. docs/local-api.md, 'Trying it'."
)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.epilog = SCREEN_HELP
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("run"),
        help="directory for the broker, configuration, state and logs (default: ./%(default)s)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=0,
        help="broker port on 127.0.0.1 (default: 1883 if free, else a free port)",
    )
    p.add_argument("--device-id", default="kiosk-demo", help="device id (default %(default)s)")
    p.add_argument(
        "--once",
        action="store_true",
        help="print the summary and stop, instead of running until Ctrl-C",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="also delete the previous run's logs (the kiosk, broker and throw-away keys are "
        "made anew on every run)",
    )
    p.add_argument(
        "--dev",
        action="store_true",
        help="development mode: plain MQTT without ACL, unsigned commands, no provisioning "
        "(default: the production configuration)",
    )
    p.add_argument(
        "--no-enroll",
        action="store_true",
        help="only start the kiosk and check it; skip the enrollment and the card",
    )
    p.add_argument("--no-card", action="store_true", help="enroll, but do not issue a card")
    p.add_argument(
        "--station-port",
        type=int,
        default=0,
        help="port of the kiosk screen and its local API on 127.0.0.1 (default: 8470 if free, "
        "else a free port)",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help="do not pace the fingerprint emulator at the real 57,600 baud "
        "(each finger takes ~8 s on the real serial line)",
    )


def _step(msg: str) -> None:
    print(f"==> {msg}", flush=True)


PY = sys.executable


def run(args: argparse.Namespace) -> int:
    work: Path = args.workdir.resolve()
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    # Every run starts a new kiosk and a new throw-away fleet: nothing of a previous run (a
    # kiosk provisioned against another port, expired keys) can leak into this one.
    for old in ("state", "broker", "kit", "ingest", "fleet", "centre"):
        shutil.rmtree(work / old, ignore_errors=True)
    (work / "appliance.toml").unlink(missing_ok=True)
    port = args.port or (
        1883 if not mqtt_connack("127.0.0.1", 1883, 0.2) and _free(1883) else free_port()
    )
    return (_Dev if args.dev else _Production)(args, work, port).run()


class _Demo:
    mode = ""

    def __init__(self, args: argparse.Namespace, work: Path, port: int) -> None:
        self.args, self.work, self.port = args, work, port
        self.dev: str = args.device_id
        self.cfg = work / "appliance.toml"
        self.state = work / "state"
        self.log_path = work / "daemon.log"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.broker: Mosquitto | None = None
        self.station_port: int = args.station_port or (8470 if _free(8470) else free_port())
        self.officer = ("can-bo-demo", f"{secrets.randbelow(10**6):06d}")  # id, PIN
        # The centre's side in the background (production mode, not --once): its processes.
        self.centre: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    # -- what differs between the modes -----------------------------------------------------

    def start_broker(self) -> Mosquitto:
        raise NotImplementedError

    def prepare_kiosk(self) -> None:
        raise NotImplementedError

    def controller(self) -> Controller:
        raise NotImplementedError

    def enroll(self) -> int:
        raise NotImplementedError

    def hints(self) -> None:
        raise NotImplementedError

    def start_centre(self) -> list[Citizen]:
        """Start the centre's side for the screen; the citizens to look up (none: no centre)."""
        return []

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> int:
        rc = 0
        try:
            self.broker = self.start_broker()
            self.prepare_kiosk()
            self.station_settings()
            _step(f"starting the daemon on the simulated kit (log: {self.log_path})")
            daemon = self.spawn(
                [PY, "-m", "appliance", "run", "--config", str(self.cfg),
                 "--state-dir", str(self.state)],
                self.log_path,
            )  # fmt: skip
            with self.controller().connect() as ctl:
                q = ctl.subscribe(Topics("kiosk", self.dev).status)
                birth = _wait_online(q, daemon, 30)
                t0 = time.perf_counter()
                pong = ctl.request(self.dev, "ping", timeout=10)
                rtt = (time.perf_counter() - t0) * 1000
                status = _wait_devices(ctl, self.dev, 60)
                _summary(self.dev, birth, status, pong, rtt, self.mode)
                self.hints()
                citizens = [] if self.args.once else self.start_centre()
                self.screen_hints(daemon, citizens)
            if not self.args.no_enroll:
                _step("enrolling a synthetic citizen as the fleet would (fleet enroll + issue)")
                rc = self.enroll()
                if rc != 0:
                    print(
                        f"demo: the enrollment ended with status {rc}; daemon log: {self.log_path}",
                        file=sys.stderr,
                    )
            if not self.args.once:
                centre = ", the centre" if self.centre else ""
                print(f"\nRunning. Ctrl-C stops the daemon{centre} and the broker.", flush=True)
                daemon.wait()
        except KeyboardInterrupt:
            pass
        except Exception as exc:
            tail = ""
            if self.log_path.exists():
                tail = self.log_path.read_text(errors="replace")[-3000:]
            print(f"demo failed: {exc}\n--- daemon log tail ---\n{tail}", file=sys.stderr)
            rc = 1
        finally:
            for proc in reversed(self.procs):
                _stop(proc)
            for name, _proc, log in self.centre:
                print(f"  {name}: {_last_line(log)}", flush=True)
            if self.broker is not None:
                self.broker.stop()
        return rc

    # -- the kiosk's own screen (docs/local-api.md) --------------------------------------------

    def station_settings(self) -> None:
        """The station on: its flow, local API and screen on loopback, attended by a throw-away
        officer (also a supervisor, so that a finger exception can be approved)."""
        from ..station.officers import hash_secret

        text = self.cfg.read_text()
        if "[station" in text:
            raise RuntimeError(f"{self.cfg} already configures the station")
        officer, pin = self.officer
        self.cfg.write_text(
            text.rstrip("\n")
            + "\n\n# + appliance demo: the kiosk station (screen and local API on loopback)\n"
            f'[station]\nenabled = true\nbind = "127.0.0.1"\nport = {self.station_port}\n'
            "attended = true\n"
            "[[station.officers]]\n"
            f'id = "{officer}"\nname = "Cán bộ demo"\nsupervisor = true\n'
            f'secret_hash = "{hash_secret(pin)}"\nexpires = {time.time() + 86400:.0f}\n'
        )

    def screen_hints(self, daemon: subprocess.Popen[bytes], citizens: list[Citizen]) -> None:
        """Wait until the screen answers with this boot's token, then say how to open it."""
        token = _wait_screen(self.state, self.station_port, daemon, 30)
        url = f"http://127.0.0.1:{self.station_port}/?token={token}"
        officer, pin = self.officer
        print("The kiosk's screen (loopback only; the token is new at every daemon start):")
        print(f"  {url}")
        print(f"  chromium --app='{url}'   (or any browser on this machine)")
        print(f"  officer sign-in: {officer} / PIN {pin} (also a supervisor, for exceptions)")
        if citizens:
            print("  citizen numbers to look up (synthetic citizens of the demo's directory):")
            for c in citizens:
                print(f"    {c.personal_id}  {c.full_name}, born {c.date_of_birth.isoformat()}")
            print(
                "  On the screen (Vietnamese; the English button switches): Bắt đầu (Begin), sign"
                " in as the\n  officer, type a number on the keypad, Tra cứu (Look up): the"
                " citizen's data from the\n  centre's directory; confirm, consent (tick the card"
                " to have it issued at the kiosk),\n  the portrait and the fingers. The centre's"
                " receiver verifies the package and the kiosk\n  purges it; the issuance desk"
                f" sends the card's data (logs in {self.work / 'centre'})."
            )
        else:
            print("  (no centre runs: a lookup on the screen gets no answer)")
        print("The screen and its local API: docs/local-api.md.", flush=True)

    def spawn(self, argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )
        self.procs.append(proc)
        return proc


class _Production(_Demo):
    mode = "production configuration: claim-provisioned, signed commands, mutual TLS + ACL"

    def __init__(self, args: argparse.Namespace, work: Path, port: int) -> None:
        super().__init__(args, work, port)
        self.kit = FleetKit(work / "kit")

    def start_broker(self) -> Mosquitto:
        _step(
            f"creating a throw-away fleet in {self.kit.root}: fleet CA, broker, controller, "
            "central and claimant certificates (provisioning/issue-device-cert), fleet root, "
            "operator/admin/ingest signing keys, central enrollment key"
        )
        self.kit.create()
        _step(
            f"starting mosquitto on 127.0.0.1:{self.port}: mutual TLS, the shipped ACL "
            f"(provisioning/render-broker-config; files in {self.work / 'broker'})"
        )
        return self.kit.broker(self.work / "broker", self.port).start()

    def prepare_kiosk(self) -> None:
        home = str(self.kit.home)
        token = subprocess.run(
            [PY, "-m", "appliance", "fleet", "claim-token", "--home", home,
             "--device", self.dev, "--site", "demo", "--ttl", "1h"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        _step(
            f"provisioning the kiosk: appliance provision --claim-token {token.split('.')[0]}.… "
            "(claimant certificate), approved with appliance fleet approve"
        )
        certs = self.kit.certs
        prov_log = self.work / "provision.log"
        prov = self.spawn(
            [PY, "-m", "appliance", "provision", "--config", str(self.cfg),
             "--state-dir", str(self.state), "--device-id", self.dev, "--site", "demo",
             "--profile", "sim", "--broker", f"localhost:{self.port}",
             "--ca", str(certs / "ca.crt"), "--cert", str(certs / "claimant.crt"),
             "--key", str(certs / "claimant.key"), "--claim-token", token, "--wait", "180"],
            prov_log,
        )  # fmt: skip
        approve = subprocess.run(
            [PY, "-m", "appliance", "fleet", "approve", self.dev, "--yes",
             "--ca-dir", str(self.kit.ca_dir), "--timeout", "180",
             *self.kit.flags(self.port)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if approve.returncode != 0:
            raise RuntimeError(f"fleet approve failed: {approve.stdout}{approve.stderr}")
        rc = prov.wait(240)
        self.procs.remove(prov)
        out = prov_log.read_text(errors="replace")
        if rc != 0:
            raise RuntimeError(f"appliance provision failed ({rc}):\n{out[-3000:]}")
        for line in out.splitlines():
            if line.lstrip().startswith("["):
                print(f"  {line.strip()}", flush=True)
        print(f"  {approve.stdout.strip().splitlines()[-1]}", flush=True)
        self._demo_settings()
        ingest_log = self.work / "ingest" / "controller.log"
        ingest_log.parent.mkdir(exist_ok=True)
        _step(
            "starting the ingest (appliance fleet controller --ack): records the kiosk's events "
            "and acknowledges them end to end, signed with the ingest key"
        )
        self.spawn(
            [PY, "-m", "appliance", "fleet", "controller", "--ack",
             "--out", str(ingest_log.parent / "events.jsonl"), *self.kit.flags(self.port)],
            ingest_log,
        )  # fmt: skip

    def _demo_settings(self) -> None:
        """The demo's settings over the provisioned configuration: end-to-end delivery, a
        short heartbeat, the serial line's pace."""
        import tomllib

        from ..provisioning.flow import render_toml

        text = self.cfg.read_text()
        data = tomllib.loads(text)
        data["mqtt"]["delivery"] = "end_to_end"
        data.setdefault("telemetry", {})["heartbeat_s"] = 10
        data.setdefault("simulation", {})["line_rate"] = not self.args.fast
        header = "\n".join(ln for ln in text.splitlines()[:2] if ln.startswith("#"))
        self.cfg.write_text(
            render_toml(data, header=header + "\n# + appliance demo: end-to-end delivery on")
        )

    def controller(self) -> Controller:
        return self.kit.controller(self.port, signer="operator")

    def enroll(self) -> int:
        from ..central.demo import enroll_and_issue

        return enroll_and_issue(
            self.kit.home,
            device=self.dev,
            state_dir=self.state,
            port=self.port,
            broker=self.kit.flags(self.port)[2:],
            issue=not self.args.no_card,
            # The centre's receiver runs in the background: the enrollment's package goes to it.
            extra=["--external-receiver"] if self.centre else None,
        )

    def start_centre(self) -> list[Citizen]:
        """The citizen directory (a few synthetic citizens), the receiver and the issuance
        desk, as ``appliance fleet`` subprocesses with the kit's identities, each waited for
        until it says it serves."""
        from ..central.citizens import synthetic_citizen

        root = self.work / "centre"
        root.mkdir(exist_ok=True)
        citizens = [synthetic_citizen(ref) for ref in CENTRE_CITIZENS]
        path = root / "citizens.json"
        path.write_text(
            json.dumps(
                {c.citizen_ref: c.model_dump(mode="json", exclude={"citizen_ref"})
                 for c in citizens},
                ensure_ascii=False, indent=1,
            ),
            encoding="utf-8",
        )  # fmt: skip
        _step(
            f"starting the centre's side for the screen (logs in {root}): the citizen "
            f"directory with {len(citizens)} synthetic citizens (identity directory), the "
            "receiver and the issuance desk (identity central)"
        )
        fleet = [PY, "-m", "appliance", "fleet"]
        self._centre(
            "directory",
            [*fleet, "directory", "--citizens", str(path), "--client-id", "demo-directory",
             *self.kit.flags(self.port, "directory")],
            "citizen directory: ",
        )  # fmt: skip
        self._centre(
            "receiver",
            [*fleet, "receive", "--client-id", "demo-receiver",
             *self.kit.flags(self.port, "central")],
            "receiving enrollment uploads",
        )  # fmt: skip
        self._centre(
            "issuance desk",
            [*fleet, "issue-desk", "--ds-dir", str(self.state / "sim" / "pki"),
             "--client-id", "demo-issuance", *self.kit.flags(self.port, "central")],
            "issuance desk answering",
        )  # fmt: skip
        for name, _proc, log in self.centre:
            print(f"  {name}: {_last_line(log)}", flush=True)
        return citizens[:3]

    def _centre(self, name: str, argv: list[str], ready: str, timeout: float = 30) -> None:
        log = self.work / "centre" / f"{name.replace(' ', '-')}.log"
        proc = self.spawn(argv, log)
        self.centre.append((name, proc, log))
        deadline = time.monotonic() + timeout
        while ready not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                why = f"exited with status {proc.returncode}" if proc.poll() else "is not ready"
                raise RuntimeError(f"the centre's {name} {why}:\n{tail}")
            time.sleep(0.1)

    def hints(self) -> None:
        c = self.kit.certs
        tls = f"--cafile {c / 'ca.crt'} --cert {c / 'controller.crt'} --key {c / 'controller.key'}"
        envelope = self.work / "status-command.json"
        body = json.dumps({"id": "c1", "cmd": "status", "args": {}}).encode()
        from ..trust.envelope import EnvelopeBuilder

        # Signed with a key of its own: the kiosk refuses a counter not above the last one it
        # accepted from the same key (docs/trust.md), so a file signed with the operator key
        # would be `replayed` after the enrollment's (later) operator commands.
        signer = self.kit.make_signer(HINT_SIGNER, ("operator",), devices=(self.dev,))
        envelope.write_bytes(
            EnvelopeBuilder(signer, lifetime_s=3600).build("status", body, self.dev)
        )
        fleet_toml = self._write_fleet_toml()
        home = self.kit.home
        app = _appliance_command()
        print("Watch everything the kiosk says (TLS, the fleet's controller certificate):")
        print(f"  mosquitto_sub -h localhost -p {self.port} {tls} -t 'kiosk/{self.dev}/#' -v")
        print("Command it: commands must be signed. A signed status command (valid for an hour;")
        print(f"it runs once, a copy sent again gets the stored reply) is in {envelope},")
        print("signed with a key of its own so that the demo's later commands do not make it a")
        key = self.kit.home / f"{HINT_SIGNER}.key"
        print(f"replay ({key}). The reply appears on kiosk/{self.dev}/reply:")
        print(
            f"  mosquitto_pub -h localhost -p {self.port} {tls} -q 1 -t kiosk/{self.dev}/cmd "
            f"-f {envelope}"
        )
        print("or let the fleet tool sign each command and verify the kiosk's signed reply; the")
        print(f"fleet tools (docs/fleet-tools.md) find this broker in {fleet_toml}:")
        print(f"  export APPLIANCE_FLEET_HOME={home}")
        print(f"  {app} fleet send {self.dev} status")
        print(f"  {app} fleet send {self.dev} diagnostics --signer {home}/admin")
        print(f"  {app} fleet devices; {app} fleet watch --status")
        print("The kiosk's own view (its certificate; the broker's retained status):")
        print(f"  {app} status --config {self.cfg} --state-dir {self.state}")
        print("Commands and their arguments: docs/protocol.md.")

    def _write_fleet_toml(self) -> Path:
        """The fleet home's defaults (docs/fleet-tools.md "Common options"): this broker and
        the controller certificate, so the fleet tools need no broker flags."""
        o = self.kit.options(self.port)
        path = self.kit.home / "fleet.toml"
        path.write_text(
            "# Written by `appliance demo`: the throw-away fleet's broker (docs/fleet-tools.md).\n"
            "[broker]\n"
            f'host = {json.dumps(o.host)}\nport = {self.port}\nprefix = "kiosk"\n'
            f"ca_file = {json.dumps(str(o.ca_file))}\n"
            f"cert_file = {json.dumps(str(o.cert_file))}\n"
            f"key_file = {json.dumps(str(o.key_file))}\n"
        )
        return path


# The signing key of the demo's pre-signed status command (run/status-command.json).
HINT_SIGNER = "status-command"
# The demo directory's synthetic citizens (appliance/central/citizens.py: the same reference
# gives the same fictitious person); the first three are printed with the screen's URL.
CENTRE_CITIZENS = tuple(f"CIT-DEMO-SCREEN-{n}" for n in range(1, 6))


# A log record of the fleet tools (logging.basicConfig with "%(asctime)s %(levelname)s ...").
_LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")


def _last_line(log: Path) -> str:
    """A centre process's last line that is not a log record (its ready or stopped line)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    lines = [ln for ln in text.splitlines() if ln.strip() and not _LOG_RECORD.match(ln)]
    return lines[-1] if lines else "(no output)"


def _appliance_command() -> str:
    """How to call the console script this demo runs from: ``appliance`` when that is what
    the shell finds, else its full path (scripts/demo on a fresh clone installs into .venv,
    which is not on PATH)."""
    script = Path(sys.executable).parent / "appliance"
    found = shutil.which("appliance")
    if found is not None and Path(found).resolve() == script.resolve():
        return "appliance"
    return str(script) if script.exists() else f"{sys.executable} -m appliance"


class _Dev(_Demo):
    mode = "development mode (--dev): plain MQTT, no ACL, unsigned commands"

    def start_broker(self) -> Mosquitto:
        _step(
            f"starting mosquitto on 127.0.0.1:{self.port}, plain MQTT without ACL "
            f"(--dev; config and log in {self.work / 'broker'})"
        )
        return Mosquitto(self.work / "broker", port=self.port).start()

    def prepare_kiosk(self) -> None:
        trust = ""
        if not self.args.no_enroll:
            from ..central.demo import prepare

            trust = prepare(self.work / "fleet")  # fleet root, enrollment, ingest (throw-away)
        self.cfg.write_text(
            "# Written by `appliance demo --dev`: the simulated kit against a plain local\n"
            "# broker, unsigned commands accepted (development only).\n"
            f'[device]\nid = "{self.dev}"\nsite = "demo"\nprofile = "sim"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {self.port}\n'
            "[commands]\nallow_unsigned = true\n"
            "[telemetry]\nheartbeat_s = 10\n"
            f"[simulation]\nline_rate = {'false' if self.args.fast else 'true'}\n" + trust
        )

    def controller(self) -> Controller:
        return Controller("127.0.0.1", self.port)

    def enroll(self) -> int:
        from ..central.demo import enroll_and_issue

        return enroll_and_issue(
            self.work / "fleet",
            device=self.dev,
            state_dir=self.state,
            port=self.port,
            dev=True,
            issue=not self.args.no_card,
        )

    def hints(self) -> None:
        dev, port = self.dev, self.port
        print("Watch everything the kiosk says:")
        print(f"  mosquitto_sub -h 127.0.0.1 -p {port} -t 'kiosk/{dev}/#' -v")
        print(f"Send it a command (the reply appears on kiosk/{dev}/reply):")
        print(
            f"  mosquitto_pub -h 127.0.0.1 -p {port} -q 1 -t kiosk/{dev}/cmd "
            '-m \'{"id":"c1","cmd":"status"}\''
        )
        print(
            f"  mosquitto_pub -h 127.0.0.1 -p {port} -q 1 -t kiosk/{dev}/cmd "
            '-m \'{"id":"c2","cmd":"diagnostics"}\''
        )
        print("Commands and their arguments: docs/protocol.md.")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_online(q: Any, daemon: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited with status {daemon.returncode}")
        try:
            _t, payload, _r = q.get(timeout=0.5)
        except Exception:  # noqa: S112 - queue.Empty: keep waiting
            continue
        msg: dict[str, Any] = json.loads(payload)
        if msg.get("online"):
            return msg
    raise RuntimeError("the daemon did not come online in time")


def _wait_screen(state: Path, port: int, daemon: subprocess.Popen[bytes], timeout: float) -> str:
    """This boot's screen token, once the local API answers it (and refuses a request
    without it)."""
    import urllib.error
    import urllib.request

    from ..station.api import TOKEN_FILE

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited with status {daemon.returncode}")
        path = state / TOKEN_FILE
        if path.exists():
            token = path.read_text().strip()
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/state")
            try:
                urllib.request.urlopen(req, timeout=2).close()  # noqa: S310 - http on loopback
                raise RuntimeError("the local API answered a request without the screen token")
            except urllib.error.HTTPError as exc:
                last = f"without the token: {exc.code}"
            except OSError as exc:
                last = str(exc)
            if last.endswith("401"):
                req.add_header("X-Screen-Token", token)
                try:
                    with urllib.request.urlopen(req, timeout=2) as r:  # noqa: S310
                        if r.status == 200 and "screen" in json.loads(r.read()):
                            return token
                except OSError as exc:
                    last = f"with the token: {exc}"
        time.sleep(0.2)
    raise RuntimeError(f"the kiosk's screen did not answer on port {port} ({last})")


def _wait_devices(ctl: Controller, device: str, timeout: float) -> dict[str, Any]:
    """The kiosk's status once every simulated device has come up (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = ctl.request(device, "status", timeout=10)["result"]
        states = {k: v["state"] for k, v in status["devices"].items()}
        if all(s in ("ok", "disabled") for s in states.values()) or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def _summary(
    dev: str,
    birth: dict[str, Any],
    status: dict[str, Any],
    pong: dict[str, Any],
    rtt_ms: float,
    mode: str,
) -> None:
    print()
    print(
        f"Kiosk {dev} is online (software {birth.get('version')}, profile {birth.get('profile')})."
    )
    print(f"  {mode}")
    print(f"  ping round trip through the broker: {rtt_ms:.1f} ms ({'ok' if pong['ok'] else pong})")
    for kind, h in status["devices"].items():
        detail = f" ({h['detail']})" if h.get("detail") else ""
        print(f"  {kind:<12} {h['state']}{detail}")
    print(f"  outbox depth: {status['outbox_depth']}")
    print()
