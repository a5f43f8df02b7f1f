"""The daemon: wires configuration, store, devices, commands and the MQTT agent together.

Threads: ``mqtt-net`` (paho's network loop and our reconnect supervisor), ``outbox`` (drain),
``cmd-*`` (command handlers), device threads (hot-plug, card monitor), and the main thread,
which sends heartbeats, pings the systemd watchdog while the others are healthy, and waits for
SIGTERM.
"""

from __future__ import annotations

import importlib
import json
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import __version__, builtin, telemetry
from .agent.mqtt import MqttAgent
from .capabilities.kit import Capabilities
from .commands import CommandRegistry
from .config import AppConfig
from .configpush import ConfigPush, Startup
from .devices import Device, DeviceHealth, HealthState
from .dispatch import Dispatcher
from .drivers import create_device
from .errors import ApplianceError, TrustError
from .inbound import Incoming, Verified, Verifier
from .protocol.codes import ErrorCode
from .protocol.messages import EventMessage, StatusMessage
from .protocol.topics import Topics
from .sdnotify import Notifier
from .store import Store
from .timekeeping import Clock
from .trust.certs import ROLES
from .trust.keys import DeviceIdentity
from .update.topics import JOB_REPLY

if TYPE_CHECKING:
    from .citizen.lookup import LookupClient
    from .enrollment.session import EnrollmentManager
    from .enrollment.upload import Uploader
    from .station.issuance import IssuanceClient
    from .update.agent import JobAgent

log = logging.getLogger(__name__)

CAPABILITIES = ("camera", "fingerprint", "card")


class _FailedDevice:
    """Stands in for a device whose backend could not even be created (bad extra, bad config):
    the daemon keeps serving everything else and reports why in status."""

    def __init__(self, kind: str, backend: str, reason: str, state: HealthState = "error") -> None:
        self.kind = kind
        self._health = DeviceHealth(state=state, backend=backend, detail=reason)

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def health(self) -> DeviceHealth:
        return self._health


def build_outbox_ack_verifier(cfg: AppConfig) -> Callable[[bytes], list[tuple[int, int, str]]]:
    """Checks the ingest's outbox acknowledgements (``mqtt.delivery = "end_to_end"``): signed by
    an ``ingest`` certificate of the fleet root; unsigned only in development mode."""
    from .trust.keys import load_public_key
    from .trust.outboxack import verify_outbox_ack

    roots = [load_public_key(p) for p in cfg.trust.root_keys]
    if cfg.mqtt.delivery == "end_to_end" and not roots and not cfg.commands.allow_unsigned:
        log.warning(
            "mqtt.delivery is end_to_end but this kiosk has no fleet root key: every outbox "
            "acknowledgement will be refused and the outbox will grow until it is provisioned"
        )

    def verify(payload: bytes) -> list[tuple[int, int, str]]:
        _issuer, ranges = verify_outbox_ack(
            payload,
            roots,
            device_id=cfg.device.id,
            now=time.time(),
            revoked=cfg.trust.revoked_keys,
            allow_unsigned=cfg.commands.allow_unsigned,
        )
        return ranges

    return verify


