"""Side-by-side install, atomic switch, trial, commit or automatic rollback, with real venvs,
real pip (offline, from the bundle's wheels) and real daemon processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.errors import Busy
from appliance.fleet.release import write_bundle
from appliance.update import guard as g
from appliance.update.bundle import UpdateError
from appliance.update.installer import STOP_AT_ENV, Updater

from .conftest import ReleaseKeys
from .kiosk import Kiosk
from .wheels import make_wheel

BEHAVIOURS = {"0.1.0": "ok", "0.2.0": "ok", "0.3.0": "crash", "0.4.0": "selftest_fails"}


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory, release_keys: ReleaseKeys) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("bundles")
    out = {}
    for version, behaviour in BEHAVIOURS.items():
        w = make_wheel(tmp / version, version, behaviour)
        out[version] = tmp / f"kioskdemo-{version}.bundle"
        write_bundle(out[version], release_keys.release, [w], w, min_from="0.1.0")
    return out


def make_kiosk(tmp: Path, keys: ReleaseKeys, bundles: dict[str, Path]) -> Kiosk:
    """A kiosk running 0.1.0, installed and committed through the same steps."""
    root, state = tmp / "opt", tmp / "state"
    state.mkdir()
    # The stand-in releases never install a next one themselves: no pip in their venvs.
    up = Updater(root, state, roots=[keys.root_pub], entry="kioskdemo", ensure_pip=False)
    k = Kiosk(root, state, up)
    up.stage(bundles["0.1.0"])
    up.switch()
    assert k.start() == "0.1.0"
    assert up.verdict(True, "first install")["state"] == "committed"
    return k


@pytest.fixture
def kiosk(tmp_path: Path, release_keys: ReleaseKeys, bundles: dict[str, Path]) -> Iterator[Kiosk]:
    k = make_kiosk(tmp_path, release_keys, bundles)
    yield k
    k.stop()


def _update(k: Kiosk, bundle: Path) -> str | None:
    k.up.stage(bundle)
    assert k.current() == "releases/0.1.0"  # the install did not touch the running version
    k.up.switch()
    k.stop()  # the daemon restarts itself after the switch
    return k.start()


def test_update_commits_after_a_healthy_trial(kiosk: Kiosk, bundles: dict[str, Path]) -> None:
    assert _update(kiosk, bundles["0.2.0"]) == "0.2.0"
    assert kiosk.up.journal["state"] == "trial"  # type: ignore[index]
    j = kiosk.up.verdict(True, "broker reachable, devices healthy")
    assert j["state"] == "committed" and "selftest passed" in j["reason"]
    assert kiosk.current() == "releases/0.2.0"
    kiosk.stop()
    assert kiosk.start() == "0.2.0"  # a later start is a plain start
    assert kiosk.up.journal["state"] == "committed"  # type: ignore[index]


def test_release_crashing_on_start_rolls_back_by_itself(
    kiosk: Kiosk, bundles: dict[str, Path]
) -> None:
    assert _update(kiosk, bundles["0.3.0"]) is None  # the new daemon dies on start
    assert kiosk.run_until_up() == "0.1.0"  # the next start's guard rolled back
    j = kiosk.up.journal
    assert j is not None and j["state"] == "rolled_back" and "before a verdict" in j["reason"]
    assert kiosk.current() == "releases/0.1.0"


def test_release_failing_its_selftest_rolls_back(kiosk: Kiosk, bundles: dict[str, Path]) -> None:
    assert _update(kiosk, bundles["0.4.0"]) == "0.4.0"
    j = kiosk.up.verdict(True, "broker reachable, devices healthy")
    assert j["state"] == "rolled_back" and "selftest of the new version failed" in j["reason"]
    assert kiosk.current() == "releases/0.1.0"
    kiosk.stop()
    assert kiosk.start() == "0.1.0"


def test_guard_runs_the_selftest_before_the_new_daemon_starts(
    kiosk: Kiosk, bundles: dict[str, Path]
) -> None:
    """As the shipped unit does (ExecStartPre ... --selftest): a failing self-test rolls back
    before the new release's daemon ever runs; a passing one is recorded for the verdict."""
    kiosk.selftest = "selftest"
    assert _update(kiosk, bundles["0.4.0"]) == "0.1.0"  # 0.4.0 never started
    j = kiosk.up.journal
    assert j is not None and j["state"] == "rolled_back"
    assert j["reason"].startswith("update_selftest_failed:")
    assert _update(kiosk, bundles["0.2.0"]) == "0.2.0"
    j = kiosk.up.journal
    assert j is not None and j["state"] == "trial" and j["selftest"] == "selftest passed"
    assert kiosk.up.verdict(True, "healthy")["state"] == "committed"


def test_unhealthy_trial_rolls_back(kiosk: Kiosk, bundles: dict[str, Path]) -> None:
    assert _update(kiosk, bundles["0.2.0"]) == "0.2.0"
    j = kiosk.up.verdict(False, "broker unreachable after 60 s")
    assert j["state"] == "rolled_back" and j["reason"] == "broker unreachable after 60 s"
    assert kiosk.current() == "releases/0.1.0"


