"""``appliance provision`` end to end against a REAL mosquitto with mutual TLS and the
provisioning/ ACLs: the technician's kiosk claims with a one-time token through the shared
claimant certificate, the administrator approves with ``appliance fleet approve`` (which
issues the kiosk's broker certificate), the kiosk installs its trust bundle and then runs as
a fleet member: the daemon connects with its new certificate and answers a signed command
whose reply ``appliance fleet send`` verifies. Reused and unknown tokens are refused, and an
interrupted provisioning resumes."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from appliance.config import load
from appliance.fleet.conn import FleetMqtt
from appliance.fleet.registry import FleetRegistry
from appliance.provisioning.claim import parse_request
from appliance.trust.certs import ROOT_PUB_FILE, FleetRoot
from appliance.trust.keys import DeviceIdentity, load_public_key
from appliance.trust.sealed import EnrollmentKeyPair

from .tlsbroker import REPO, TlsBroker, tls_broker

PY = sys.executable


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    with tls_broker(tmp_path_factory.mktemp("tlsbroker")) as b:
        yield b


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "fleet"
    FleetRoot.create(h)
    EnrollmentKeyPair.generate().save(h)
    return h


@pytest.fixture
def bare_profiles(tmp_path: Path) -> Path:
    """A kit profile with every device disabled, for the claim tests that are not about
    hardware (the simulated kit is exercised by the end-to-end test and test_selftest)."""
    d = tmp_path / "profiles"
    d.mkdir()
    for name in os.listdir(REPO / "firmware_profiles"):
        if name.endswith(".toml"):
            (d / name).write_text((REPO / "firmware_profiles" / name).read_text())
    (d / "bare.toml").write_text(
        "[simulation]\nfingerprint = false\ncard = false\n"
        "[hardware.camera]\nenabled = false\n[hardware.fingerprint]\nenabled = false\n"
        "[hardware.card]\nenabled = false\n"
    )
    return d


def env(home: Path, profiles: Path | None = None) -> dict[str, str]:
    e = {**os.environ, "APPLIANCE_FLEET_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    if profiles is not None:
        e["APPLIANCE_PROFILES_DIR"] = str(profiles)
    return e


def token_for(home: Path, *extra: str) -> str:
    out = subprocess.run(
        [PY, "-m", "appliance.fleet.claimtokencli", "--home", str(home), *extra],
        check=True, capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    return out.stdout.strip()


def provision(
    kiosk: Path, broker: TlsBroker, e: dict[str, str], *args: str, first: bool = True
) -> subprocess.Popen[str]:
    cmd = [PY, "-m", "appliance.provisioning.cli", "--config", str(kiosk / "appliance.toml"),
           "--state-dir", str(kiosk / "state")]  # fmt: skip
    if first:
        cmd += ["--broker", f"localhost:{broker.port}", "--ca", str(broker.certs / "ca.crt"),
                "--cert", str(broker.certs / "claimant.crt"),
                "--key", str(broker.certs / "claimant.key")]  # fmt: skip
    return subprocess.Popen(
        [*cmd, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e, cwd=REPO
    )


def approve(
    broker: TlsBroker, home: Path, device: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "appliance.fleet.approvecli", device, "--home", str(home),
         *broker.flags(), *extra],
        check=False, capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip


def wait_request(
    broker: TlsBroker, device: str, proc: subprocess.Popen[str], token: str | None = None
) -> bytes:
    """The kiosk's retained claim request (made with ``token`` if given), as the controller
    sees it."""
    with FleetMqtt(broker.opts()) as m:
        topic = f"kiosk/claims/{device}/request"
        q = m.collector(topic)
        m.subscribe([topic])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"provision exited early: {proc.communicate()}")
            try:
                msg = q.get(timeout=0.2)
            except queue.Empty:
                continue
            if msg.payload and (
                token is None or parse_request(msg.payload).token_id == token.split(".")[0]
            ):
                return msg.payload
    raise AssertionError("no claim request")


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """The simulated kit's pcscd socket lives in the state dir: AF_UNIX paths are limited to
    108 bytes, more than pytest's tmp_path leaves, so this kiosk lives in a short /tmp dir."""
    d = Path(tempfile.mkdtemp(prefix="pv-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_provision_end_to_end_interrupted_then_resumed(
    broker: TlsBroker, home: Path, tmp_path: Path, short_dir: Path
) -> None:
    kiosk = short_dir
    e = env(home)
    token = token_for(home, "--device", "kiosk-e1", "--group", "hanoi", "--site", "Ha Noi 1")
    p = provision(kiosk, broker, e, "--device-id", "kiosk-e1", "--profile", "sim",
                  "--claim-token", token, "--wait", "120")  # fmt: skip
    wait_request(broker, "kiosk-e1", p)
    # The technician's session dies while waiting for the approval.
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=10)
    state = json.loads((kiosk / "state" / "provision" / "state.json").read_text())
    assert set(state["done"]) == {"keys", "config", "selftest"}
    key_before = DeviceIdentity.load(kiosk / "state").key_id

    a = approve(broker, home, "kiosk-e1", "--yes", "--ca-dir", str(broker.ca_dir))
    assert a.returncode == 0, a.stderr
    assert "approved kiosk-e1" in a.stdout and "broker certificate issued" in a.stdout
    assert "groups hanoi," in a.stdout, a.stdout  # the group, not a Python list

    # No secret travels in clear: the retained answer (readable by every claimant) holds
    # no private key, only the sealed bundle.
    with FleetMqtt(broker.opts("claimant")) as m:
        q = m.collector("kiosk/claims/kiosk-e1/response")
        m.subscribe(["kiosk/claims/kiosk-e1/response"])
        answer = q.get(timeout=10).payload
    assert b"PRIVATE KEY" not in answer and b"BEGIN" not in answer

    rc, out, err = finish(provision(kiosk, broker, e, first=False))
    assert rc == 0, out + err
    assert "[1/6] keys      done earlier" in out and "[3/6] selftest  done earlier" in out
    assert "Kiosk kiosk-e1 is provisioned." in out
    assert "; groups hanoi; signed commands only" in out, out
    state_dir = kiosk / "state"
    assert DeviceIdentity.load(state_dir).key_id == key_before  # the identity survived
    assert (state_dir / "device.key").stat().st_mode & 0o777 == 0o600
    assert (state_dir / "tls" / "device.key").stat().st_mode & 0o777 == 0o600
    assert not (state_dir / "provision" / "claim-box.key").exists()
    cert = x509.load_pem_x509_certificate((state_dir / "tls" / "device.crt").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=kiosk-e1"
    cfg = load(kiosk / "appliance.toml", environ={}, require_file=True)
    assert cfg.device.id == "kiosk-e1" and cfg.device.groups == ["hanoi"]
    assert cfg.device.site == "Ha Noi 1"
    assert cfg.commands.allow_unsigned is False and cfg.mqtt.tls.enabled
    assert [load_public_key(p) for p in cfg.trust.root_keys] == [
        load_public_key(home / ROOT_PUB_FILE)
    ]
    assert cfg.trust.enrollment_key is not None
    assert cfg.trust.enrollment_key.read_text() == (home / "enrollment.pub").read_text()
    rec = FleetRegistry(home).device("kiosk-e1")
    assert rec is not None and rec.key_id == key_before and rec.groups == ["hanoi"]
    # The retained claim request was cleared by the kiosk.
    with FleetMqtt(broker.opts()) as m:
        q = m.collector("kiosk/claims/kiosk-e1/request")
        m.subscribe(["kiosk/claims/kiosk-e1/request"])
        m.publish("kiosk/kiosk-e1/cmd", b"marker")  # ordered delivery: after any retained
        with pytest.raises(queue.Empty):
            q.get(timeout=0.5)

    # The provisioned kiosk runs: the daemon connects with the issued certificate, and a
    # signed command's reply is verified with the key registered at approval.
    from appliance.fleet.keys import generate_operator_key, issue_operator, write_certificate

    pub = generate_operator_key(home, "operator")
    write_certificate(
        home / "operator.cert",
        issue_operator(home, pub, roles=["operator"], devices=["kiosk-e1"],
                       not_after=int(time.time()) + 3600, name="op"),
    )  # fmt: skip
    with (tmp_path / "daemon.log").open("wb") as log:
        daemon = subprocess.Popen(
            [PY, "-m", "appliance", "run", "--config", str(kiosk / "appliance.toml"),
             "--state-dir", str(state_dir)],
            stdout=subprocess.DEVNULL, stderr=log, env=e, cwd=REPO,
        )  # fmt: skip
    try:
        with FleetMqtt(broker.opts()) as m:
            q = m.collector("kiosk/kiosk-e1/status")
            m.subscribe(["kiosk/kiosk-e1/status"])
            deadline = time.monotonic() + 60
            while True:
                assert time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()
                try:
                    st = json.loads(q.get(timeout=0.5).payload)
                except queue.Empty:
                    continue
                if st.get("online"):
                    break
        s = subprocess.run(
            [PY, "-m", "appliance.fleet.sendcli", "kiosk-e1", "ping", "echo=hi", "--home",
             str(home), "--json", *broker.flags()],
            check=False, capture_output=True, text=True, cwd=REPO, timeout=60,
        )  # fmt: skip
        assert s.returncode == 0, s.stdout + s.stderr
        line = json.loads(s.stdout)
        assert line["verified"] == "ok" and line["reply"]["result"]["echo"] == "hi"
    finally:
        daemon.terminate()
        daemon.wait(20)


def test_reused_and_unknown_tokens_are_refused(
    broker: TlsBroker, home: Path, tmp_path: Path, bare_profiles: Path
) -> None:
    e = env(home, bare_profiles)
    shared = token_for(home)  # not bound to a device id

    def claim(device: str, token: str) -> tuple[subprocess.Popen[str], Path]:
        kiosk = tmp_path / device
        p = provision(kiosk, broker, e, "--device-id", device, "--profile", "bare",
                      "--claim-token", token, "--wait", "60")  # fmt: skip
        wait_request(broker, device, p)
        return p, kiosk

    ca = ("--ca-dir", str(broker.ca_dir))
    p1, _k1 = claim("kiosk-r1", shared)
    assert approve(broker, home, "kiosk-r1", "--yes", *ca).returncode == 0
    assert finish(p1)[0] == 0

    # The same token again, from another kiosk: refused, and the kiosk is told why.
    p2, k2 = claim("kiosk-r2", shared)
    a = approve(broker, home, "kiosk-r2", "--yes", *ca)
    assert a.returncode == 1 and "token_used" in a.stderr
    rc, out, err = finish(p2)
    assert rc == 1, out + err
    assert "token_used" in err and "new claim token" in err
    assert FleetRegistry(home).device("kiosk-r2") is None

    # A token this fleet never issued: refused without a MAC (the fleet has no secret).
    p3, _k3 = claim("kiosk-r3", "t00000000.AAAAAAAAAAAAAAAAAAAA")
    a = approve(broker, home, "kiosk-r3", "--yes")
    assert a.returncode == 1 and "token_unknown" in a.stderr
    rc, out, err = finish(p3)
    assert rc == 1 and "token_unknown" in err and "unauthenticated" in err

    # kiosk-r2 resumes with a fresh token and completes.
    fresh = token_for(home, "--device", "kiosk-r2")
    p2 = provision(k2, broker, e, "--claim-token", fresh, "--wait", "60", first=False)
    wait_request(broker, "kiosk-r2", p2, fresh)
    assert approve(broker, home, "kiosk-r2", "--yes", *ca).returncode == 0
    rc, out, err = finish(p2)
    assert rc == 0, out + err
    assert "done earlier" in out
    reg = FleetRegistry(home)
    assert {d.device_id for d in reg.devices()} == {"kiosk-r1", "kiosk-r2"}
    used = [t for t in reg.tokens() if t.used_by]
    assert sorted(t.used_by or "" for t in used) == ["kiosk-r1", "kiosk-r2"]


def test_claimant_certificate_left_in_place_fails_verify(
    broker: TlsBroker, home: Path, tmp_path: Path, bare_profiles: Path
) -> None:
    """Approved without a kiosk certificate, the kiosk would keep the shared claimant
    certificate, which the ACLs allow nothing: the verify step says so and what to do."""
    e = env(home, bare_profiles)
    p = provision(tmp_path / "k", broker, e, "--device-id", "kiosk-v1", "--profile", "bare",
                  "--claim-token", token_for(home), "--wait", "60")  # fmt: skip
    wait_request(broker, "kiosk-v1", p)
    assert approve(broker, home, "kiosk-v1", "--yes").returncode == 0
    rc, out, err = finish(p)
    assert rc == 1, out + err
    assert "FAILED at step verify" in err and "['claimant'], not kiosk-v1" in err
    assert "--ca-dir" in err


def test_waiting_for_approval_exits_3_and_explains(
    broker: TlsBroker, home: Path, tmp_path: Path, bare_profiles: Path
) -> None:
    e = env(home, bare_profiles)
    p = provision(tmp_path / "k", broker, e, "--device-id", "kiosk-w1", "--profile", "bare",
                  "--claim-token", token_for(home), "--wait", "0.5")  # fmt: skip
    rc, out, err = finish(p)
    assert rc == 3, out + err
    assert "appliance fleet approve kiosk-w1" in out
    # Missing first-run options: usage error naming them.
    p = provision(tmp_path / "k2", broker, e, first=False)
    rc, out, err = finish(p)
    assert rc == 2 and "--device-id" in err and "--profile" in err
