"""``appliance fleet serve``: the fleet service (docs/fleet-service.md).

Ingests status, heartbeats, events and configuration reports of every kiosk into a database
(MQTT 5 shared subscriptions: start several instances with the same ``--share`` group and a
distinct ``--instance`` each), raises alarms, and serves the dashboard and the API on
127.0.0.1 unless ``--bind`` says otherwise (put a TLS-terminating proxy in front: the session
cookie is ``Secure``).

Administrators::

    APPLIANCE_FLEET_PASSWORD=... appliance fleet serve --add-user alice --role operator
    appliance fleet serve --issue-token alice     # bearer token for the API and /metrics
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import ApplianceError
from ..fleet.conn import BrokerOptions, FleetMqtt, add_broker_args, add_home_arg, broker_options
from ..fleet.tools import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_signer_arg, load_signer, registry
from ..protocol.codes import ErrorCode
from .auth import ROLES, add_user, issue_token
from .db import FleetDB
from .ingest import AlarmEvaluator, ServiceIngest


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_home_arg(p)
    p.add_argument(
        "--db",
        metavar="URL",
        help="database: sqlite:///PATH (default <home>/fleet.db) or postgresql://USER@HOST/DB "
        "(default $APPLIANCE_FLEET_DB)",
    )
    p.add_argument("--bind", default="127.0.0.1", help="address to serve on (%(default)s)")
    p.add_argument("--http-port", type=int, default=8080, help="port to serve on (%(default)s)")
    p.add_argument(
        "--share",
        default="fleet-service",
        metavar="GROUP",
        help="shared-subscription group of the instances (%(default)s)",
    )
    p.add_argument("--instance", metavar="NAME", help="this instance's persistent session name")
    p.add_argument(
        "--lost-after",
        type=float,
        default=300.0,
        metavar="S",
        help="alarm when a kiosk is lost or silent this long (%(default)s s)",
    )
    p.add_argument(
        "--outbox-limit",
        type=int,
        default=100,
        metavar="N",
        help="alarm when a kiosk's outbox holds more (%(default)s)",
    )
    p.add_argument(
        "--no-ingest",
        action="store_true",
        help="serve the dashboard, API and alarms from the database without ingesting (a web "
        "instance beside ingesting ones: the pages do not compete with the ingest)",
    )
    add_signer_arg(p, "operator")
    g = p.add_argument_group("administration (then exit)")
    g.add_argument(
        "--add-user",
        metavar="NAME",
        help="create or reset an administrator; password from $APPLIANCE_FLEET_PASSWORD or "
        "asked; prints the TOTP secret",
    )
    g.add_argument("--role", choices=ROLES, default="viewer")
    g.add_argument("--issue-token", metavar="NAME", help="print a new API token for NAME")
    g.add_argument("--migrate", action="store_true", help="apply the migrations and exit")
    add_broker_args(p)


def db_url(args: argparse.Namespace) -> str:
    if args.db:
        return str(args.db)
    env = os.environ.get("APPLIANCE_FLEET_DB")
    if env:
        return env
    from ..fleet.conn import home_of

    home = home_of(args)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return f"sqlite:///{home / 'fleet.db'}"


@dataclass
class FleetService:
    """Ingest, alarms, command publisher and web app of one instance (tests start it too)."""

    db: FleetDB
    opts: BrokerOptions
    keys: dict[str, bytes]
    share_group: str | None = "fleet-service"
    instance: str | None = None
    lost_after_s: float = 300.0
    outbox_limit: int = 100
    alarm_interval_s: float = 1.0
    signer: Any = None  # OperatorKey
    ingesting: bool = True
    ingest: ServiceIngest | None = field(default=None, init=False)
    alarms: AlarmEvaluator | None = field(default=None, init=False)
    mqtt: FleetMqtt | None = field(default=None, init=False)
    replies: Any = field(default=None, init=False)  # web.ReplyCollector

    def start(self) -> FleetService:
        from .web import Commander, ReplyCollector, create_app

        self.db.migrate()
        if self.ingesting:
            self.ingest = ServiceIngest(
                self.db, self.opts, self.keys, share_group=self.share_group, instance=self.instance
            ).start()
        self.alarms = AlarmEvaluator(
            self.db,
            lost_after_s=self.lost_after_s,
            outbox_limit=self.outbox_limit,
            interval_s=self.alarm_interval_s,
        ).start()
        self.mqtt = FleetMqtt(self.opts).connect()
        self.replies = ReplyCollector(
            self.db, self.mqtt, self.opts.prefix, self.keys, self.share_group
        ).start()
        self.app = create_app(
            self.db,
            commander=Commander(self.mqtt, self.opts.prefix, self.signer),
            ingest=self.ingest,
            alarms=self.alarms,
            lost_after_s=self.lost_after_s,
        )
        return self

    def stop(self) -> None:
        for part in (self.ingest, self.alarms, self.mqtt):
            if part is not None:
                part.stop() if not isinstance(part, FleetMqtt) else part.close()


class WebServer:
    """uvicorn in a thread (tests, benchmarks)."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        import uvicorn

        self.server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, name="fleetsvc-web", daemon=True)

    def start(self, timeout: float = 15.0) -> WebServer:
        self.thread.start()
        ev = threading.Event()
        while not self.server.started and self.thread.is_alive() and not ev.wait(0.05):
            timeout -= 0.05
            if timeout <= 0:
                raise ApplianceError("the web server did not start", code=ErrorCode.DEVICE_TIMEOUT)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def administer(args: argparse.Namespace, db: FleetDB) -> int:
    """``--migrate``, ``--add-user``, ``--issue-token``."""
    if args.add_user:
        pw = os.environ.get("APPLIANCE_FLEET_PASSWORD") or getpass.getpass("password: ")
        secret = add_user(db, args.add_user, args.role, pw)
        db.audit("cli", "user.add", args.add_user, role=args.role)
        print(f"{args.add_user} ({args.role}) TOTP secret: {secret}")
    elif args.issue_token:
        token = issue_token(db, args.issue_token)
        db.audit("cli", "token.issue", args.issue_token)
        print(token)
    else:
        print(f"schema version {db.schema_version()}")
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    svc: FleetService | None = None
    try:
        db = FleetDB(db_url(args))
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    try:
        db.migrate()
        if args.migrate or args.add_user or args.issue_token:
            return administer(args, db)
        reg = registry(args)
        db.sync_registry([(r.device_id, r.site, r.groups) for r in reg.devices()], time.time())
        try:
            signer = load_signer(args, "operator")
        except ApplianceError as exc:
            print(f"warning: commands disabled: {exc.message}", file=sys.stderr)
            signer = None
        svc = FleetService(
            db,
            broker_options(args),
            reg.device_keys(),
            share_group=args.share or None,
            instance=args.instance,
            lost_after_s=args.lost_after,
            outbox_limit=args.outbox_limit,
            signer=signer,
            ingesting=not args.no_ingest,
        ).start()
        import uvicorn

        print(f"fleet service on http://{args.bind}:{args.http_port}", file=sys.stderr, flush=True)
        uvicorn.run(svc.app, host=args.bind, port=args.http_port, log_level="warning")
    except ApplianceError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return EXIT_USAGE if exc.code == ErrorCode.USAGE else EXIT_FAILED
    finally:
        if svc is not None:
            svc.stop()
        db.close()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance fleet serve")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
