"""``appliance selftest`` on the simulated kit (emulators on a real pty and a private pcscd +
vpcd stack, the production drivers unchanged) and a real mosquitto; failing checks exit 1
with the next step to take."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import load
from appliance.devtools.broker import Mosquitto, free_port
from appliance.provisioning.selftest import check_clock, check_identity, check_trust
from appliance.trust.certs import FleetRoot
from appliance.trust.keys import DeviceIdentity
from appliance.trust.sealed import EnrollmentKeyPair

from .tlsbroker import REPO


@pytest.fixture
def kit() -> Iterator[Path]:
    # Short path: pcscd's socket lives in the state dir (AF_UNIX paths <= 108 bytes).
    d = Path(tempfile.mkdtemp(prefix="st-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def selftest(cfg: Path, state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance.provisioning.selftest", "--config", str(cfg),
         "--state-dir", str(state), *extra],
        check=False, capture_output=True, text=True, cwd=REPO, timeout=110,
    )  # fmt: skip


def test_selftest_passes_on_the_simulated_kit(broker: Mosquitto, kit: Path) -> None:
    cfg = kit / "a.toml"
    EnrollmentKeyPair.generate().save(kit / "central")
    cfg.write_text(
        f'[device]\nid = "kiosk-st"\nprofile = "sim"\n[mqtt]\nport = {broker.port}\n'
        f'[trust]\nenrollment_key = "{kit / "central" / "enrollment.pub"}"\n'
    )
    DeviceIdentity.create(kit / "state")
    r = selftest(cfg, kit / "state", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    status = {c["name"]: c["status"] for c in doc["checks"]}
    assert doc["ok"] is True and doc["failed"] == []
    assert status == {
        "clock": "ok",
        "identity": "ok",
        "trust": "skip",  # not provisioned: no fleet root key (the enrollment key loads)
        "camera": "ok",
        "fingerprint": "ok",
        "card": "ok",
        "broker": "ok",
    }
    detail = {c["name"]: c["detail"] for c in doc["checks"]}
    assert "frame 640x480" in detail["camera"]
    assert "r307 answers" in detail["fingerprint"]
    assert "Virtual PCD" in detail["card"]
    # The emulators were stopped with the check: nothing of theirs is left running.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert str(kit) not in ps.stdout


def test_failing_checks_exit_1_with_next_steps(kit: Path) -> None:
    cfg = kit / "a.toml"
    cfg.write_text(
        f'[device]\nid = "kiosk-st"\nprofile = "sim"\n[mqtt]\nport = {free_port()}\n'
        "[simulation]\nfingerprint = false\ncard = false\n"
        '[hardware.camera]\nsim_fault = "unplugged"\n'
        '[hardware.fingerprint]\nport = "/dev/null-no-such-sensor"\n'
        "[hardware.card]\nenabled = false\n"
    )
    r = selftest(cfg, kit / "state", "--device-timeout", "2", "--broker-timeout", "2")
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    assert "[FAIL] camera" in out and "[FAIL] fingerprint" in out and "[FAIL] broker" in out
    assert "[skip] card" in out and "disabled in the configuration" in out
    # No enrollment key configured: the kiosk could not seal records, so it is not ready.
    assert "[FAIL] trust" in out and "no enrollment key (trust.enrollment_key)" in out
    assert out.count("next: ") == 4
    assert "FAILED: trust, camera, fingerprint, broker" in out
    # An invalid configuration: exit 2 naming the field.
    cfg.write_text('[device]\nid = "kiosk-st"\nprofile = "sim"\n[mqtt]\nport = "x"\n')
    r = selftest(cfg, kit / "state")
    assert r.returncode == 2 and "mqtt.port" in r.stderr


def test_clock_and_identity_checks(tmp_path: Path) -> None:
    cfg = load(None, environ={})
    assert check_clock(cfg, tmp_path, now=0).status == "fail"  # 1970: no RTC, no NTP
    assert "before this software existed" in check_clock(cfg, tmp_path, now=0).detail
    assert check_clock(cfg, tmp_path, now=4_000_000_000).status == "fail"  # decades ahead
    assert check_clock(cfg, tmp_path, now=1_800_000_000).status == "ok"
    assert check_identity(tmp_path).status == "skip"
    DeviceIdentity.create(tmp_path)
    assert check_identity(tmp_path).status == "ok"
    (tmp_path / "device.key").chmod(0o644)
    from appliance.provisioning.selftest import _timed

    chk = _timed("identity", lambda: check_identity(tmp_path))
    assert chk.status == "fail" and "key_permissions" in chk.detail and "chmod 600" in chk.next_step


def test_clock_behind_the_newest_accepted_command_fails(tmp_path: Path) -> None:
    """A kiosk whose clock fell behind what it already accepted (the trust layer's time floor,
    read from its real store) is told so."""
    from appliance.store import Store
    from appliance.trust.envelope import TRUST_SCHEMA_SQL

    store = Store(tmp_path)
    with store.lock:
        for stmt in TRUST_SCHEMA_SQL:
            store.conn.execute(stmt)
        store.conn.execute("INSERT INTO trust_issuer_state VALUES ('k1', 5, 1900000000, 0)")
    store.close()
    cfg = load(None, environ={})
    chk = check_clock(cfg, tmp_path, now=1_899_000_000)
    assert chk.status == "fail" and "behind the newest accepted signed command" in chk.detail
    assert check_clock(cfg, tmp_path, now=1_900_000_100).status == "ok"


def test_trust_check_fails_without_the_enrollment_key(tmp_path: Path) -> None:
    """Provisioned (a fleet root key) but no enrollment key: fail, naming the key; with it: ok.
    Only provisioning's own self-test (before the trust bundle brings the key) lets it pass."""
    FleetRoot.create(tmp_path / "fleet")
    base = load(
        None, environ={"APPLIANCE_TRUST__ROOT_KEYS": f'["{tmp_path / "fleet" / "root.pub"}"]'}
    )
    chk = check_trust(base)
    assert chk.status == "fail", chk
    assert "no enrollment key (trust.enrollment_key)" in chk.detail
    assert "trust.enrollment_key" in chk.next_step
    assert check_trust(base, require_enrollment_key=False).status == "ok"
    EnrollmentKeyPair.generate().save(tmp_path / "central")
    pub = tmp_path / "central" / "enrollment.pub"
    base.trust.enrollment_key = pub
    chk = check_trust(base)
    assert chk.status == "ok" and f"enrollment key {pub}" in chk.detail
