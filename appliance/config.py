"""Configuration: pydantic models, layered loading, one-line explanations of every problem.

Layers, lowest first (later layers override earlier ones key by key):

1. built-in defaults (the models below);
2. the hardware kit profile named by ``device.profile`` (``firmware_profiles/<name>.toml``);
3. the local file (default ``/etc/appliance/appliance.toml``, ``--config`` to override);
4. ``APPLIANCE_*`` environment variables (``APPLIANCE_MQTT__PORT=1884``: ``__`` separates levels);
5. the fleet's desired configuration, once the trust layer has verified it (see docs/trust.md).

Unknown keys are errors at every layer, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from .drivers.camera.config import CameraConfig
from .drivers.card.config import CardConfig
from .drivers.fingerprint.config import FingerprintConfig
from .errors import ConfigError
from .resources import profiles_dir

DEFAULT_CONFIG_PATH = Path("/etc/appliance/appliance.toml")
DEFAULT_STATE_DIR = Path("/var/lib/appliance")
ENV_PREFIX = "APPLIANCE_"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DeviceSection(Strict):
    id: str = Field(
        "kiosk-dev",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Device id: MQTT client id and topic segment (letters, digits, _ . -)",
    )
    site: str = Field("", description="Free-text site name shown to administrators")
    groups: list[str] = Field(
        default_factory=list, description="Groups this kiosk belongs to (group commands)"
    )
    profile: str = Field(
        "sim", description="Hardware kit profile: firmware_profiles/<profile>.toml"
    )

    @field_validator("groups")
    @classmethod
    def _groups_are_names(cls, v: list[str]) -> list[str]:
        # Same rule as device ids and the names in operator certificates (trust/certs.py).
        for g in v:
            if not NAME_PATTERN.match(g):
                raise ValueError(
                    f"group {g!r} must be 1-64 letters, digits, _ . - (starting with a letter "
                    "or digit)"
                )
        return v


class TlsSection(Strict):
    enabled: bool = Field(False, description="Connect with TLS")
    ca_file: Path | None = Field(None, description="CA bundle that signed the broker certificate")
    cert_file: Path | None = Field(None, description="Client certificate (PEM)")
    key_file: Path | None = Field(None, description="Client private key (PEM, mode 0600)")
    insecure: bool = Field(
        False, description="Skip broker hostname verification (testing only, never in the field)"
    )


class BrokerTls(Strict):
    """One broker's TLS settings where they differ from ``[mqtt.tls]`` (unset: inherited)."""

    enabled: bool | None = Field(None, description="Connect with TLS")
    ca_file: Path | None = Field(None, description="CA bundle of this broker's certificate")
    cert_file: Path | None = Field(None, description="Client certificate (PEM)")
    key_file: Path | None = Field(None, description="Client private key (PEM, mode 0600)")
    insecure: bool | None = Field(None, description="Skip this broker's hostname verification")


class BrokerEntry(Strict):
    """One broker of ``mqtt.brokers``: a table, or the string ``"host:port"`` (``"host"``
    alone takes ``mqtt.port``; an IPv6 address is written ``"[::1]:8883"``)."""

    host: str = Field(min_length=1, description="Broker host name or address")
    port: int | None = Field(None, ge=1, le=65535, description="Broker port; default mqtt.port")
    tls: BrokerTls | None = Field(None, description="TLS overrides for this broker")

    @field_validator("host")
    @classmethod
    def _bare_host(cls, v: str) -> str:
        if any(c.isspace() for c in v) or "/" in v:
            raise ValueError(f"{v!r} is not a host name or address")
        return v


_HOST_PORT = re.compile(
    r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]\s/]+))(?::(?P<port>\d+))?$"
)


