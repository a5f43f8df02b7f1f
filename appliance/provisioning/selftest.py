"""``appliance selftest``: is this kiosk ready to serve?

Checks, each ``ok``, ``fail`` (with the next step to take) or ``skip`` (not applicable, said
why):

* ``clock``: the wall clock reads a sane date (not 1970 after a boot without RTC battery, not
  decades ahead) and is not behind the newest signed command this kiosk already accepted
  (the trust layer's time floor, docs/trust.md);
* ``identity``: the device key exists with mode 0600 (created by ``appliance provision``);
* ``trust``: the fleet root key(s) and enrollment key of the configuration load; a missing
  enrollment key fails (biometric records are sealed to it: without it every enrollment is
  refused);
* ``camera``, ``fingerprint``, ``card``: the configured backend is created by the driver
  factory, started, reports health ``ok``, and answers: a frame is read from the camera, the
  sensor answers TempleteNum (a real command round trip), the reader is listed by pcscd;
  a device disabled in the configuration is ``skip``;
* ``broker``: an MQTT 5 CONNECT with the configured address and TLS files gets a successful
  CONNACK.

The simulated kit's emulators (``[simulation]``) are started for the check and stopped after,
exactly as the daemon would. Run it while the daemon is stopped: the daemon holds the serial
port and the camera (``systemctl stop appliance`` first).

Exit status: 0 when nothing failed, 1 with the failing checks listed, 2 on an invalid
configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sqlite3
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..config import DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR, AppConfig, load
from ..errors import ApplianceError, ConfigError

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
#: A clock later than this many seconds after ``ClockPolicy.sane_after`` is wrong too.
MAX_FUTURE_S = 30 * 365 * 86400

NEXT = {
    "enrollment_key": "provision the kiosk ('appliance provision' installs the fleet's "
    "enrollment key from the trust bundle), or set trust.enrollment_key to the central "
    "service's enrollment.pub",
    "camera": "check the camera cable and [hardware.camera] device/backend; 'appliance config "
    "show' prints what is configured",
    "fingerprint": "check the sensor's cable and power and [hardware.fingerprint] port and baud",
    "card": "check the reader's USB cable and that pcscd runs ('systemctl status pcscd'); "
    "[hardware.card] reader names a substring of the reader",
    "broker": "check [mqtt] host and port, the network path to the broker (firewall), and the "
    "[mqtt.tls] files; the broker log says why it refused a certificate",
    "clock": "enable time synchronisation ('timedatectl set-ntp true') or set the clock and "
    "the RTC ('hwclock --systohc')",
    "identity": "fix the key file's mode ('chmod 600 <state>/device.key') if it has not "
    "leaked; otherwise re-provision the kiosk",
    "trust": "re-run 'appliance provision' to install the fleet's trust bundle",
}


@dataclass
class Check:
    name: str
    status: str  # ok / fail / skip
    detail: str
    next_step: str = ""
    ms: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status == "fail"


def _timed(name: str, fn: Callable[[], Check]) -> Check:
    t0 = time.monotonic()
    try:
        chk = fn()
    except ApplianceError as exc:
        chk = Check(name, "fail", f"{exc.code}: {exc.message}", NEXT.get(name, ""))
    except Exception as exc:  # a check must report, never crash the self-test
        chk = Check(name, "fail", f"unexpected {type(exc).__name__}: {exc}", NEXT.get(name, ""))
    chk.ms = round((time.monotonic() - t0) * 1000, 1)
    return chk


# --- clock ------------------------------------------------------------------------------------


def _time_floor(state_dir: Path) -> int | None:
    """Newest issued_at of an accepted signed command (read-only; None without a store)."""
    from ..store import DB_NAME

    db = state_dir / DB_NAME
    if not db.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute("SELECT max(last_issued_at) FROM trust_issuer_state").fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return int(row[0]) if row and row[0] is not None else None


def check_clock(cfg: AppConfig, state_dir: Path, now: float | None = None) -> Check:
    from ..trust.envelope import ClockPolicy

    t = time.time() if now is None else now
    sane_after = ClockPolicy().sane_after
    shown = datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if t < sane_after:
        return Check(
            "clock",
            "fail",
            f"the clock reads {shown}, before this software existed (no RTC or NTP?)",
            NEXT["clock"],
        )
    if t > sane_after + MAX_FUTURE_S:
        return Check("clock", "fail", f"the clock reads {shown}, decades ahead", NEXT["clock"])
    floor = _time_floor(state_dir)
    if floor is not None and t < floor - cfg.trust.skew_s:
        behind = datetime.fromtimestamp(floor, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return Check(
            "clock",
            "fail",
            f"the clock reads {shown}, behind the newest accepted signed command ({behind})",
            NEXT["clock"],
        )
    return Check("clock", "ok", f"{shown} (UTC)")


# --- identity and trust -----------------------------------------------------------------------


def check_identity(state_dir: Path) -> Check:
    from ..trust.keys import DEVICE_KEY_FILE, DeviceIdentity

    if not (state_dir / DEVICE_KEY_FILE).exists():
        return Check("identity", "skip", f"no device key in {state_dir} yet (appliance provision)")
    ident = DeviceIdentity.load(state_dir)
    return Check("identity", "ok", f"device key {ident.key_id} (mode 0600)")


def check_trust(cfg: AppConfig, *, require_enrollment_key: bool = True) -> Check:
    """The fleet root key(s) and the enrollment key load. A missing enrollment key fails: the
    kiosk could not seal biometric records and refuses every enrollment session.
    ``require_enrollment_key=False``: during ``appliance provision``, before the trust bundle
    brings it."""
    from ..trust.keys import key_id, load_public_key
    from ..trust.sealed import load_enrollment_public_key

    parts: list[str] = []
    if cfg.trust.root_keys:
        ids = [key_id(load_public_key(p)) for p in cfg.trust.root_keys]
        parts.append(f"fleet root {', '.join(ids)}")
    else:
        mode = (
            "unsigned commands allowed (development)"
            if cfg.commands.allow_unsigned
            else "every command refused until provisioned"
        )
        parts.append(f"no fleet root key configured: {mode}")
    if cfg.trust.enrollment_key is not None:
        load_enrollment_public_key(cfg.trust.enrollment_key)
        parts.append(f"enrollment key {cfg.trust.enrollment_key}")
    elif require_enrollment_key:
        return Check(
            "trust",
            "fail",
            "; ".join(
                [
                    *parts,
                    "no enrollment key (trust.enrollment_key): biometric records cannot be "
                    "sealed, every enrollment is refused",
                ]
            ),
            NEXT["enrollment_key"],
        )
    else:
        parts.append("no enrollment key yet (the trust bundle brings it)")
    return Check("trust", "ok" if cfg.trust.root_keys else "skip", "; ".join(parts))


# --- devices ----------------------------------------------------------------------------------


def _probe(kind: str, dev: Any) -> str:
    if kind == "camera":
        frame = dev.read(timeout_s=5.0)
        w, h = frame.size
        return f"frame {w}x{h}"
    if kind == "fingerprint":
        n = dev.template_num()
        model = dev.info().get("model")
        return f"{model} answers (templates stored: {n})"
    if kind == "card":
        st = dev.status()
        card = "card present" if st.get("card_present") else "no card"
        return f"reader {st.get('reader')!r}, {card}"
    return "started"


def check_device(kind: str, cfg: AppConfig, timeout_s: float) -> Check:
    from ..drivers import create_device

    section = getattr(cfg.hardware, kind)
    if not section.enabled:
        return Check(kind, "skip", "disabled in the configuration")
    events: list[tuple[str, dict[str, Any]]] = []
    dev = create_device(kind, section.backend, section, lambda t, d: events.append((t, d)))
    try:
        dev.start()
        deadline = time.monotonic() + timeout_s
        while dev.health().state not in ("ok", "error") and time.monotonic() < deadline:
            time.sleep(0.05)
        h = dev.health()
        if h.state != "ok":
            return Check(
                kind,
                "fail",
                f"{section.backend}: {h.state}{f' ({h.detail})' if h.detail else ''} after "
                f"{timeout_s:g} s",
                NEXT[kind],
            )
        return Check(kind, "ok", f"{section.backend}: {_probe(kind, dev)}")
    finally:
        with contextlib.suppress(Exception):
            dev.stop()


# --- broker -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerCredentials:
    """TLS files for the broker check when they differ from the configuration's (during
    provisioning the kiosk may still connect with the shared claimant certificate)."""

    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None


def probe_broker(
    host: str,
    port: int,
    creds: BrokerCredentials | None,
    *,
    timeout_s: float,
    client_id: str,
    insecure: bool = False,
) -> tuple[bool, str]:
    """MQTT 5 CONNECT/CONNACK with these credentials: (connected, detail)."""
    from ..mqttclient import FleetConnectionError, make_client, release, tls_files

    files = None
    if creds is not None and (creds.ca_file or creds.cert_file):
        files = tls_files(creds.ca_file, creds.cert_file, creds.key_file)
    try:
        c = make_client(client_id, tls=files, insecure=insecure, nodelay=False)
    except FleetConnectionError as exc:
        return False, f"TLS files unusable: {exc}"
    done = threading.Event()
    result: dict[str, Any] = {}

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        result["rc"] = rc
        done.set()

    c.on_connect = on_connect
    t0 = time.monotonic()
    try:
        c.connect(host, port, keepalive=10)
    except (OSError, ssl.SSLError) as exc:
        return False, f"{host}:{port} unreachable: {exc}"
    c.loop_start()
    try:
        if not done.wait(timeout_s):
            return False, f"{host}:{port}: no CONNACK within {timeout_s:g} s"
        rc = result["rc"]
        if rc.is_failure:
            return False, f"{host}:{port} refused the connection: {rc}"
        ms = (time.monotonic() - t0) * 1000
        tls = " over TLS" if creds is not None and (creds.ca_file or creds.cert_file) else ""
        return True, f"{host}:{port} accepted the connection{tls} in {ms:.0f} ms"
    finally:
        c.disconnect()
        release(c)


def check_broker(cfg: AppConfig, timeout_s: float, creds: BrokerCredentials | None = None) -> Check:
    """Every broker of ``mqtt.brokers`` (or the one ``host``/``port``) with its own TLS
    settings: ok when one accepts the kiosk, the detail naming each one's answer."""
    results = []
    for ep in cfg.mqtt.endpoints():
        tls = ep.tls
        ep_creds = creds
        if ep_creds is None and tls.enabled:
            ep_creds = BrokerCredentials(tls.ca_file, tls.cert_file, tls.key_file)
        results.append(
            probe_broker(
                ep.host,
                ep.port,
                ep_creds,
                timeout_s=timeout_s,
                client_id=f"{cfg.device.id}-selftest-{uuid.uuid4().hex[:6]}",
                insecure=tls.insecure,
            )
        )
    ok = any(r[0] for r in results)
    detail = "; ".join(r[1] for r in results)
    return Check("broker", "ok" if ok else "fail", detail, "" if ok else NEXT["broker"])