def build_verifier(cfg: AppConfig, store: Store, registry: CommandRegistry) -> Verifier | None:
    """The dispatcher's trust hook (docs/trust.md): signed envelopes checked against the fleet
    root keys; unsigned requests accepted only with ``commands.allow_unsigned``."""
    from .trust.adapter import make_dispatch_verifier
    from .trust.envelope import ClockPolicy, CommandVerifier, ensure_replay_schema
    from .trust.keys import load_public_key

    # The trust layer's tables in the daemon's store (the store itself knows no feature).
    ensure_replay_schema(store.conn, store.lock)
    roots = [load_public_key(p) for p in cfg.trust.root_keys]
    if not roots:
        if cfg.commands.allow_unsigned:
            log.warning("no fleet root key: accepting unsigned commands only (development)")
            return None

        def refuse(_msg: Incoming) -> Verified:
            raise TrustError(
                "this kiosk has no fleet root key and refuses every command: provision it "
                "(appliance provision) or set commands.allow_unsigned for development",
                code=ErrorCode.UNTRUSTED_ISSUER,
            )

        return refuse
    verifier = CommandVerifier(
        roots=roots,
        device_id=cfg.device.id,
        groups=cfg.device.groups,
        role_table=registry.roles(),
        conn=store.conn,
        lock=store.lock,
        policy=ClockPolicy(skew_s=cfg.trust.skew_s, max_lifetime_s=cfg.trust.max_lifetime_s),
        allow_unsigned=cfg.commands.allow_unsigned,
        max_message_bytes=cfg.commands.max_payload_bytes,
        revoked=cfg.trust.revoked_keys,
    )
    # The dispatcher writes one audit row per message, with the decision's record in it; the
    # command store's lookup answers a re-delivered command with its stored first reply.
    return make_dispatch_verifier(verifier, lookup=store.commands.lookup)


class Services:
    """The daemon's shared state and views: configuration, store, devices and the capability
    services over them, events, status and diagnostics. Command handlers never reach it through
    their context: each gets what it needs, typed, when it is registered (``builtin`` gets
    this object as its :class:`~appliance.builtin.Core`)."""

    def __init__(self, config: AppConfig, store: Store, state_dir: Path) -> None:
        self.config = config
        self.store = store
        self.state_dir = state_dir
        self.topics = Topics(config.mqtt.topic_prefix, config.device.id)
        self.devices: dict[str, Device] = {}
        self.capabilities = Capabilities()
        self.agent: MqttAgent | None = None
        self.dispatcher: Dispatcher | None = None
        self.started = time.time()
        self.session_active: Callable[[], bool] = lambda: False
        self.identity: DeviceIdentity | None = None

    # -- events -----------------------------------------------------------------------------

    def emit(
        self, type_: str, data: dict[str, Any], *, durable: bool = True
    ) -> tuple[int, str] | None:
        """Send an event. Durable events go through the outbox and are on disk when this
        returns (their (seq, id) is returned); transient ones (progress for the kiosk screen)
        are published now at QoS 0 or dropped when offline."""
        stored: tuple[int, str] | None = None
        if durable:
            stored = self.store.outbox.put(type_, self.topics.event(type_), data)
            if self.agent is not None:
                self.agent.kick()
        elif self.agent is not None:
            event = EventMessage(
                id=uuid.uuid4().hex,
                device=self.config.device.id,
                type=type_,
                ts=time.time(),
                data=data,
            )
            self.agent.publish(self.topics.event(type_), event.to_json(), qos=0)
        if type_ == "device.health":
            self.publish_status()
        return stored

    def publish_status(self) -> None:
        if self.agent is not None and self.agent.connected:
            status = StatusMessage(
                online=True, device=self.config.device.id, ts=time.time(), **self.birth()
            )
            self.agent.publish(self.topics.status, status.to_json(), qos=1, retain=True)

    # -- views ------------------------------------------------------------------------------

    def device_health(self) -> dict[str, Any]:
        return {k: d.health().model_dump(mode="json") for k, d in self.devices.items()}

    def birth(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "profile": self.config.device.profile,
            "site": self.config.device.site,
            "groups": self.config.device.groups,
            "devices": {k: d.health().state for k, d in self.devices.items()},
            "outbox_depth": self.store.outbox.depth(),
        }

    def status(self) -> dict[str, Any]:
        agent = self.agent
        return {
            "device": self.config.device.id,
            "online": bool(agent and agent.connected),
            "broker": agent.broker.name if agent and agent.connected else None,
            "version": __version__,
            "profile": self.config.device.profile,
            "site": self.config.device.site,
            "uptime_s": round(time.time() - self.started, 3),
            "outbox_depth": self.store.outbox.depth(),
            "session_active": self.session_active(),
            "devices": self.device_health(),
        }

    def diagnostics(self) -> dict[str, Any]:
        agent = self.agent
        disp = self.dispatcher
        return {
            "uptime_s": round(time.time() - self.started, 3),
            "outbox_depth": self.store.outbox.depth(),
            "outbox_last_seq": self.store.outbox.last_seq(),
            "store": {
                "path": str(self.store.path),
                "bytes": self.store.size_bytes(),
                "schema_version": self.store.schema_version,
            },
            "mqtt": {
                "connected": bool(agent and agent.connected),
                "connects": agent.connects if agent else 0,
                "last_error": agent.last_error if agent else None,
                "events_published": agent.published_events if agent else 0,
                "delivery": self.config.mqtt.delivery,
                "events_acknowledged_end_to_end": agent.acked_events if agent else 0,
                "outbox_acks_refused": agent.refused_acks if agent else 0,
                # the broker of the current connection (or of the next attempt) of mqtt.brokers
                "broker": agent.broker.name if agent else self.config.mqtt.endpoints()[0].name,
                "protocol": self.config.mqtt.protocol,
            },
            "commands": {
                "executed": disp.executed if disp else 0,
                "rejected": disp.rejected if disp else 0,
            },
            "devices": self.device_health(),
            "system": telemetry.snapshot(self.state_dir),
        }


