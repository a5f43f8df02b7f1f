"""``appliance provision``: the technician's procedure, step by step, idempotent and resumable.

Steps (each prints one progress line; a failure says what went wrong and the next step):

1. ``keys``: the device's Ed25519 identity in the state directory (``device.key`` 0600); its
   public key is what the fleet registers.
2. ``config``: the configuration file (device id, site, kit profile, broker, TLS files copied
   into ``<state>/tls``; signed commands only).
3. ``selftest``: camera, sensor, reader, broker, clock (:mod:`.selftest`).
4. ``claim``: the claim request with the one-time token, sealed answer awaited
   (:mod:`.claim`); the administrator runs ``appliance fleet approve DEVICE``.
5. ``install``: the trust bundle (fleet root key, enrollment key, broker certificate when the
   fleet issued one) written to ``<state>/trust`` and ``<state>/tls``, the configuration
   rewritten to use them.
6. ``verify``: the broker accepts the kiosk with its final settings.

Progress lives in ``<state>/provision/state.json``: a re-run skips what is done and continues
where it stopped (after a power cut, a refused token, a failed self-test, or while waiting for
the approval). The claim's one-time sealing key and the token stay in ``<state>/provision``
(0600) only until the bundle is installed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nacl.public import PrivateKey

from .. import __version__
from ..config import AppConfig, load
from ..errors import ApplianceError, ConfigError, TrustError
from ..protocol.codes import ErrorCode
from ..protocol.topics import Topics
from ..trust.keys import (
    DeviceIdentity,
    atomic_write,
    b64decode,
    b64encode,
    parse_public_key,
    read_private_file,
    write_private_file,
    write_public_file,
)
from ..trust.sealed import parse_enrollment_public_key
from . import claim as claimproto
from .selftest import check_broker, format_check, run_checks

log = logging.getLogger(__name__)

STEPS = ("keys", "config", "selftest", "claim", "install", "verify")
MARKER = "# Written by 'appliance provision'"
PROV_DIR = "provision"
STATE_FILE = "state.json"
BOX_KEY = "claim-box.key"
TOKEN_FILE = "claim-token"  # noqa: S105 - a file name, not a secret

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PENDING = 0, 1, 2, 3


class ProvisionError(ApplianceError):
    """A step failed; ``next_step`` tells the technician what to do."""

    code = ErrorCode.PROVISION_FAILED

    def __init__(self, step: str, message: str, next_step: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code, details={"step": step, "next": next_step})
        self.step = step
        self.next_step = next_step


class ClaimPending(ApplianceError):
    code = ErrorCode.CLAIM_PENDING


@dataclass
class Params:
    """What the technician gave (first run) or what the state file remembers (re-runs)."""

    device_id: str | None = None
    site: str = ""
    profile: str | None = None
    host: str | None = None
    port: int | None = None  # None: 1883
    prefix: str | None = None  # None: kiosk
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def merged(self, new: Params) -> Params:
        """These (remembered) parameters with every option given now replacing its value."""
        out = Params(**self.__dict__)
        for k, v in new.__dict__.items():
            if v not in (None, ""):
                setattr(out, k, v)
        return out


@dataclass
class Options:
    config_path: Path
    state_dir: Path
    params: Params
    token: str | None = None
    wait_s: float = 300.0
    force_config: bool = False
    device_timeout_s: float = 15.0
    broker_timeout_s: float = 5.0
    out: Callable[[str], None] = print
    # Finish without the central enrollment key (a kiosk that will not enroll yet): an explicit
    # opt-out, logged and recorded in the progress file; the self-test keeps failing on it.
    without_enrollment_key: bool = False


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, Path):
        v = str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def render_toml(data: dict[str, Any], header: str = "") -> str:
    """A TOML document from nested dicts of str/int/float/bool/Path/lists (enough for the
    configuration file; tomllib reads it back in :meth:`Provisioner._write_config`)."""
    lines = [header] if header else []

    def table(prefix: str, d: dict[str, Any]) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        if scalars or not prefix:
            if prefix:
                lines.append(f"\n[{prefix}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in scalars.items())
        for k, v in d.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}" if prefix else k, v)

    table("", data)
    return "\n".join(lines) + "\n"


@dataclass
class State:
    params: Params = field(default_factory=Params)
    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    request: str | None = None  # base64 of the published claim request
    token_id: str | None = None


class Provisioner:
    def __init__(self, opts: Options) -> None:
        self.o = opts
        self.state_dir = opts.state_dir.resolve()
        self.pdir = self.state_dir / PROV_DIR
        self.state = self._load_state()
        self.params = self.state.params.merged(opts.params)
        self.total = len(STEPS)
        self.notes: list[str] = []
        changed = sorted(
            k
            for k, v in self.params.__dict__.items()
            if k != "device_id" and v != getattr(self.state.params, k)
        )
        if changed and "config" in self.state.done:
            if "install" in self.state.done:
                self.notes.append(
                    f"already provisioned: {', '.join(changed)} ignored (use --reset to "
                    "provision again with new settings)"
                )
                self.params = self.state.params
            else:
                # New settings (a corrected --broker after a failed self-test...): write the
                # configuration again and test it again.
                for step in ("config", "selftest"):
                    self.state.done.pop(step, None)
                self.notes.append(f"changed {', '.join(changed)}: configuration rewritten")

    # -- state -----------------------------------------------------------------------------

    def _load_state(self) -> State:
        path = self.pdir / STATE_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return State()
        except (OSError, ValueError) as exc:
            raise ProvisionError(
                "start",
                f"{path} is unreadable ({exc})",
                f"move it away and re-run 'appliance provision' with all options "
                f"(completed steps are idempotent): mv {path} {path}.bad",
            ) from None
        try:
            return State(
                params=Params(**raw.get("params", {})),
                done=dict(raw.get("done", {})),
                request=raw.get("request"),
                token_id=raw.get("token_id"),
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise ProvisionError(
                "start",
                f"{path} does not hold provisioning progress ({exc})",
                f"move it away and re-run 'appliance provision' with all options: "
                f"mv {path} {path}.bad",
            ) from None

    def _save_state(self) -> None:
        self.pdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.state.params = self.params
        data = {
            "params": self.params.__dict__,
            "done": self.state.done,
            "request": self.state.request,
            "token_id": self.state.token_id,
        }
        atomic_write(self.pdir / STATE_FILE, json.dumps(data, indent=1).encode(), mode=0o600)

    def _mark(self, step: str, detail: str) -> None:
        self.state.done[step] = {"at": time.time(), "detail": detail}
        self._save_state()

    def _say(self, step: str, text: str) -> None:
        n = STEPS.index(step) + 1 if step in STEPS else 0
        self.o.out(f"[{n}/{self.total}] {step:<9} {text}")

    # -- the procedure ---------------------------------------------------------------------

    def run(self) -> int:
        self._require()
        self._save_state()
        for note in self.notes:
            self.o.out(f"note: {note}")
        for step in STEPS:
            if step in self.state.done:
                self._say(step, f"done earlier: {self.state.done[step]['detail']}")
                continue
            detail = getattr(self, f"step_{step}")()
            self._mark(step, detail)
            self._say(step, detail)
        self._summary()
        return EXIT_OK

    def _require(self) -> None:
        p = self.params
        missing = [
            flag
            for flag, value in (
                ("--device-id", p.device_id),
                ("--profile", p.profile),
                ("--broker", p.host),
            )
            if not value
        ]
        if missing:
            raise ProvisionError(
                "start",
                f"missing {', '.join(missing)} (needed on the first run)",
                "give them; e.g. appliance provision --device-id kiosk-hn-0042 --site 'Ha Noi "
                "1' --profile rpi-r307-pcsc --broker mqtt.fleet.example:8883 --ca ca.crt "
                "--cert claimant.crt --key claimant.key --claim-token TOKEN",
                code=ErrorCode.USAGE,
            )
        old = self.state.params.device_id
        if old and p.device_id != old and "keys" in self.state.done:
            raise ProvisionError(
                "start",
                f"this state directory was provisioned as {old}, not {p.device_id}",
                f"use --device-id {old}, or another --state-dir for a new identity",
                code=ErrorCode.USAGE,
            )

    # 1 ------------------------------------------------------------------------------------

    def step_keys(self) -> str:
        existed = (self.state_dir / "device.key").exists()
        try:
            ident = DeviceIdentity.load_or_create(self.state_dir)
        except TrustError as exc:
            raise ProvisionError(
                "keys",
                f"{exc.code}: {exc.message}",
                "fix the key file as the message says; never copy a key from another kiosk",
                code=exc.code,
            ) from None
        return f"device key {ident.key_id} {'present' if existed else 'created'} (mode 0600)"

    # 2 ------------------------------------------------------------------------------------

    def _copy_tls(self) -> dict[str, Any]:
        """Copy the TLS files given for the claim into <state>/tls; the [mqtt.tls] table."""
        p = self.params
        if not (p.ca_file or p.cert_file):
            return {"enabled": False}
        tls = self.state_dir / "tls"
        tls.mkdir(parents=True, exist_ok=True, mode=0o700)
        out: dict[str, Any] = {"enabled": True}
        for src, name, key, secret in (
            (p.ca_file, "ca.crt", "ca_file", False),
            (p.cert_file, "client.crt", "cert_file", False),
            (p.key_file, "client.key", "key_file", True),
        ):
            if not src:
                continue
            dest = tls / name
            if Path(src).resolve() != dest:
                try:
                    data = Path(src).read_bytes()
                except OSError as exc:
                    if dest.exists():  # copied on an earlier run; the original is gone
                        out[key] = str(dest)
                        continue
                    raise ProvisionError(
                        "config",
                        f"cannot read {src}: {exc.strerror}",
                        "check the --ca/--cert/--key paths",
                    ) from None
                atomic_write(dest, data, mode=0o600 if secret else 0o644)
            out[key] = str(dest)
        return out

    def _config_data(self, bundle: dict[str, Any] | None = None) -> dict[str, Any]:
        p = self.params
        data: dict[str, Any] = {
            "device": {"id": p.device_id, "site": p.site, "profile": p.profile},
            "mqtt": {"host": p.host, "port": p.port or 1883, "topic_prefix": p.prefix or "kiosk"},
            "commands": {"allow_unsigned": False},
        }
        tls = self._copy_tls()
        if bundle is not None:
            data["device"]["groups"] = list(bundle.get("groups") or [])
            if bundle.get("site"):
                data["device"]["site"] = bundle["site"]
            trust = self.state_dir / "trust"
            roots = sorted(trust.glob("root-*.pub"))
            data["trust"] = {"root_keys": [str(r) for r in roots]}
            if (trust / "enrollment.pub").exists():
                data["trust"]["enrollment_key"] = str(trust / "enrollment.pub")
            broker = bundle.get("broker") or {}
            if broker:
                data["mqtt"].update(
                    host=broker["host"], port=broker["port"], topic_prefix=broker["prefix"]
                )
            tdir = self.state_dir / "tls"
            if (tdir / "device.crt").exists():
                tls = {
                    "enabled": True,
                    "ca_file": str(tdir / "ca.crt"),
                    "cert_file": str(tdir / "device.crt"),
                    "key_file": str(tdir / "device.key"),
                }
        data["mqtt"]["tls"] = tls
        return data

    def _write_config(self, data: dict[str, Any]) -> AppConfig:
        path = self.o.config_path
        if path.exists():
            head = path.read_text(errors="replace").splitlines()[:1]
            if head != [MARKER] and not self.o.force_config:
                raise ProvisionError(
                    "config",
                    f"{path} exists and was not written by 'appliance provision'",
                    f"keep a copy and re-run with --force-config (cp {path} {path}.orig)",
                )
        text = render_toml(
            data,
            header=MARKER + f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')}; edit with care: a re-run "
            "of provisioning after --reset rewrites it.",
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.new")
        tmp.write_text(text)
        try:
            cfg = load(tmp, environ={}, require_file=True)
        except ConfigError as exc:
            tmp.unlink(missing_ok=True)
            problems = "; ".join(f"{a}: {b}" for a, b in exc.problems)
            raise ProvisionError(
                "config",
                f"the configuration would be invalid: {problems}",
                "correct the option named (e.g. --profile must be one of firmware_profiles/)",
            ) from None
        atomic_write(path, text.encode(), mode=0o644)
        tmp.unlink(missing_ok=True)
        return cfg

    def step_config(self) -> str:
        cfg = self._write_config(self._config_data())
        return (
            f"{self.o.config_path}: device {cfg.device.id}, profile {cfg.device.profile}, "
            f"broker {cfg.mqtt.host}:{cfg.mqtt.port}{' (TLS)' if cfg.mqtt.tls.enabled else ''}"
        )

    # 3 ------------------------------------------------------------------------------------

    def _cfg(self) -> AppConfig:
        return load(self.o.config_path, environ={}, require_file=True)

    def step_selftest(self) -> str:
        cfg = self._cfg()
        self._say("selftest", "running (camera, sensor, reader, broker, clock) ...")
        checks = run_checks(
            cfg,
            self.state_dir,
            # The enrollment key arrives with the trust bundle (step 5), after this check.
            require_enrollment_key=False,
            device_timeout_s=self.o.device_timeout_s,
            broker_timeout_s=self.o.broker_timeout_s,
            progress=lambda c: self.o.out(format_check(c)),
        )
        failed = [c for c in checks if c.failed]
        if failed:
            raise ProvisionError(
                "selftest",
                f"failed: {', '.join(c.name for c in failed)}",
                "fix what each 'next:' line says, then re-run 'appliance provision' (steps "
                "1-2 are kept)",
            )
        passed = sum(1 for c in checks if c.status == "ok")
        skipped = [c.name for c in checks if c.status == "skip"]
        return f"{passed} checks passed" + (f", skipped {', '.join(skipped)}" if skipped else "")

    # 4 ------------------------------------------------------------------------------------

    def _token(self) -> str:
        path = self.pdir / TOKEN_FILE
        if self.o.token:
            claimproto.split_token(self.o.token)  # refuses a mangled token before anything
            stored = read_private_file(path).decode() if path.exists() else None
            if stored != self.o.token:
                write_private_file(path, self.o.token.encode(), overwrite=True)
                self.state.request = None  # a new token: a new request
            return self.o.token
        if path.exists():
            return read_private_file(path).decode()
        raise ProvisionError(
            "claim",
            "no claim token",
            "ask the fleet administrator for one ('appliance fleet claim-token --device "
            f"{self.params.device_id}') and re-run with --claim-token TOKEN",
            code=ErrorCode.USAGE,
        )

    def _box_key(self) -> PrivateKey:
        path = self.pdir / BOX_KEY
        if path.exists() and self.state.request is not None:
            return PrivateKey(b64decode(read_private_file(path).decode(), what="claim key"))
        key = PrivateKey.generate()
        write_private_file(path, b64encode(bytes(key)).encode(), overwrite=True)
        return key

    def _connect(self, cfg: AppConfig) -> Any:
        from ..mqttclient import BrokerOptions, FleetMqtt

        tls = cfg.mqtt.tls
        opts = BrokerOptions(
            host=cfg.mqtt.host,
            port=cfg.mqtt.port,
            prefix=cfg.mqtt.topic_prefix,
            ca_file=tls.ca_file if tls.enabled else None,
            cert_file=tls.cert_file if tls.enabled else None,
            key_file=tls.key_file if tls.enabled else None,
            insecure=tls.insecure,
        )
        try:
            return FleetMqtt(opts, client_id=f"{cfg.device.id}-provision").connect(
                self.o.broker_timeout_s
            )
        except ApplianceError as exc:
            raise ProvisionError(
                "claim",
                exc.message,
                "check the broker address and the TLS files (the self-test's broker check "
                "shows the same), then re-run 'appliance provision'",
                code=exc.code,
            ) from None

    def step_claim(self) -> str:
        self._bundle = self._claim()
        return f"approved by {self._bundle.get('approved_by') or 'the fleet'}"

    def _claim(self) -> dict[str, Any]:
        cfg = self._cfg()
        token = self._token()
        box = self._box_key()
        ident = DeviceIdentity.load(self.state_dir)
        if self.state.request is None:
            req = claimproto.build_request(
                ident,
                device_id=cfg.device.id,
                token=token,
                box_public_key=bytes(box.public_key),
                site=cfg.device.site,
                hostname=platform.node(),
                version=__version__,
            )
            self.state.request = b64encode(req)
            self.state.token_id = claimproto.split_token(token)[0]
            self._save_state()
        request = b64decode(self.state.request, what="stored request")
        body = claimproto.parse_request(request).body
        topics = Topics(cfg.mqtt.topic_prefix, cfg.device.id)
        req_topic, resp_topic = topics.claim_request, topics.claim_response
        mqtt = self._connect(cfg)
        try:
            q = mqtt.collector(resp_topic)
            mqtt.subscribe([resp_topic])
            try:
                mqtt.publish(req_topic, request, retain=True)
            except ApplianceError as exc:
                raise ProvisionError(
                    "claim",
                    f"the broker did not take the claim request: {exc.message}",
                    "the certificate used may not write claims/<device id>/request: use the "
                    "fleet's claimant certificate (--cert/--key) or this device's own",
                    code=exc.code,
                ) from None
            self._say(
                "claim",
                f"request sent (token {self.state.token_id}, device key {ident.key_id}); "
                f"waiting up to {self.o.wait_s:g} s for 'appliance fleet approve "
                f"{cfg.device.id}' ...",
            )
            want = hashlib.sha256(body).hexdigest()
            deadline = time.monotonic() + self.o.wait_s
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ClaimPending(
                        f"no answer yet to the claim of {cfg.device.id}. Ask the fleet "
                        f"administrator to run: appliance fleet approve {cfg.device.id}\n"
                        "then re-run 'appliance provision' (it continues waiting; the request "
                        "stays on the broker)"
                    )
                try:
                    msg = q.get(timeout=min(left, 1.0))
                except Exception:  # noqa: S112 - queue.Empty: keep waiting until the deadline
                    continue
                if not msg.payload or claimproto.response_request_hash(msg.payload) != want:
                    continue  # an answer to an earlier request, or a cleared one
                answer = claimproto.open_response(
                    msg.payload, request_body=body, token=token, box_private_key=bytes(box)
                )
                if answer.status == "approved":
                    assert answer.bundle is not None
                    self._clear_request(mqtt, req_topic)
                    return answer.bundle
                self.state.request = None  # the next run builds a new request
                self._save_state()
                self._clear_request(mqtt, req_topic)  # nobody should approve it any more
                how = "" if answer.authenticated else " (unauthenticated answer)"
                raise ProvisionError(
                    "claim",
                    f"the fleet refused the claim{how}: {answer.code}: {answer.message}",
                    "ask the fleet administrator for a new claim token and re-run "
                    "'appliance provision --claim-token NEW'",
                    code=answer.code,
                )
        finally:
            mqtt.close()

    @staticmethod
    def _clear_request(mqtt: Any, topic: str) -> None:
        try:
            mqtt.publish(topic, b"", retain=True)
        except ApplianceError as exc:
            log.info("could not clear the retained claim request: %s", exc.message)

    # 5 ------------------------------------------------------------------------------------

    def step_install(self) -> str:
        bundle: dict[str, Any] | None = getattr(self, "_bundle", None)
        if bundle is None:  # an interrupted run: the answer is still retained on the broker
            bundle = self._claim()
        if bundle.get("device_id") != self.params.device_id:
            raise ProvisionError(
                "install",
                f"the bundle is for {bundle.get('device_id')}, not {self.params.device_id}",
                "report this to the fleet administrator",
            )
        enrollment = bundle.get("enrollment_key")
        if not enrollment and not self.o.without_enrollment_key:
            # Checked before anything is written. Biometric records are sealed to this key at
            # capture (docs/enrollment.md): a kiosk without it refuses every enrollment session.
            raise ProvisionError(
                "install",
                "the fleet's trust bundle carries no enrollment key (trust.enrollment_key): "
                "this kiosk could not seal biometric records and would refuse every enrollment",
                "the fleet administrator copies the central service's enrollment.pub into the "
                "fleet home and gives a new claim token; re-run 'appliance provision --reset "
                "--claim-token NEW' and the administrator approves again ('appliance fleet approve "
                f"{self.params.device_id}'). For a kiosk that will not enroll yet: "
                "re-run with --without-enrollment-key (logged; the self-test keeps failing)",
                code=ErrorCode.NOT_PROVISIONED,
            )
        trust = self.state_dir / "trust"
        trust.mkdir(parents=True, exist_ok=True, mode=0o755)
        roots = bundle.get("root_keys") or []
        if not roots:
            raise ProvisionError(
                "install", "the bundle carries no fleet root key", "report to the administrator"
            )
        for old in trust.glob("root-*.pub"):
            old.unlink()
        for i, text in enumerate(roots):
            parse_public_key(text)
            write_public_file(trust / f"root-{i}.pub", (text.strip() + "\n").encode())
        if enrollment:
            parse_enrollment_public_key(enrollment)
            write_public_file(trust / "enrollment.pub", (enrollment.strip() + "\n").encode())
        else:
            (trust / "enrollment.pub").unlink(missing_ok=True)
            log.warning(
                "provisioning %s WITHOUT an enrollment key (--without-enrollment-key): "
                "enrollment sessions will be refused",
                self.params.device_id,
            )
            self.o.out(
                "WARNING: no enrollment key installed (--without-enrollment-key): this kiosk "
                "refuses enrollment until trust.enrollment_key is set"
            )
        tls = bundle.get("tls") or {}
        tdir = self.state_dir / "tls"
        if tls.get("cert") and tls.get("key"):
            tdir.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(tdir / "device.key", tls["key"].encode(), mode=0o600)
            atomic_write(tdir / "device.crt", tls["cert"].encode(), mode=0o644)
            if tls.get("ca"):
                atomic_write(tdir / "ca.crt", tls["ca"].encode(), mode=0o644)
        cfg = self._write_config(self._config_data(bundle))
        for name in (BOX_KEY, TOKEN_FILE):
            (self.pdir / name).unlink(missing_ok=True)
        what = [f"fleet root {bundle.get('fleet')}"]
        what.append(
            "enrollment key"
            if enrollment
            else "NO enrollment key (opted out with --without-enrollment-key)"
        )
        if tls.get("cert"):
            what.append("broker certificate")
        groups = ",".join(cfg.device.groups) or "-"
        return f"installed {', '.join(what)}; groups {groups}; signed commands only"

    # 6 ------------------------------------------------------------------------------------

    def step_verify(self) -> str:
        cfg = self._cfg()
        cert_file = cfg.mqtt.tls.cert_file if cfg.mqtt.tls.enabled else None
        if cert_file is not None:
            # The broker's ACLs key on the certificate's CN (provisioning/acl.template): a
            # kiosk still holding the shared claimant certificate would connect fine and then
            # be allowed nothing.
            from cryptography import x509
            from cryptography.x509.oid import NameOID

            try:
                cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
            except (OSError, ValueError) as exc:
                raise ProvisionError(
                    "verify", f"cannot read {cert_file}: {exc}", "re-run 'appliance provision'"
                ) from None
            cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
            if cns != [cfg.device.id]:
                raise ProvisionError(
                    "verify",
                    f"the broker certificate {cert_file} is for {cns}, not {cfg.device.id}: the "
                    "broker's ACLs would give this kiosk none of its topics",
                    "ask the administrator to approve with --ca-dir (the fleet issues the "
                    "kiosk's certificate), or install the kiosk's own certificate and re-run "
                    "'appliance provision --reset ... --cert kiosk.crt --key kiosk.key'",
                )
        chk = check_broker(cfg, self.o.broker_timeout_s)
        if chk.failed:
            raise ProvisionError(
                "verify",
                f"the broker does not accept the final settings: {chk.detail}",
                "check the issued certificate and [mqtt] host (it must be in the broker "
                "certificate's names); re-run 'appliance provision' after fixing",
            )
        return chk.detail

    def _summary(self) -> None:
        cfg = self._cfg()
        ident = DeviceIdentity.load(self.state_dir)
        self.o.out("")
        self.o.out(f"Kiosk {cfg.device.id} is provisioned.")
        self.o.out(f"  site          {cfg.device.site or '-'}")
        self.o.out(f"  groups        {', '.join(cfg.device.groups) or '-'}")
        self.o.out(f"  device key    {ident.key_id}  ({self.state_dir / 'device.key'}, 0600)")
        self.o.out(f"  configuration {self.o.config_path}")
        tls = " TLS" if cfg.mqtt.tls.enabled else ""
        self.o.out(f"  broker        {cfg.mqtt.host}:{cfg.mqtt.port}{tls}")
        self.o.out(
            f"  trust         {len(cfg.trust.root_keys)} fleet root key(s); unsigned "
            "commands refused"
        )
        self.o.out(
            f"  enrollment    records sealed to {cfg.trust.enrollment_key}"
            if cfg.trust.enrollment_key is not None
            else "  enrollment    NO enrollment key: enrollment refused (--without-enrollment-key)"
        )
        self.o.out("Next: systemctl enable --now appliance   (then: appliance status)")


def reset(state_dir: Path) -> None:
    """Forget the provisioning progress (not the device key, which identifies the kiosk)."""
    shutil.rmtree(state_dir / PROV_DIR, ignore_errors=True)