# --- all of it --------------------------------------------------------------------------------


def run_checks(
    cfg: AppConfig,
    state_dir: Path,
    *,
    device_timeout_s: float = 15.0,
    broker_timeout_s: float = 5.0,
    broker_creds: BrokerCredentials | None = None,
    progress: Callable[[Check], None] | None = None,
    require_enrollment_key: bool = True,
) -> list[Check]:
    """Every check, in order; the simulated kit's emulators run only for the device checks."""
    checks: list[Check] = []

    def add(chk: Check) -> None:
        checks.append(chk)
        if progress is not None:
            progress(chk)

    add(_timed("clock", lambda: check_clock(cfg, state_dir)))
    add(_timed("identity", lambda: check_identity(state_dir)))
    add(_timed("trust", lambda: check_trust(cfg, require_enrollment_key=require_enrollment_key)))
    cleanups: list[Callable[[], None]] = []
    devcfg = cfg
    sim = cfg.simulation
    try:
        if sim.fingerprint or sim.card:
            simulation = importlib.import_module("appliance.simulation")
            try:
                devcfg, cleanups = simulation.start(cfg, state_dir)
            except ApplianceError as exc:
                add(Check("simulation", "fail", exc.message, "see the emulator logs named"))
            except OSError as exc:  # e.g. a state dir so deep that pcscd's socket path is
                # longer than AF_UNIX allows (108 bytes)
                add(
                    Check(
                        "simulation",
                        "fail",
                        f"the simulated kit did not start: {exc}",
                        f"use a shorter --state-dir than {state_dir} (socket paths are "
                        "limited to 108 bytes)",
                    )
                )
        for kind in ("camera", "fingerprint", "card"):
            add(_timed(kind, lambda k=kind: check_device(k, devcfg, device_timeout_s)))  # type: ignore[misc]
    finally:
        for fn in reversed(cleanups):
            with contextlib.suppress(Exception):
                fn()
    add(_timed("broker", lambda: check_broker(cfg, broker_timeout_s, broker_creds)))
    return checks


