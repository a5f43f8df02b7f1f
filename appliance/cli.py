"""``appliance`` command line: run the daemon, check configuration, show status, simulators,
fleet tools. ``appliance COMMAND --help`` explains each command's options and defaults."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__
from .config import DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR, check_file, load
from .errors import ApplianceError, ConfigError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

# `appliance sim NAME` -> module providing configure_parser(p) and run(args)
SIMULATORS = {
    "fingerprint": (
        "appliance.drivers.fingerprint.simcli",
        "ZhianTec fingerprint sensor emulator on a pty or TCP port",
    ),
    "card": (
        "appliance.drivers.card.simcli",
        "eMRTD card emulator connecting to vpcd (pcscd's virtual reader)",
    ),
    "camera": ("appliance.drivers.camera.simcli", "camera scene simulator"),
}
# `appliance fleet NAME` -> module providing configure_parser(p) and run(args)
FLEET_TOOLS = {
    "keys": ("appliance.fleet.keyscli", "fleet root and operator keys and certificates"),
    "claim-token": ("appliance.fleet.claimtokencli", "one-time claim tokens for new kiosks"),
    "approve": ("appliance.fleet.approvecli", "approve or refuse a kiosk's claim"),
    "devices": ("appliance.fleet.devicescli", "the fleet at a glance, from retained status"),
    "send": ("appliance.fleet.sendcli", "send a signed command, verify the signed reply"),
    "push-config": (
        "appliance.fleet.pushconfigcli",
        "push a signed desired configuration, wait for the reports",
    ),
    "watch": ("appliance.fleet.watchcli", "live events, filtered, signatures checked"),
    "controller": (
        "appliance.fleet.controllercli",
        "event recorder sharing the load with others via $share subscriptions",
    ),
    "receive": (
        "appliance.central.receivecli",
        "central enrollment receiver: verify, store and acknowledge the kiosks' packages",
    ),
    "enroll": (
        "appliance.central.enrollcli",
        "scripted enrollment on a kiosk, end to end (optionally issue the card)",
    ),
    "issue": ("appliance.central.issuecli", "issue a card on the spot from a verified enrollment"),
    "issue-desk": (
        "appliance.central.issuedeskcli",
        "answer the kiosk stations' card requests with signed issuance packages",
    ),
    "sim": ("appliance.fleet.simcli", "N virtual kiosks against a broker (load and scale runs)"),
    "directory": ("appliance.central.directorycli", "the central citizen directory (lookups)"),
    "release": ("appliance.fleet.releasecli", "build and verify signed software release bundles"),
    "jobs": ("appliance.fleet.jobscli", "staged jobs (command, config, update) for many kiosks"),
    "serve": ("appliance.fleetsvc.servecli", "the fleet service: database, alarms, dashboard, API"),
}
# Top-level commands served by plugin modules (configure_parser(p), run(args)).
TOP_LEVEL = {
    "provision": (
        "appliance.provisioning.cli",
        "provision this kiosk: keys, config, self-test, fleet claim (resumable)",
    ),
    "enrollment": (
        "appliance.enrollment.export",
        "this kiosk's packages: export to removable media",
    ),
    "selftest": (
        "appliance.provisioning.selftest",
        "check camera, sensor, reader, broker, clock and keys",
    ),
}


def _state_dir_default() -> Path:
    return Path(os.environ.get("APPLIANCE_STATE_DIR", str(DEFAULT_STATE_DIR)))


def _config_default() -> Path:
    return Path(os.environ.get("APPLIANCE_CONFIG", str(DEFAULT_CONFIG_PATH)))


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=_config_default(),
        metavar="FILE",
        help="configuration file (default: $APPLIANCE_CONFIG or %(default)s; 'run' needs it "
        "unless --dev, the other commands read built-in defaults plus the 'sim' profile when "
        "the default file is missing)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=_state_dir_default(),
        metavar="DIR",
        help="state directory holding the SQLite store and keys "
        "(default: $APPLIANCE_STATE_DIR or %(default)s)",
    )


def _print_problems(source: str, problems: list[tuple[str, str]]) -> None:
    for path, reason in problems:
        print(f"{path}: {reason}", file=sys.stderr)
    print(f"{source}: {len(problems)} problem(s)", file=sys.stderr)


def _load_or_exit(args: argparse.Namespace) -> Any:
    if args.config == DEFAULT_CONFIG_PATH and not Path(args.config).exists():
        # Say so: without the file this is the built-in default device (the simulated kit),
        # not the kiosk, and `appliance run` would refuse to start.
        print(
            f"note: no configuration file {args.config}: built-in defaults and APPLIANCE_* "
            "variables only (--config FILE for another file)",
            file=sys.stderr,
        )
    return _load_layers_or_exit(args, require_file=args.config != DEFAULT_CONFIG_PATH)


def _load_layers_or_exit(args: argparse.Namespace, *, require_file: bool) -> Any:
    try:
        return load(args.config, require_file=require_file)
    except ConfigError as exc:
        _print_problems(str(args.config), exc.problems)
        raise SystemExit(EXIT_CONFIG) from None


# -- commands ---------------------------------------------------------------------------------


# What `appliance run --dev` layers under the environment when there is no configuration file:
# the simulated kit, unsigned commands accepted (firmware_profiles/sim.toml documents the kit).
DEV_RUN_ENV = {
    "APPLIANCE_DEVICE__PROFILE": "sim",
    "APPLIANCE_COMMANDS__ALLOW_UNSIGNED": "true",
}


def _run_config_or_exit(args: argparse.Namespace) -> None:
    """A kiosk runs from its configuration file. Without one, only an explicit development run
    (--dev) starts, on the simulated kit with unsigned commands accepted; a missing file never
    silently turns a real kiosk into that (the systemd unit names the default path)."""
    if args.config.exists():
        if args.dev:
            print(
                f"appliance: --dev is for a run without a configuration file, and {args.config} "
                "exists: set commands.allow_unsigned and device.profile in it instead",
                file=sys.stderr,
            )
            raise SystemExit(EXIT_CONFIG)
        return
    if not args.dev:
        print(
            f"appliance: no configuration file at {args.config}: give one with --config FILE "
            "(or $APPLIANCE_CONFIG); `appliance provision` writes it on a kiosk. For a "
            "development run on the simulated kit with unsigned commands accepted, pass --dev.",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_CONFIG)
    # The same process environment serves the configuration reloads (fleet configuration
    # trials re-load the layers, and a restart re-executes this command line with --dev).
    for name, value in DEV_RUN_ENV.items():
        os.environ.setdefault(name, value)
    print(
        "appliance: development run (--dev): no configuration file, the simulated kit unless "
        "the environment says otherwise, unsigned commands accepted",
        file=sys.stderr,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from . import configpush, logs
    from .daemon import Daemon

    _run_config_or_exit(args)
    # The local layers alone must be valid; the file must exist unless this is a --dev run.
    require_file = not args.dev
    cfg = _load_layers_or_exit(args, require_file=require_file)
    startup = configpush.at_startup(args.state_dir)
    if startup.desired is not None:
        try:
            cfg = load(args.config, desired=startup.desired, require_file=require_file)
        except ConfigError as exc:
            # The local file changed under a committed fleet layer: serve with the local
            # layers and say why; the fleet sees the version it has in config/reported.
            print(
                f"appliance: fleet configuration v{startup.version} no longer validates over "
                f"the local file, ignored: {exc.problems}",
                file=sys.stderr,
            )
            startup = configpush.Startup(None, None, None)
    if args.log_level:
        cfg.logging.level = args.log_level
    logs.setup(cfg.logging.level, cfg.logging.target)
    daemon = Daemon(cfg, args.state_dir, config_path=args.config, startup=startup)
    try:
        rc = daemon.run()
    except ApplianceError as exc:
        print(f"appliance: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE
    if daemon.restart_reason:
        # Apply or roll back a configuration atomically: a fresh process image with the new
        # layers. Same PID, so systemd (Type=notify, RELOADING=1 sent) keeps supervising.
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "appliance", *sys.argv[1:]])  # noqa: S606
    return rc


def cmd_config_check(args: argparse.Namespace) -> int:
    from .config import env_override_names

    environ: dict[str, str] = {} if args.no_env else dict(os.environ)
    overrides = env_override_names(environ)
    if overrides:
        print(f"environment overrides: {', '.join(sorted(overrides.values()))}")
    worst = EXIT_OK
    for f in args.files:
        problems = [
            (path, _from_env(path, reason, overrides))
            for path, reason in check_file(f, environ=environ)
        ]
        if problems:
            _print_problems(str(f), problems)
            worst = EXIT_CONFIG
        else:
            print(f"{f}: ok" + (" (with the environment overrides)" if overrides else ""))
    return worst


def _from_env(path: str, reason: str, overrides: dict[str, str]) -> str:
    """Say which environment variable set a field whose value is wrong."""
    for key, name in overrides.items():
        if path == key or path.startswith(key + "."):
            return f"{reason} (set by {name})"
    return reason


def cmd_config_show(args: argparse.Namespace) -> int:
    cfg = _load_or_exit(args)
    print(json.dumps(cfg.redacted(), indent=2))
    return EXIT_OK


def cmd_config_reference(_args: argparse.Namespace) -> int:
    from .config import reference_markdown

    print(reference_markdown(), end="")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """Local view (the store) plus the broker's retained status of this device."""
    from .store import DB_NAME, Store

    cfg = _load_or_exit(args)
    out: dict[str, Any] = {
        "device": cfg.device.id,
        "profile": cfg.device.profile,
        "state_dir": str(args.state_dir),
    }
    if (args.state_dir / DB_NAME).exists():
        store = Store(args.state_dir, synchronous=cfg.store.synchronous)
        try:
            out["store"] = {
                "schema_version": store.schema_version,
                "outbox_depth": store.outbox.depth(),
                "outbox_last_seq": store.outbox.last_seq(),
                "bytes": store.size_bytes(),
                "recent_audit": store.audit_tail(5),
            }
        finally:
            store.close()
    else:
        out["store"] = None
    out["broker_status"] = _retained_status(cfg, args.timeout)
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        bs = out["broker_status"]
        print(f"device     {out['device']} (profile {out['profile']})")
        if out["store"]:
            st = out["store"]
            print(
                f"store      {args.state_dir}: schema v{st['schema_version']}, outbox "
                f"{st['outbox_depth']} pending (last seq {st['outbox_last_seq']}), "
                f"{st['bytes']} bytes"
            )
        else:
            print(f"store      none yet in {args.state_dir}")
        if isinstance(bs, dict) and "online" in bs:
            devs = ", ".join(f"{k} {v}" for k, v in (bs.get("devices") or {}).items())
            print(
                f"broker     {'online' if bs['online'] else 'OFFLINE'} "
                f"(version {bs.get('version', '?')}); devices: {devs or '-'}"
            )
        else:
            print(f"broker     {bs}")
    return EXIT_OK