def parse_broker_address(value: Any) -> Any:
    """``"host:port"`` -> ``{"host": ..., "port": ...}``; tables pass through to the model."""
    if not isinstance(value, str):
        return value
    m = _HOST_PORT.match(value.strip())
    if m is None:
        raise ValueError(f'{value!r} is not "host:port" (an IPv6 address as "[::1]:8883")')
    port = m.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: port {port} is not 1-65535")
    return {"host": m.group("v6") or m.group("host"), "port": int(port) if port else None}


class MqttSection(Strict):
    host: str = Field(
        "127.0.0.1", description="Broker host name or address (the broker when `brokers` is empty)"
    )
    port: int = Field(
        1883,
        ge=1,
        le=65535,
        description="Broker port (8883 is usual with TLS); also of `brokers` entries without one",
    )
    brokers: list[Annotated[BrokerEntry, BeforeValidator(parse_broker_address)]] = Field(
        default_factory=list,
        description='Brokers to fail over between: "host:port" strings or tables {host, port, '
        "tls = {ca_file, cert_file, key_file, enabled, insecure}} (TLS unset: [mqtt.tls]); "
        "empty: the one broker host:port. When set, host is not used (docs/scaling.md)",
    )
    broker_order: Literal["device", "listed"] = Field(
        "device",
        description="Order in which `brokers` are tried: 'device' a permutation fixed by the "
        "device id (a fleet spreads over the nodes, and a lost node's kiosks over the rest); "
        "'listed' as written (a primary and its standbys). A lost connection or a failed "
        "connect moves to the next one",
    )
    protocol: Literal["5", "3.1.1"] = Field(
        "5",
        description="MQTT version; 3.1.1 for brokers without MQTT 5 (replies then go to "
        "the documented reply topic)",
    )
    client_id: str | None = Field(None, description="Client id; default: the device id")
    username: str | None = Field(None, description="Broker user name")
    password_file: Path | None = Field(None, description="File holding the broker password")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive in seconds")
    session_expiry_s: int = Field(
        7 * 24 * 3600, ge=0, description="Persistent session lifetime on the broker (MQTT 5)"
    )
    topic_prefix: str = Field("kiosk", pattern=r"^[A-Za-z0-9_-]+$", description="Topic root")
    reconnect_min_s: float = Field(0.5, gt=0, description="First reconnect backoff ceiling")
    reconnect_max_s: float = Field(
        30.0,
        gt=0,
        description="Largest reconnect backoff ceiling; with full jitter a fleet is back "
        "within about this long after a broker outage (docs/scaling.md)",
    )
    max_inflight: int = Field(
        200, ge=1, le=65535, description="QoS 1 messages in flight while the outbox drains"
    )
    delivery: Literal["broker", "end_to_end"] = Field(
        "broker",
        description="When an outbox event may be deleted: 'broker' on the broker's PUBACK "
        "(QoS 1); 'end_to_end' only when the fleet's ingest acknowledges it on "
        "{prefix}/{device}/outbox/ack, which survives a broker crash but needs an ingest that "
        "acknowledges (appliance fleet controller --ack; docs/reliability.md)",
    )
    delivery_resend_s: float = Field(
        30.0,
        ge=1.0,
        le=3600.0,
        description="end_to_end: events published but not acknowledged are sent again after "
        "this many seconds without an acknowledgement (the pause doubles, up to 16 x, while "
        "none comes) and on every reconnect",
    )
    tls: TlsSection = Field(default_factory=TlsSection)

    @field_validator("brokers")
    @classmethod
    def _distinct(cls, v: list[BrokerEntry]) -> list[BrokerEntry]:
        seen: dict[tuple[str, int | None], int] = {}
        for i, b in enumerate(v):
            key = (b.host.lower(), b.port)
            if key in seen:
                raise ValueError(f"entry {i} repeats entry {seen[key]} ({b.host}:{b.port})")
            seen[key] = i
        return v

    def endpoints(self) -> list[Endpoint]:
        """Every broker to try, in the listed order, each with its effective TLS settings:
        ``brokers``, or the one ``host``/``port`` when ``brokers`` is empty."""
        if not self.brokers:
            return [Endpoint(self.host, self.port, self.tls)]
        out = []
        for b in self.brokers:
            tls = self.tls
            if b.tls is not None:
                over = {k: v for k, v in b.tls.model_dump().items() if v is not None}
                tls = self.tls.model_copy(update=over)
            out.append(Endpoint(b.host, b.port or self.port, tls))
        return out