def test_no_switch_during_an_enrollment_session(kiosk: Kiosk, bundles: dict[str, Path]) -> None:
    active = [True]
    kiosk.up.session_active = lambda: active[0]
    kiosk.up.stage(bundles["0.2.0"])
    with pytest.raises(Busy):
        kiosk.up.switch()
    assert kiosk.current() == "releases/0.1.0"
    active[0] = False
    assert kiosk.up.switch()["state"] == "switched"


def test_no_space_refused_before_anything_is_made(kiosk: Kiosk, bundles: dict[str, Path]) -> None:
    kiosk.up.min_free_bytes = 1 << 60
    with pytest.raises(UpdateError) as exc:
        kiosk.up.stage(bundles["0.2.0"])
    assert exc.value.code == "update_no_space"
    assert not (kiosk.root / g.RELEASES / "0.2.0").exists()
    assert kiosk.up.journal["state"] == "failed"  # type: ignore[index]


def test_downgrade_refused_by_the_kiosk(kiosk: Kiosk, bundles: dict[str, Path]) -> None:
    _update(kiosk, bundles["0.2.0"])
    kiosk.up.verdict(True, "ok")
    with pytest.raises(UpdateError) as exc:
        kiosk.up.stage(bundles["0.1.0"])
    assert exc.value.code == "release_downgrade"
    j = kiosk.up.journal
    assert j is not None and j["state"] == "failed" and "release_downgrade" in j["reason"]


# -- power cuts: kill -9 at every step -----------------------------------------------------


def _await_state(k: Kiosk, state: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        j = k.up.journal
        reached = j is not None and j.get("from") is not None
        reached = reached and j is not None and j["state"] == state.split(".", maxsplit=1)[0]
        venv = state != "installing.venv" or (k.root / g.RELEASES / "0.2.0" / "bin").exists()
        if reached and venv:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the installer ended ({proc.returncode}) before {state}")
        time.sleep(0.02)  # ok: poll of a condition wait (journal state or exit)
    raise AssertionError(f"the journal never reached {state}")


def _works(k: Kiosk) -> str:
    """The version ``current`` runs: it must always be a complete environment."""
    exe = k.root / g.CURRENT / "bin" / "kioskdemo"
    return subprocess.run(
        [str(exe), "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.parametrize(
    "step", ["verifying", "installing", "installing.venv", "installed", "switching", "switched"]
)
def test_power_cut_at_each_step_resumes_or_rolls_back(
    kiosk: Kiosk, bundles: dict[str, Path], release_keys: ReleaseKeys, step: str
) -> None:
    cmd = [
        sys.executable, "-m", "appliance.update.installer", "--root", str(kiosk.root),
        "--state-dir", str(kiosk.state), "--root-key", str(release_keys.home / "root.pub"),
        "--entry", "kioskdemo", "--no-ensure-pip", "stage", str(bundles["0.2.0"]), "--switch",
    ]  # fmt: skip
    env = {**os.environ, STOP_AT_ENV: step}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _await_state(kiosk, step, proc)
    finally:
        proc.kill()  # SIGKILL: no handler, no cleanup, like a power cut
        proc.wait()
    assert _works(kiosk) in ("0.1.0", "0.2.0")
    # The power comes back: systemd starts the daemon (guard first), which resumes the update.
    kiosk.stop()
    first = kiosk.start()
    kiosk.up.resume()
    j = kiosk.up.journal
    assert j is not None
    if j["state"] == "installed":  # the daemon switches once idle, and restarts
        assert first == "0.1.0"
        kiosk.up.switch()
        kiosk.stop()
        assert kiosk.start() == "0.2.0"
    j = kiosk.up.journal
    assert j is not None and j["state"] == "trial", j
    assert kiosk.up.verdict(True, "healthy")["state"] == "committed"
    assert _works(kiosk) == "0.2.0" and kiosk.current() == "releases/0.2.0"


def test_power_cut_during_the_trial_rolls_back(kiosk: Kiosk, bundles: dict[str, Path]) -> None:
    assert _update(kiosk, bundles["0.2.0"]) == "0.2.0"
    assert kiosk.proc is not None
    kiosk.proc.kill()  # the trial's daemon dies before its verdict
    kiosk.proc.wait()
    kiosk.proc = None
    assert kiosk.start() == "0.1.0"
    j = kiosk.up.journal
    assert j is not None and j["state"] == "rolled_back"


def test_power_cut_during_a_rollback_finishes_it(kiosk: Kiosk, bundles: dict[str, Path]) -> None:
    assert _update(kiosk, bundles["0.2.0"]) == "0.2.0"
    j = kiosk.up.journal
    assert j is not None
    # What a rollback journals before it flips the link back, then the power goes.
    g.set_state(kiosk.state, j, "rolling_back", reason="broker unreachable")
    assert kiosk.current() == "releases/0.2.0"
    kiosk.stop()
    assert kiosk.start() == "0.1.0"
    j = kiosk.up.journal
    assert j is not None and j["state"] == "rolled_back" and j["reason"] == "broker unreachable"