def _retained_status(cfg: Any, timeout: float) -> Any:
    from .mqttclient import make_client, tls_files
    from .protocol.topics import Topics

    topic = Topics(cfg.mqtt.topic_prefix, cfg.device.id).status
    got: dict[str, Any] = {}

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        try:
            got["status"] = json.loads(msg.payload)
        except ValueError:
            got["status"] = "unparseable retained status"

    failures = []
    for ep in cfg.mqtt.endpoints():  # the first broker of mqtt.brokers that answers
        tls = ep.tls
        client = make_client(
            f"status-{os.getpid()}",
            protocol=cfg.mqtt.protocol,
            tls=tls_files(tls.ca_file, tls.cert_file, tls.key_file) if tls.enabled else None,
            insecure=tls.insecure,
            nodelay=False,
        )
        client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        client.on_message = on_message
        try:
            client.connect(ep.host, ep.port, 10)
            break
        except OSError as exc:
            failures.append(f"{ep.name}: {exc}")
    else:
        return f"unreachable ({'; '.join(failures)})"
    deadline = time.monotonic() + timeout
    while "status" not in got and time.monotonic() < deadline:
        client.loop(0.1)
    client.disconnect()
    return got.get("status", "no retained status on the broker (never connected?)")


def cmd_schemas(args: argparse.Namespace) -> int:
    from .schemas import check, write

    if args.check:
        stale = check(args.out)
        for name in stale:
            print(
                f"{args.out / name}: out of date (run: appliance schemas --out {args.out})",
                file=sys.stderr,
            )
        return EXIT_FAILURE if stale else EXIT_OK
    for path in write(args.out):
        print(path)
    return EXIT_OK