def format_check(chk: Check) -> str:
    mark = {"ok": " ok ", "fail": "FAIL", "skip": "skip"}.get(chk.status, chk.status)
    line = f"  [{mark}] {chk.name:<12} {chk.detail}"
    if chk.failed and chk.next_step:
        line += f"\n         next: {chk.next_step}"
    return line


# --- CLI --------------------------------------------------------------------------------------


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get("APPLIANCE_CONFIG", str(DEFAULT_CONFIG_PATH))),
        metavar="FILE",
        help="configuration file (default: $APPLIANCE_CONFIG or %(default)s)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("APPLIANCE_STATE_DIR", str(DEFAULT_STATE_DIR))),
        metavar="DIR",
        help="state directory (device key, store) (default: $APPLIANCE_STATE_DIR or %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument(
        "--device-timeout",
        type=float,
        default=15.0,
        metavar="S",
        help="seconds each device may take to report healthy (default %(default)s)",
    )
    p.add_argument(
        "--broker-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds to wait for the broker's CONNACK (default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    if args.config == DEFAULT_CONFIG_PATH and not args.config.exists():
        print(
            f"note: no configuration file {args.config}: built-in defaults and APPLIANCE_* "
            "variables only (--config FILE for another file)",
            file=sys.stderr,
        )
    try:
        cfg = load(args.config, require_file=args.config != DEFAULT_CONFIG_PATH)
    except ConfigError as exc:
        for path, reason in exc.problems:
            print(f"{path}: {reason}", file=sys.stderr)
        print(f"{args.config}: invalid configuration", file=sys.stderr)
        return EXIT_CONFIG
    if not args.json:
        print(f"selftest of {cfg.device.id} (profile {cfg.device.profile})", flush=True)
    checks = run_checks(
        cfg,
        args.state_dir,
        device_timeout_s=args.device_timeout,
        broker_timeout_s=args.broker_timeout,
        progress=None if args.json else lambda c: print(format_check(c), flush=True),
    )
    failed = [c.name for c in checks if c.failed]
    if args.json:
        print(
            json.dumps(
                {
                    "device": cfg.device.id,
                    "ok": not failed,
                    "failed": failed,
                    "checks": [asdict(c) for c in checks],
                },
                indent=2,
            )
        )
    elif failed:
        print(f"FAILED: {', '.join(failed)}")
    else:
        print("all checks passed")
    return EXIT_FAILED if failed else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance selftest")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