@dataclass(frozen=True)
class Endpoint:
    """One broker as the agent connects to it (``MqttSection.endpoints``)."""

    host: str
    port: int
    tls: TlsSection

    @property
    def name(self) -> str:
        """``host:port`` (``[v6]:port``), as the status message reports it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class StoreSection(Strict):
    synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL",
        description="SQLite synchronous mode; FULL survives power loss, NORMAL only crashes",
    )
    outbox_max_rows: int = Field(
        1_000_000, ge=1000, description="Outbox cap; beyond it new events are refused, not lost"
    )
    command_history_days: int = Field(
        30, ge=1, description="Days an executed command id and its reply are kept"
    )


class CommandsSection(Strict):
    max_payload_bytes: int = Field(
        256 * 1024, ge=1024, description="Command payloads larger than this are refused"
    )
    workers: int = Field(4, ge=1, le=64, description="Threads executing commands")
    allow_unsigned: bool = Field(
        False,
        description="Accept unsigned commands: for local development only (`appliance run "
        "--dev` sets it); a provisioned kiosk accepts only commands signed by a fleet operator",
    )


class TrustSection(Strict):
    """Fleet trust anchors (docs/trust.md). Key files hold public keys only."""

    root_keys: list[Path] = Field(
        default_factory=list,
        description="Fleet root public key files (ed25519-pub:...); two during a root rotation",
    )
    enrollment_key: Path | None = Field(
        None,
        description="Central enrollment service's public key (x25519-pub:...): biometric "
        "records are sealed to it at capture",
    )
    skew_s: float = Field(300.0, ge=0, le=86400, description="Tolerated clock difference, s")
    max_lifetime_s: int = Field(
        3600, ge=10, le=7 * 86400, description="Longest accepted signed-command lifetime, s"
    )
    revoked_keys: list[str] = Field(
        default_factory=list, description="Operator certificate key ids to refuse"
    )
    sign_messages: bool = Field(
        True,
        description="Sign replies and events with the device key (MQTT 5 user property 'sig')",
    )


class ConfigPushSection(Strict):
    """How the fleet's desired configuration is applied (docs/trust.md)."""

    trial_timeout_s: float = Field(
        30.0,
        ge=1.0,
        le=600.0,
        description="After applying a pushed configuration: seconds for the broker to be "
        "reachable and the devices that were healthy to be healthy again, else roll back",
    )


class EnrollmentSection(Strict):
    """Enrollment sessions and the package upload (docs/enrollment.md)."""

    chunk_bytes: int = Field(
        32 * 1024, ge=1024, le=256 * 1024, description="Upload chunk size in bytes"
    )
    upload_window: int = Field(
        8, ge=1, le=256, description="Chunks sent ahead of the central acknowledgements"
    )
    chunk_timeout_s: float = Field(
        10.0, ge=0.5, le=600, description="Send a chunk again after this without its ack"
    )
    resume_s: float = Field(
        900.0,
        ge=0,
        description="After a restart, resume a session idle at most this long; "
        "older ones are aborted and their sealed records shredded",
    )
    instant_issuance: bool = Field(
        True,
        description="Offer instant card issuance: sessions may ask for it (enrollment.start "
        "issuance=true); false refuses such sessions (issuance_disabled)",
    )