def _plugin(table: dict[str, tuple[str, str]], name: str) -> Any:
    module, _ = table[name]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            return None
        raise


# -- parser -----------------------------------------------------------------------------------


def _add_plugins(sub: Any, table: dict[str, tuple[str, str]], wanted: str | None) -> None:
    """One sub-command per plugin; only the selected plugin's module is imported (simulators
    pull in numpy/OpenCV, which `appliance run` must not pay for)."""
    for name, (_module, summary) in table.items():
        if name != wanted:
            sub.add_parser(name, help=summary, description=summary, add_help=False)
            continue
        mod = _plugin(table, name)
        if mod is None:
            p = sub.add_parser(name, help=summary, description=summary)
            p.set_defaults(func=lambda _a, n=name: _unavailable(n))
            continue
        p = sub.add_parser(name, help=summary, description=(mod.__doc__ or summary))
        mod.configure_parser(p)
        p.set_defaults(func=mod.run)


def _unavailable(name: str) -> int:
    print(f"appliance: {name} is not available in this build", file=sys.stderr)
    return EXIT_FAILURE


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance",
        description="Daemon of a CCCD self-service enrollment kiosk: drives the portrait camera, "
        "the fingerprint sensor and the chip encoder, and talks MQTT to the fleet.",
        epilog="Exit status: 0 ok, 1 failure, 2 invalid configuration or usage.",
    )
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    words = [w for w in (sys.argv[1:] if argv is None else argv) if not w.startswith("-")]

    p = sub.add_parser(
        "run",
        help="run the daemon in the foreground (as systemd does)",
        description="Run the daemon until SIGTERM. Under systemd it reports "
        "READY=1, STATUS= and watchdog pings on NOTIFY_SOCKET.",
    )
    _add_common(p)
    p.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="override logging.level from the configuration",
    )
    p.add_argument(
        "--dev",
        action="store_true",
        help="development run without a configuration file: built-in defaults, the simulated "
        "kit, unsigned commands accepted (without --dev a missing configuration file is an "
        "error, exit 2)",
    )
    p.set_defaults(func=cmd_run)

    pc = sub.add_parser("config", help="check or show configuration")
    csub = pc.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    p = csub.add_parser(
        "check",
        help="validate configuration files",
        description="Validate each FILE with its hardware profile and the "
        "APPLIANCE_<SECTION>__<KEY> environment overrides, as the daemon would load it. Prints "
        "every problem as 'path.to.field: reason' (naming the variable when an override set "
        "it) and exits 2 if any file is invalid.",
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument(
        "--no-env",
        action="store_true",
        help="check the files alone, without the APPLIANCE_* environment overrides",
    )
    p.set_defaults(func=cmd_config_check)
    p = csub.add_parser(
        "show",
        help="print the effective configuration as JSON",
        description="Print the configuration after all layers (defaults, "
        "profile, file, APPLIANCE_* environment) as JSON.",
    )
    _add_common(p)
    p.set_defaults(func=cmd_config_show)
    p = csub.add_parser(
        "reference",
        help="print every configuration key as Markdown",
        description="Print the reference of every section and key with its "
        "type, default and meaning (docs/configuration.md is this output).",
    )
    p.set_defaults(func=cmd_config_reference)

    p = sub.add_parser(
        "status",
        help="show this kiosk's local and broker-side status",
        description="Read the local store (outbox depth, schema, recent audit) "
        "and the retained status message the daemon keeps on the broker.",
    )
    _add_common(p)
    p.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        help="seconds to wait for the broker's retained status (default %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "schemas",
        help="write or check the JSON Schemas of the protocol",
        description="Generate JSON Schema files for every command's arguments "
        "and the protocol's messages from the pydantic models.",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("docs/schemas"),
        help="output directory (default %(default)s)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if the files in --out differ from what would be generated",
    )
    p.set_defaults(func=cmd_schemas)

    p = sub.add_parser(
        "demo",
        help="run the kiosk on the simulated kit with a local broker",
        description="Start a private mosquitto on loopback and the daemon on "
        "the simulated hardware kit, exercise it as the fleet would, print a "
        "summary and how to watch and command it. Runs until Ctrl-C.",
    )
    from .devtools import demo

    demo.configure_parser(p)
    p.set_defaults(func=demo.run)

    _add_plugins(sub, TOP_LEVEL, words[0] if words else None)

    ps = sub.add_parser("sim", help="hardware simulators speaking the real wire protocols")
    ssub = ps.add_subparsers(dest="sim_command", required=True, metavar="DEVICE")
    _add_plugins(ssub, SIMULATORS, _selected(words, "sim"))

    pf = sub.add_parser("fleet", help="tools for fleet administrators")
    fsub = pf.add_subparsers(dest="fleet_command", required=True, metavar="TOOL")
    _add_plugins(fsub, FLEET_TOOLS, _selected(words, "fleet"))
    return parser


def _selected(words: list[str], group: str) -> str | None:
    """The word after ``group`` in the command line, if ``group`` is the sub-command."""
    positional = [w for w in words if not w.startswith("-")]
    if len(positional) >= 2 and positional[0] == group:
        return positional[1]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except ApplianceError as exc:
        print(f"appliance: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE
    return rc


if __name__ == "__main__":
    sys.exit(main())
