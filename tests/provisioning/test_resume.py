"""Resumability at every step boundary, in-process against a real mosquitto: a run that dies
after the claim was answered but before the trust bundle was installed (a power cut, here a
raised SystemExit at that point) is completed by the next run from the answer retained on the
broker; ``approve --deny`` refuses; configuration problems and foreign files are explained."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from appliance.devtools.broker import Mosquitto
from appliance.fleet import approvecli, claimtokencli
from appliance.fleet.registry import FleetRegistry
from appliance.provisioning import cli as provcli
from appliance.provisioning.flow import Options, Params, Provisioner, ProvisionError
from appliance.trust.certs import FleetRoot
from appliance.trust.sealed import EnrollmentKeyPair

from .tlsbroker import REPO


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for name in os.listdir(REPO / "firmware_profiles"):
        if name.endswith(".toml"):
            (profiles / name).write_text((REPO / "firmware_profiles" / name).read_text())
    (profiles / "bare.toml").write_text(
        "[simulation]\nfingerprint = false\ncard = false\n"
        "[hardware.camera]\nenabled = false\n[hardware.fingerprint]\nenabled = false\n"
        "[hardware.card]\nenabled = false\n"
    )
    monkeypatch.setenv("APPLIANCE_PROFILES_DIR", str(profiles))
    FleetRoot.create(tmp_path / "home")
    EnrollmentKeyPair.generate().save(tmp_path / "home")  # sent in every trust bundle
    return tmp_path


def token(home: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    assert claimtokencli.main(["--home", str(home), *extra]) == 0
    return capsys.readouterr().out.strip()


def opts(tmp: Path, broker: Mosquitto, device: str, tok: str | None, lines: list[str]) -> Options:
    return Options(
        config_path=tmp / f"{device}.toml",
        state_dir=tmp / device,
        params=Params(device_id=device, profile="bare", host=broker.host, port=broker.port),
        token=tok,
        wait_s=0.3,
        out=lines.append,
    )


def test_crash_between_claim_and_install_resumes_from_the_retained_answer(
    setup: Path, broker: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    home = setup / "home"
    tok = token(home, capsys, "--device", "kiosk-c1", "--group", "g1")
    lines: list[str] = []
    o = opts(setup, broker, "kiosk-c1", tok, lines)
    with pytest.raises(Exception, match="no answer yet"):
        Provisioner(o).run()  # the request is on the broker, nobody approved yet
    broker_flags = ["--home", str(home), "--host", broker.host, "--port", str(broker.port)]
    assert approvecli.main(["kiosk-c1", "--yes", *broker_flags]) == 0
    capsys.readouterr()

    class PowerCut(BaseException):
        pass

    def cut(_self: Provisioner) -> str:
        raise PowerCut

    o2 = opts(setup, broker, "kiosk-c1", None, lines)
    o2.wait_s = 10
    p = Provisioner(o2)
    p.step_install = cut.__get__(p)  # type: ignore[method-assign]
    with pytest.raises(PowerCut):
        p.run()
    state = json.loads((setup / "kiosk-c1" / "provision" / "state.json").read_text())
    assert "claim" in state["done"] and "install" not in state["done"]
    assert not (setup / "kiosk-c1" / "trust").exists()

    lines.clear()
    assert Provisioner(o2).run() == 0
    assert any("[4/6] claim     done earlier" in x for x in lines), lines
    assert any("Kiosk kiosk-c1 is provisioned." in x for x in lines)
    assert (setup / "kiosk-c1" / "trust" / "root-0.pub").read_text() == (
        home / "root.pub"
    ).read_text()
    # A finished provisioning re-run changes nothing and says so.
    lines.clear()
    assert Provisioner(o2).run() == 0
    assert all("done earlier" in x for x in lines[:6]), lines


def test_deny_and_explanations(
    setup: Path, broker: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    home = setup / "home"
    tok = token(home, capsys)
    lines: list[str] = []
    with pytest.raises(Exception, match="no answer yet"):
        Provisioner(opts(setup, broker, "kiosk-d1", tok, lines)).run()
    flags = ["--home", str(home), "--host", broker.host, "--port", str(broker.port)]
    assert approvecli.main(["kiosk-d1", "--deny", "unknown site", *flags]) == 1
    assert "denied" in capsys.readouterr().err
    o = opts(setup, broker, "kiosk-d1", None, lines)
    o.wait_s = 10
    with pytest.raises(ProvisionError) as err:
        Provisioner(o).run()
    assert err.value.code == "denied" and "unknown site" in err.value.message
    assert FleetRegistry(home).device("kiosk-d1") is None
    # No request on the broker (the kiosk cleared its refused one): approve explains.
    assert approvecli.main(["kiosk-d1", "--yes", "--timeout", "0.3", *flags]) == 1
    assert "no claim request from kiosk-d1" in capsys.readouterr().err
    # The token list shows the token unused (a denial does not burn it).
    assert claimtokencli.main(["--home", str(home), "--list"]) == 0
    assert "unused" in capsys.readouterr().out


def test_configuration_problems_are_explained(
    setup: Path, broker: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--state-dir", str(setup / "s"), "--device-id", "kiosk-x1",
            "--broker", f"{broker.host}:{broker.port}"]  # fmt: skip
    cfg = setup / "x.toml"
    # An unknown kit profile: the config step names the field and what to do.
    assert provcli.main(["--config", str(cfg), *base, "--profile", "nope"]) == 1
    err = capsys.readouterr().err
    assert "FAILED at step config" in err and "device.profile" in err and "next:" in err
    # A configuration file somebody else wrote is not overwritten without --force-config.
    cfg.write_text("# hand-made\n")
    assert provcli.main(["--config", str(cfg), *base, "--profile", "bare"]) == 1
    assert "--force-config" in capsys.readouterr().err
    assert cfg.read_text() == "# hand-made\n"
    # The same identity cannot be re-provisioned under another device id.
    assert provcli.main(["--config", str(cfg), *base, "--profile", "bare", "--force-config",
                         "--claim-token", "bad"]) == 1  # fmt: skip
    assert "a claim token looks like" in capsys.readouterr().err
    other = ["--state-dir", str(setup / "s"), "--device-id", "kiosk-x2"]
    assert provcli.main(["--config", str(cfg), *other]) == 2
    assert "provisioned as kiosk-x1" in capsys.readouterr().err
    # A bad --broker is a usage error of argparse (exit 2), never a traceback.
    with pytest.raises(SystemExit) as ex:
        provcli.main(["--broker", "host:notaport"])
    assert ex.value.code == 2


def test_corrected_broker_after_a_failed_selftest(
    setup: Path, broker: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    from appliance.devtools.broker import free_port

    cfg, state = setup / "b.toml", setup / "b"
    first = ["--config", str(cfg), "--state-dir", str(state), "--device-id", "kiosk-b9",
             "--profile", "bare", "--broker", f"127.0.0.1:{free_port()}",
             "--broker-timeout", "1"]  # fmt: skip
    assert provcli.main(first) == 1
    err = capsys.readouterr()
    assert "FAILED at step selftest: failed: broker" in err.err and "[FAIL] broker" in err.out
    # The technician corrects the broker: the configuration is written and tested again,
    # the key is kept, and the claim starts.
    again = ["--config", str(cfg), "--state-dir", str(state),
             "--broker", f"{broker.host}:{broker.port}", "--claim-token",
             token(setup / "home", capsys), "--wait", "0.2"]  # fmt: skip
    assert provcli.main(again) == 3
    out = capsys.readouterr().out
    assert "note: changed port: configuration rewritten" in out
    assert "[1/6] keys      done earlier" in out and "[2/6] config    " in out
    assert f"port = {broker.port}" in cfg.read_text()


def test_tls_files_copied_once_survive_the_removed_originals(tmp_path: Path) -> None:
    """The technician's USB stick with the claimant certificate is gone when provisioning
    resumes the next day: the copies made on the first run are used."""
    stick = tmp_path / "usb"
    stick.mkdir()
    for name in ("ca.crt", "claimant.crt", "claimant.key"):
        (stick / name).write_text(f"-----{name}-----\n")
    p = Provisioner(
        Options(
            config_path=tmp_path / "c.toml",
            state_dir=tmp_path / "state",
            params=Params(
                device_id="kiosk-u1",
                profile="bare",
                host="h",
                ca_file=str(stick / "ca.crt"),
                cert_file=str(stick / "claimant.crt"),
                key_file=str(stick / "claimant.key"),
            ),
        )
    )
    first = p._copy_tls()
    key_copy = Path(first["key_file"])
    assert key_copy.stat().st_mode & 0o777 == 0o600
    for f in stick.iterdir():
        f.unlink()
    assert p._copy_tls() == first
    assert key_copy.read_text() == "-----claimant.key-----\n"


def test_a_bundle_without_the_enrollment_key_stops_unless_opted_out(
    setup: Path,
    broker: Mosquitto,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Biometric records are sealed to the central enrollment key: a kiosk that would finish
    without it could never enroll. Provisioning stops at the install step, writing nothing,
    unless the technician opts out explicitly; the opt-out is logged and recorded."""
    home = setup / "home"
    (home / "enrollment.pub").unlink()  # the fleet home has no enrollment key to send
    (home / "enrollment.key").unlink()
    tok = token(home, capsys, "--device", "kiosk-e1")
    lines: list[str] = []
    with pytest.raises(Exception, match="no answer yet"):
        Provisioner(opts(setup, broker, "kiosk-e1", tok, lines)).run()
    flags = ["--home", str(home), "--host", broker.host, "--port", str(broker.port)]
    assert approvecli.main(["kiosk-e1", "--yes", *flags]) == 0
    # The administrator is told before the bundle goes out, not only the technician after.
    assert "has no enrollment key (enrollment.pub)" in capsys.readouterr().err

    cli = ["--config", str(setup / "kiosk-e1.toml"), "--state-dir", str(setup / "kiosk-e1"),
           "--wait", "10"]  # fmt: skip
    assert provcli.main(cli) == 1
    err = capsys.readouterr().err
    assert "FAILED at step install" in err and "no enrollment key (trust.enrollment_key)" in err
    assert "--without-enrollment-key" in err
    assert not (setup / "kiosk-e1" / "trust").exists()  # nothing installed
    state = json.loads((setup / "kiosk-e1" / "provision" / "state.json").read_text())
    assert "install" not in state["done"]

    # The explicit opt-out: finishes from the answer retained on the broker, says so on the
    # terminal and in the log, and records it in the progress file.
    with caplog.at_level("WARNING", logger="appliance.provisioning.flow"):
        assert provcli.main([*cli, "--without-enrollment-key"]) == 0
    out = capsys.readouterr().out
    assert "WARNING: no enrollment key installed (--without-enrollment-key)" in out
    assert "enrollment    NO enrollment key" in out
    assert any("WITHOUT an enrollment key" in r.getMessage() for r in caplog.records)
    state = json.loads((setup / "kiosk-e1" / "provision" / "state.json").read_text())
    assert "opted out with --without-enrollment-key" in state["done"]["install"]["detail"]
    assert not (setup / "kiosk-e1" / "trust" / "enrollment.pub").exists()
    assert "enrollment_key" not in (setup / "kiosk-e1.toml").read_text()