class Daemon:
    def __init__(
        self,
        config: AppConfig,
        state_dir: Path,
        notifier: Notifier | None = None,
        *,
        config_path: Path | None = None,
        startup: Startup | None = None,
    ) -> None:
        self.config = config
        self.state_dir = state_dir
        self.config_path = config_path
        self.startup = startup or Startup(None, None, None)
        self.restart_reason: str | None = None
        self.configpush: ConfigPush | None = None
        self._trial_deadline: float | None = None
        self.uploader: Uploader | None = None
        self.card_issuance: IssuanceClient | None = None  # the station's card requests
        self.notifier = notifier or Notifier()
        self._stop = threading.Event()
        self._state = "starting"
        self.store: Store | None = None
        self.services: Services | None = None
        self.enrollment: EnrollmentManager | None = None
        self.lookup: LookupClient | None = None
        # The kiosk's trusted time (docs/enrollment.md "Time"): packages record its source.
        self.clock: Clock | None = None
        self._cleanups: list[Callable[[], None]] = []
        self.jobs: JobAgent | None = None  # when installed side by side (docs/updates.md)
        self.exit_status = 0  # 75: started again through the update guard (systemd unit)

    # -- lifecycle ----------------------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def _signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        self._stop.set()

    def run(self) -> int:
        """Run until SIGTERM/SIGINT. Returns the process exit status."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._signal)
            signal.signal(signal.SIGINT, self._signal)
        try:
            self._start()
            self._loop()
        finally:
            self._shutdown()
        return self.exit_status

    def _start(self) -> None:
        cfg = self.config
        t0 = time.monotonic()
        self.store = store = Store(self.state_dir, synchronous=cfg.store.synchronous)
        store.outbox.set_cap(cfg.store.outbox_max_rows)
        store.commands.prune(cfg.store.command_history_days * 86400)
        self.services = svc = Services(cfg, store, self.state_dir)
        self._start_simulators()
        registry = CommandRegistry()
        builtin.register(registry, svc)
        self._start_devices(registry)
        identity = DeviceIdentity.load_or_create(self.state_dir)
        svc.identity = identity
        signer = (lambda body: identity.sign(body).to_header()) if cfg.trust.sign_messages else None
        if cfg.mqtt.protocol == "5":  # 3.1.1 carries no properties, so no signature
            store.outbox.set_signer(cfg.device.id, signer)
        agent_box: list[MqttAgent] = []

        def publish(
            topic: str, body: bytes, *, qos: int = 1, correlation_data: bytes | None = None
        ) -> bool:
            if self.jobs is not None and topic == JOB_REPLY:  # a command job's reply
                self.jobs.on_command_reply(body, correlation_data)
                return True
            return agent_box[0].publish(topic, body, qos=qos, correlation_data=correlation_data)

        base_verifier = build_verifier(cfg, store, registry)

        def verifier(msg: Incoming) -> Verified:
            local: Verified | None = self.jobs.verify_local(msg) if self.jobs else None
            if local is not None:  # a command job's command, its document verified before
                return local
            return base_verifier(msg) if base_verifier else Verified(msg.payload, roles=ROLES)

        dispatcher = Dispatcher(
            registry,
            store,
            publish,
            svc.topics.reply,
            emit=svc.emit,
            max_payload=cfg.commands.max_payload_bytes,
            workers=cfg.commands.workers,
            verifier=verifier,
            session_active=lambda: svc.session_active(),  # noqa: PLW0108 - late-bound on purpose
        )
        svc.dispatcher = dispatcher
        self.configpush = ConfigPush(
            config=cfg,
            config_path=self.config_path,
            state_dir=self.state_dir,
            store=store,
            startup=self.startup,
            publish_reported=self._publish_reported,
            request_restart=self.request_restart,
            session_active=lambda: svc.session_active(),  # noqa: PLW0108 - late-bound
        )
        self._config_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="config")
        if self.startup.trial is not None:
            self._trial_deadline = time.monotonic() + cfg.config_push.trial_timeout_s
        interrupted = dispatcher.mark_interrupted()
        if interrupted:
            log.warning("%d command(s) were interrupted by the last stop", interrupted)
        self._start_enrollment(registry, identity)
        self._start_lookup(registry)
        self._start_updates(svc)
        if cfg.station.enabled:  # the kiosk station: local flow, API and screen (docs/local-api.md)
            from .station.service import start as start_station

            try:
                assert self.enrollment is not None
                stop_station = start_station(
                    cfg.station,
                    store=store,
                    emit=svc.emit,
                    manager=self.enrollment,
                    lookup=self.lookup,
                    state_dir=self.state_dir,
                    cards=lambda: svc.capabilities.cards,
                    issuance=self._card_issuance(),
                    instant_issuance=cfg.enrollment.instant_issuance,
                )
                self._cleanups.append(stop_station)
            except (ApplianceError, ImportError, OSError) as exc:
                log.error("station not started: %s", getattr(exc, "message", exc))
        agent = MqttAgent(
            cfg,
            store,
            on_message=self._route,
            birth=svc.birth,
            on_state=self._on_mqtt_state,
            signer=signer,
            extra_subscriptions=[
                svc.topics.upload_ack,
                svc.topics.upload_receipt,
                svc.topics.lookup_response,
                *([self.card_issuance.subscription] if self.card_issuance else []),
                *(self.jobs.subscriptions() if self.jobs else []),
            ],
            ack_verifier=build_outbox_ack_verifier(cfg),
        )
        agent_box.append(agent)
        svc.agent = agent
        agent.start()
        if self.uploader is not None:
            self.uploader.start()
        store.audit("daemon", "start", "ok", version=__version__, profile=cfg.device.profile)
        # READY once we serve: connected, or running offline with the outbox. A short wait
        # lets the first status say "connected" in the common case without delaying start-up.
        agent.wait_connected(1.0)
        state = "connected" if agent.connected else "offline"
        self._state = state
        self.notifier.ready(self._status_line())
        log.info(
            "appliance %s ready (%s) in %.0f ms; device %s, profile %s",
            __version__,
            state,
            (time.monotonic() - t0) * 1000,
            cfg.device.id,
            cfg.device.profile,
        )

    def _route(self, msg: Incoming) -> bool:
        """Route one message (on the MQTT network thread). True: the message went to the
        dispatcher, which acknowledges it to the broker once admitted (``Incoming.ack``);
        anything else is acknowledged by the agent when this returns."""
        svc = self.services
        assert svc is not None and svc.dispatcher is not None
        if msg.topic in (svc.topics.upload_ack, svc.topics.upload_receipt):
            if self.uploader is not None:
                self.uploader.on_message(msg.topic, msg.payload)
            return False
        if msg.topic == svc.topics.lookup_response:
            lookup = self.lookup
            if lookup is not None:
                lookup.on_message(msg.topic, msg.payload)
            return False
        if msg.topic == svc.topics.card_issuance:
            if self.card_issuance is not None:
                self.card_issuance.on_message(msg.topic, msg.payload)
            return False
        if self.jobs is not None and msg.topic in self.jobs.subscriptions():
            self._config_worker.submit(self._guarded_msg, self.jobs.on_message, msg)
            return False
        if msg.topic == svc.topics.config_desired:
            push = self.configpush
            if push is not None:
                self._config_worker.submit(self._guarded, push.on_document, msg.payload)
            return False
        # Only queued here (this is the MQTT network thread): verification, admission and
        # read-only commands run on the dispatcher's inbound thread (docs/architecture.md 4).
        svc.dispatcher.submit(msg)
        return True

    def _start_updates(self, svc: Services) -> None:
        """Software updates and fleet jobs (docs/updates.md), when this daemon runs from a
        side-by-side installation (``<root>/releases/<version>``)."""
        from .trust.keys import load_public_key
        from .update.agent import EXIT_RESTART, JobAgent, install_root
        from .update.installer import Updater

        root, cfg = install_root(), self.config
        if root is None or not cfg.trust.root_keys:
            log.info("software updates off: not installed side by side, or no fleet root key")
            return

        def restart(reason: str) -> None:
            self.exit_status = EXIT_RESTART
            self.request_stop()
            log.info("restarting through the update guard: %s", reason)

        argv = ["selftest", "--state-dir", str(self.state_dir)]
        updater = Updater(
            root,
            self.state_dir,
            roots=[load_public_key(p) for p in cfg.trust.root_keys],
            selftest_args=[*argv, "--config", str(self.config_path)] if self.config_path else argv,
            session_active=lambda: svc.session_active(),  # noqa: PLW0108 - late-bound
        )
        self.jobs = JobAgent(
            device=cfg.device.id,
            prefix=cfg.mqtt.topic_prefix,
            roots=updater.roots,
            updater=updater,
            publish=lambda t, b, r: bool(svc.agent and svc.agent.publish(t, b, retain=r)),
            session_active=lambda: svc.session_active(),  # noqa: PLW0108 - late-bound
            request_restart=restart,
            trial_timeout_s=cfg.config_push.trial_timeout_s,
            apply_config=lambda doc: self.configpush.on_document(doc) if self.configpush else None,
            dispatch=lambda msg: svc.dispatcher.handle(msg) if svc.dispatcher else None,
            config_outcome=lambda: (
                json.loads(self.store.kv_get("config.reported") or "null") if self.store else None
            ),
        )

    def _guarded_msg(self, fn: Callable[[str, bytes], None], msg: Incoming) -> None:
        try:
            fn(msg.topic, msg.payload)
        except Exception:
            log.exception("update job handler failed")

    def _start_enrollment(self, registry: CommandRegistry, identity: DeviceIdentity) -> None:
        """The session manager and the upload queue (docs/enrollment.md)."""
        from .enrollment.session import EnrollmentManager
        from .enrollment.session import register as register_enrollment
        from .enrollment.upload import Uploader
        from .trust.keys import load_public_key
        from .trust.sealed import load_enrollment_public_key

        svc = self.services
        assert svc is not None and self.store is not None
        cfg = self.config
        self.clock = self.clock or Clock(self.state_dir)
        key = None
        if cfg.trust.enrollment_key is not None:
            try:
                key = load_enrollment_public_key(cfg.trust.enrollment_key)
            except ApplianceError as exc:
                log.error("enrollment key unusable, enrollment disabled: %s", exc.message)
        manager = EnrollmentManager(
            store=self.store,
            state_dir=self.state_dir,
            device_id=cfg.device.id,
            identity=identity,
            portraits=svc.capabilities.portraits,
            fingers=svc.capabilities.fingers,
            enrollment_key=key,
            emit=svc.emit,
            resume_s=cfg.enrollment.resume_s,
            instant_issuance=cfg.enrollment.instant_issuance,
            on_package=lambda _pid: self._kick_uploader(),
        )
        from .enrollment.space import worst_case

        manager.clock = self.clock
        cam = cfg.hardware.camera
        manager.space_estimate = worst_case(width=cam.width, height=cam.height)
        register_enrollment(registry, manager)
        svc.session_active = manager.is_active
        self.enrollment = manager
        manager.recover()

        def connected() -> int:
            agent = svc.agent
            return agent.connects if agent is not None and agent.connected else 0

        def publish(topic: str, body: bytes, *, qos: int = 1) -> bool:
            agent = svc.agent
            return bool(agent and agent.publish(topic, body, qos=qos))

        self.uploader = Uploader(
            store=self.store,
            topics=svc.topics,
            publish=publish,
            connected=connected,
            sealed=manager.sealed,
            roots=[load_public_key(p) for p in cfg.trust.root_keys],
            revoked=list(cfg.trust.revoked_keys),
            emit=svc.emit,
            chunk_bytes=cfg.enrollment.chunk_bytes,
            window=cfg.enrollment.upload_window,
            chunk_timeout_s=cfg.enrollment.chunk_timeout_s,
            now=self.clock.now,
        )

    def _start_lookup(self, registry: CommandRegistry) -> None:
        """Citizen lookup against the central directory (``citizen.lookup``)."""
        from .citizen.lookup import LookupClient
        from .citizen.lookup import register as register_lookup
        from .trust.keys import load_public_key

        svc = self.services
        assert svc is not None
        cfg = self.config

        def publish(topic: str, body: bytes, response_topic: str, correlation: bytes) -> bool:
            agent = svc.agent
            return bool(
                agent
                and agent.publish(
                    topic, body, qos=1, response_topic=response_topic, correlation_data=correlation
                )
            )

        from .citizen.batch import CitizenBatch
        from .timekeeping import MAX_ROUND_TRIP_S

        clock = self.clock = self.clock or Clock(self.state_dir)

        def signed_time(t: float, round_trip_s: float) -> None:
            # a lookup answer (bound to its nonce) may anchor; a batch only raises the floor
            clock.observe_signed(
                t, bound=round_trip_s <= MAX_ROUND_TRIP_S, round_trip_s=round_trip_s
            )

        client = LookupClient(
            prefix=cfg.mqtt.topic_prefix,
            device_id=cfg.device.id,
            publish=publish,
            roots=[load_public_key(p) for p in cfg.trust.root_keys],
            revoked=list(cfg.trust.revoked_keys),
            allow_unsigned=cfg.commands.allow_unsigned,
            on_signed_time=signed_time,
            now=clock.now,
            batch=CitizenBatch(self.state_dir, now=clock.now),
        )
        register_lookup(registry, client)
        self.lookup = client
        manager = self.enrollment
        if manager is not None:
            manager.looked_up = client.looked_up

    def _card_issuance(self) -> IssuanceClient | None:
        """The station's client for the centre's issuance packages (docs/local-api.md "Card
        issuance"), when the kiosk issues cards on the spot and has a card encoder."""
        cfg = self.config
        svc = self.services
        assert svc is not None
        if not (cfg.enrollment.instant_issuance and cfg.hardware.card.enabled):
            return None
        from .station.issuance import IssuanceClient
        from .trust.keys import load_public_key

        def publish(topic: str, body: bytes) -> bool:
            agent = svc.agent
            return bool(agent and agent.publish(topic, body, qos=1))

        clock = self.clock
        self.card_issuance = IssuanceClient(
            topics=svc.topics,
            publish=publish,
            roots=[load_public_key(p) for p in cfg.trust.root_keys],
            revoked=list(cfg.trust.revoked_keys),
            now=clock.now if clock is not None else time.time,
        )
        return self.card_issuance

    def _kick_uploader(self) -> None:
        if self.uploader is not None:
            self.uploader.kick()

    def _start_simulators(self) -> None:
        """Emulators of the simulated kit (see appliance/simulation.py)."""
        sim = self.config.simulation
        if not (sim.fingerprint or sim.card):
            return
        simulation = importlib.import_module("appliance.simulation")
        self.config, cleanups = simulation.start(self.config, self.state_dir)
        assert self.services is not None
        self.services.config = self.config
        self._cleanups.extend(cleanups)

    def _start_devices(self, registry: CommandRegistry) -> None:
        svc = self.services
        assert svc is not None
        hw = self.config.hardware
        for kind in CAPABILITIES:
            section = getattr(hw, kind)
            if not section.enabled:
                svc.devices[kind] = _FailedDevice(
                    kind, section.backend, "disabled in the configuration", state="disabled"
                )
                continue
            if kind == "fingerprint" and section.link_state_file is None:
                # The negotiated sensor rate outlives restarts (no probing when it is known).
                section = section.model_copy(
                    update={"link_state_file": str(self.state_dir / "fingerprint-link.json")}
                )
            try:
                dev = create_device(kind, section.backend, section, svc.emit)
            except (ApplianceError, ImportError) as exc:
                reason = exc.message if isinstance(exc, ApplianceError) else str(exc)
                log.error("%s: backend %s unavailable: %s", kind, section.backend, reason)
                svc.devices[kind] = _FailedDevice(kind, section.backend, reason)
                continue
            svc.devices[kind] = dev
            try:
                dev.start()
            except ApplianceError as exc:
                log.error("%s: start failed: %s", kind, exc.message)
            self._register_capability(kind, dev, registry)

    def _register_capability(self, kind: str, dev: Device, registry: CommandRegistry) -> None:
        """The capability service over ``dev`` and its MQTT adapters (docs/architecture.md,
        "Capability services"). Device libraries load here, with the first working device."""
        svc = self.services
        assert svc is not None
        caps = svc.capabilities
        if kind == "camera":
            from .capabilities.portrait import PortraitCapture
            from .drivers.camera import commands as camera_commands
            from .drivers.camera.interface import Camera

            assert isinstance(dev, Camera)
            caps.portraits = PortraitCapture(dev)
            camera_commands.register(
                registry,
                dev,
                capture=caps.portraits,
                enrollment_active=lambda: svc.session_active(),  # noqa: PLW0108 - late-bound
            )
        elif kind == "fingerprint":
            from .capabilities.finger import FingerCapture
            from .drivers.fingerprint import commands as fingerprint_commands
            from .drivers.fingerprint.interface import FingerprintScanner

            assert isinstance(dev, FingerprintScanner)
            caps.fingers = FingerCapture(dev)
            fingerprint_commands.register(registry, dev, capture=caps.fingers)
        elif kind == "card":
            from .capabilities.card import CardIssuer
            from .drivers.card import commands as card_commands
            from .drivers.card.interface import CardEncoder

            assert isinstance(dev, CardEncoder)
            caps.cards = CardIssuer(dev)
            card_commands.register(registry, dev, issuer=caps.cards)

    @staticmethod
    def _guarded(fn: Callable[[bytes], None], payload: bytes) -> None:
        try:
            fn(payload)
        except Exception:
            log.exception("desired configuration handler failed")

    def request_restart(self, reason: str) -> None:
        """Stop, then re-execute (``appliance run`` does the exec): used to apply or roll back
        a configuration atomically."""
        log.info("restart requested: %s", reason)
        self.restart_reason = reason
        self._stop.set()

    def _publish_reported(self, body: dict[str, Any]) -> None:
        svc = self.services
        if svc is not None and svc.agent is not None:
            svc.agent.publish(svc.topics.config_reported, json.dumps(body), qos=1, retain=True)

    def _on_mqtt_state(self, state: str) -> None:
        self._state = state
        self.notifier.status(self._status_line())
        if state == "connected":
            self._kick_uploader()
        if state == "connected" and self.configpush is not None:
            self.configpush.republish()

    def _status_line(self) -> str:
        svc = self.services
        depth = svc.store.outbox.depth() if svc else 0
        devices = (
            ", ".join(f"{k} {v.health().state}" for k, v in svc.devices.items()) if svc else ""
        )
        return f"{self._state}; outbox {depth}; {devices}"

    def _healthy(self) -> bool:
        svc = self.services
        if svc is None or svc.agent is None or self.store is None:
            return False
        agent = svc.agent
        for t in (agent._net_thread, agent._drain_thread):
            if t is None or not t.is_alive():
                log.error("thread %s died", t.name if t else "?")
                return False
        try:
            self.store.conn.execute("SELECT 1").fetchone()
        except Exception:
            log.exception("store unresponsive")
            return False
        return True

    def _loop(self) -> None:
        svc = self.services
        assert svc is not None
        hb_every = self.config.telemetry.heartbeat_s
        next_hb = time.monotonic()
        wd = self.notifier.watchdog_interval
        next_wd = time.monotonic()
        if self.configpush is not None:
            self.configpush.after_start()
        if self.jobs is not None:
            self.jobs.after_start()
        while not self._stop.is_set():
            now = time.monotonic()
            self._config_tick(now)
            if self.jobs is not None:
                health = {k: d.health().state for k, d in svc.devices.items()}
                self.jobs.trial_tick(bool(svc.agent and svc.agent.connected), health)
                self.jobs.tick(health)
            if now >= next_hb:
                self._heartbeat()
                next_hb = now + hb_every
            if wd is not None and now >= next_wd:
                if self._healthy():
                    self.notifier.watchdog()
                next_wd = now + wd
            wait = min(next_hb, next_wd if wd else next_hb) - time.monotonic()
            self._stop.wait(max(0.05, min(wait, 1.0)))

    def _config_tick(self, now: float) -> None:
        push = self.configpush
        svc = self.services
        if push is None or svc is None:
            return
        if self._trial_deadline is not None:
            trial = self.startup.trial or {}
            baseline: dict[str, str] = trial.get("baseline", {})
            health = {k: d.health().state for k, d in svc.devices.items()}
            worse = [k for k, was in baseline.items() if was == "ok" and health.get(k) != "ok"]
            connected = bool(svc.agent and svc.agent.connected)
            if connected and not worse:
                self._trial_deadline = None
                push.trial_verdict(True, "broker reachable, devices healthy")
            elif now > self._trial_deadline:
                self._trial_deadline = None
                reasons = (
                    []
                    if connected
                    else [
                        "broker "
                        + ", ".join(e.name for e in self.config.mqtt.endpoints())
                        + " unreachable"
                    ]
                )
                reasons += [f"{k} {health.get(k)} (was ok)" for k in worse]
                push.trial_verdict(False, "; ".join(reasons))
        elif push.waiting:
            push.poll({k: d.health().state for k, d in svc.devices.items()})

    def _heartbeat(self) -> None:
        svc = self.services
        assert svc is not None
        if svc.agent is None or not svc.agent.connected:
            return
        body = {
            "device": self.config.device.id,
            "ts": time.time(),
            **telemetry.snapshot(self.state_dir),
            "outbox_depth": svc.store.outbox.depth(),
            "devices": {k: d.health().state for k, d in svc.devices.items()},
        }
        svc.agent.publish(svc.topics.telemetry, json.dumps(body), qos=0)

    def _shutdown(self) -> None:
        if self.restart_reason:
            self.notifier.notify("RELOADING=1", f"STATUS={self.restart_reason}")
        else:
            self.notifier.stopping()
        worker = getattr(self, "_config_worker", None)
        if worker is not None:
            worker.shutdown(wait=True, cancel_futures=True)
        svc = self.services
        if svc is not None:
            if self.uploader is not None:
                self.uploader.stop()
            if svc.agent is not None:
                svc.agent.stop("restart" if self.restart_reason else "shutdown")
            if svc.dispatcher is not None:
                svc.dispatcher.close()
            for dev in svc.devices.values():
                try:
                    dev.stop()
                except Exception:
                    log.exception("stopping %s failed", dev.kind)
        for fn in reversed(self._cleanups):
            try:
                fn()
            except Exception:
                log.exception("cleanup failed")
        if self.store is not None:
            try:
                self.store.audit("daemon", "stop", "ok")
            finally:
                self.store.close()
        self.notifier.close()