class OfficerEntry(Strict):
    """An officer who may sign in at the station (attended mode; docs/local-api.md)."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Officer id")
    name: str = Field(min_length=1, max_length=120, description="Name shown on the screen")
    secret_hash: str = Field(
        pattern=r"^scrypt\$[0-9]+\$[0-9]+\$[0-9]+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$",
        description="Password or PIN hash: scrypt$<n>$<r>$<p>$<salt b64>$<hash b64> "
        "(appliance.station.officers.hash_secret)",
    )
    supervisor: bool = Field(False, description="May approve finger exceptions")
    expires: float = Field(description="Unix time after which the credential is refused")
    templates: list[str] = Field(
        default_factory=list,
        max_length=10,
        description="Base64 sensor templates of the officer's fingers (the kiosk's sensor "
        "model): a citizen's finger matching one is refused (officer_finger)",
    )

    @field_validator("templates")
    @classmethod
    def _base64(cls, v: list[str]) -> list[str]:
        import base64
        import binascii

        for t in v:
            try:
                if not base64.b64decode(t, validate=True):
                    raise ValueError("an empty template")
            except binascii.Error:
                raise ValueError("a template is not base64") from None
        return v


class StationSection(Strict):
    """The kiosk station: local flow, local API and screen (docs/local-api.md)."""

    enabled: bool = Field(False, description="Run the station's flow and local API")
    attended: bool = Field(
        True, description="An officer signs in before each enrollment (false: self-service)"
    )
    bind: str = Field(
        "127.0.0.1",
        description="Loopback address (127.0.0.1 or ::1) or unix:<path> of the local API; "
        "other peers are refused per request whatever this says",
    )
    port: int = Field(8470, ge=0, le=65535, description="Local API TCP port (0: any free)")
    idle_timeout_s: float = Field(
        180.0, ge=5, le=3600, description="Idle time that cancels the flow and shreds its records"
    )
    language: Literal["vi", "en"] = Field("vi", description="Screen language at welcome")
    officers: list[OfficerEntry] = Field(
        default_factory=list, description="Officers' credentials (from the signed configuration)"
    )

    @field_validator("bind")
    @classmethod
    def _loopback(cls, v: str) -> str:
        if v.startswith("unix:"):
            if len(v) <= 5:
                raise ValueError("unix: needs a socket path")
            return v
        if v not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("the local API binds to 127.0.0.1, ::1 or unix:<path> only")
        return v


class TelemetrySection(Strict):
    heartbeat_s: float = Field(30.0, ge=1.0, description="Seconds between heartbeats")


class LoggingSection(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level")
    target: Literal["auto", "journal", "stderr"] = Field(
        "auto", description="auto: journald when the daemon runs under it, else stderr"
    )


class SimulationSection(Strict):
    """Emulators the daemon starts itself, for the simulated kit and demos. The production
    drivers then talk to them over the real channel (a pty, pcscd + vpcd), unchanged."""

    fingerprint: bool = Field(
        False, description="Start the ZhianTec sensor emulator on a pty and use that port"
    )
    card: bool = Field(
        False, description="Start a private pcscd + vpcd stack with the card emulator behind it"
    )
    seed: int = Field(1, description="Seed of the emulators' synthetic citizens")
    line_rate: bool = Field(
        True,
        description="Pace the fingerprint emulator at the configured baud like a real UART "
        "(false: as fast as the pty allows, for tests)",
    )


class HardwareSection(Strict):
    camera: CameraConfig = Field(default_factory=CameraConfig)
    fingerprint: FingerprintConfig = Field(default_factory=FingerprintConfig)
    card: CardConfig = Field(default_factory=CardConfig)


class AppConfig(Strict):
    """The whole configuration. Section by section in docs/configuration.md."""

    device: DeviceSection = Field(default_factory=DeviceSection)
    mqtt: MqttSection = Field(default_factory=MqttSection)
    store: StoreSection = Field(default_factory=StoreSection)
    commands: CommandsSection = Field(default_factory=CommandsSection)
    trust: TrustSection = Field(default_factory=TrustSection)
    config_push: ConfigPushSection = Field(default_factory=ConfigPushSection)
    enrollment: EnrollmentSection = Field(default_factory=EnrollmentSection)
    telemetry: TelemetrySection = Field(default_factory=TelemetrySection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    hardware: HardwareSection = Field(default_factory=HardwareSection)
    simulation: SimulationSection = Field(default_factory=SimulationSection)
    station: StationSection = Field(default_factory=StationSection)

    def redacted(self) -> dict[str, Any]:
        """The configuration as JSON data with secrets' file paths kept but no secret values
        (the model holds none: passwords and keys are always files)."""
        data: dict[str, Any] = json.loads(self.model_dump_json())
        for officer in data.get("station", {}).get("officers", []):
            officer["secret_hash"] = "<redacted>"  # noqa: S105 - a hash, not shown either
            officer["templates"] = ["<redacted>"] * len(officer.get("templates", []))
        return data


# --- loading ----------------------------------------------------------------------------------


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into ``base`` table by table; scalars and lists replace."""
    out: dict[str, Any] = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} not found", [(str(path), "file not found")]) from None
    except PermissionError:
        raise ConfigError(f"{what} {path} unreadable", [(str(path), "permission denied")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} {path} is not UTF-8 text",
            [(str(path), f"is not UTF-8 text (byte {exc.start}): TOML files are UTF-8")],
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{what} {path} is not valid TOML", [(str(path), f"is not valid TOML: {exc}")]
        ) from None


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``APPLIANCE_MQTT__PORT=1884`` -> ``{"mqtt": {"port": "1884"}}``.

    Values are parsed as TOML scalars/arrays when they parse (``true``, ``30``, ``["a"]``), else
    taken as strings; pydantic then validates them like any other layer. Variables that are not
    configuration (``APPLIANCE_PROFILES_DIR``) have no ``__`` and are ignored.
    """
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def format_problems(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and section)"
        problems.append((prefix + loc, msg))
    return problems


def validate(data: Mapping[str, Any]) -> AppConfig:
    try:
        return AppConfig.model_validate(data)
    except ValidationError as exc:
        problems = format_problems(exc)
        raise ConfigError(f"{len(problems)} configuration problem(s)", problems) from None


def load_profile(name: str) -> dict[str, Any]:
    """A hardware kit profile: a partial configuration (usually ``[hardware]`` tables)."""
    if not name or "/" in name or name.startswith("."):
        raise ConfigError("bad profile name", [("device.profile", f"invalid name {name!r}")])
    path = profiles_dir() / f"{name}.toml"
    if not path.is_file():
        available = sorted(p.stem for p in profiles_dir().glob("*.toml"))
        raise ConfigError(
            f"profile {name!r} not found",
            [("device.profile", f"no profile {name!r} in {profiles_dir()}; have {available}")],
        )
    data = read_toml(path, "profile")
    data.pop("profile", None)  # the [profile] table is documentation (name, description)
    return data


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A configuration document in JSON (``appliance fleet push-config`` accepts both)."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} not found", [(str(path), "file not found")]) from None
    except PermissionError:
        raise ConfigError(f"{what} {path} unreadable", [(str(path), "permission denied")]) from None
    except (ValueError, RecursionError) as exc:
        raise ConfigError(
            f"{what} {path} is not valid JSON", [(str(path), f"is not valid JSON: {exc}")]
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{what} {path} is not a JSON object",
            [(str(path), f"must be a JSON object of sections, not {type(data).__name__}")],
        )
    return data


def load(
    path: Path | None,
    *,
    environ: Mapping[str, str] | None = None,
    desired: Mapping[str, Any] | None = None,
    require_file: bool = False,
    fmt: Literal["toml", "json"] = "toml",
) -> AppConfig:
    """Load and validate the layered configuration. Raises ConfigError listing every problem.
    ``fmt``: how the local file is written (the kiosk's own file is TOML)."""
    environ = os.environ if environ is None else environ
    local: dict[str, Any] = {}
    if path is not None and (require_file or path.exists()):
        reader = read_json if fmt == "json" else read_toml
        local = reader(path, "configuration file")
    env = env_overrides(environ)
    # The profile is chosen by the layers above it, so resolve the name first.
    top = deep_merge(deep_merge(local, env), dict(desired or {}))
    profile_name = str(top.get("device", {}).get("profile", DeviceSection().profile))
    profile = load_profile(profile_name)
    merged = deep_merge(profile, local)
    merged = deep_merge(merged, env)
    merged = deep_merge(merged, dict(desired or {}))
    return validate(merged)


def check_file(
    path: Path,
    *,
    environ: Mapping[str, str] | None = None,
    fmt: Literal["toml", "json"] = "toml",
) -> list[tuple[str, str]]:
    """Every problem in a configuration file (with its profile and, when ``environ`` is given,
    the ``APPLIANCE_<SECTION>__<KEY>`` overrides in it), empty when valid. The checker of
    ``appliance config check`` (with the process environment) and of ``appliance fleet
    push-config`` (a document alone: the kiosk's environment is not the administrator's)."""
    try:
        load(path, environ=environ or {}, require_file=True, fmt=fmt)
    except ConfigError as exc:
        return exc.problems
    return []


def env_override_names(environ: Mapping[str, str]) -> dict[str, str]:
    """``{"mqtt.port": "APPLIANCE_MQTT__PORT", ...}``: the configuration key each override sets."""
    return {
        ".".join(p.lower() for p in name[len(ENV_PREFIX) :].split("__")): name
        for name in environ
        if name.startswith(ENV_PREFIX) and "__" in name
    }


# --- reference documentation ------------------------------------------------------------------


def _type_name(ann: Any) -> str:
    import types
    import typing

    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is Literal:
        return " or ".join(json.dumps(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    if ann is type(None):
        return "none"
    return getattr(ann, "__name__", str(ann))


def reference_markdown() -> str:
    """docs/configuration.md's field table, generated from the models (kept current by a test)."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from the pydantic models by `appliance config reference`; do not edit by hand.",
        "Layers, lowest first: built-in defaults, the hardware kit profile",
        "(`firmware_profiles/<device.profile>.toml`), the local file (`--config`, default",
        "`/etc/appliance/appliance.toml`), `APPLIANCE_<SECTION>__<KEY>` environment variables",
        "(e.g. `APPLIANCE_MQTT__PORT=1884`, values parsed as TOML), and the fleet's verified",
        "desired configuration. Unknown keys are errors in every layer.",
        "`appliance config check FILE` checks the file with its profile and the environment",
        "variables, prints each problem as `path.to.field: reason` (naming the variable that set",
        "it) and exits 2; `--no-env` checks the file alone. `appliance run` refuses to start",
        "without its configuration file unless given `--dev` (a development run: the simulated",
        "kit, unsigned commands accepted).",
        "",
    ]

    def walk(model: type[BaseModel], prefix: str) -> None:
        rows = []
        nested = []
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                nested.append((name, ann))
                continue
            default = field.get_default(call_default_factory=True)
            type_name = _type_name(ann)
            desc = (field.description or "").replace("|", "\\|")
            rows.append(
                f"| `{name}` | {type_name} | `{json.dumps(default, default=str)}` | {desc} |"
            )
        if rows:
            lines.extend(
                [
                    f"## `[{prefix}]`" if prefix else "## top level",
                    "",
                    "| key | type | default | meaning |",
                    "|---|---|---|---|",
                    *rows,
                    "",
                ]
            )
        for name, sub in nested:
            walk(sub, f"{prefix}.{name}" if prefix else name)

    walk(AppConfig, "")
    return "\n".join(lines)
