"""Citizens' details (file and synthetic), the LDS built from a verified enrollment, and the
CLIs' refusals of bad usage."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest

from appliance.central import enrollcli, issuecli, receivecli
from appliance.central.citizens import (
    CitizenDirectory,
    CitizenUnknown,
    load_citizens,
    synthetic_citizen,
)
from appliance.central.issue import DocumentSigner, build_for_enrollment
from appliance.central.package import split_package
from appliance.central.receiver import ReceiverCore, registry_device_keys
from appliance.central.testkit import build_package, standard_records
from appliance.errors import ApplianceError, ConfigError, TrustError
from appliance.lds.files import decode_dg2, decode_dg13
from appliance.lds.issuance import verify_package
from appliance.lds.mrz import parse_td1
from appliance.lds.testpki import make_test_pki, write_test_pki
from tests.central.conftest import DEVICE, Fleet


def test_synthetic_citizen_is_deterministic_and_well_formed() -> None:
    a, b = (
        synthetic_citizen("CIT-1", today=dt.date(2026, 11, 22)),
        synthetic_citizen("CIT-1", today=dt.date(2026, 11, 22)),
    )
    assert a == b
    assert synthetic_citizen("CIT-2") != a
    for ref in (f"CIT-{i}" for i in range(40)):
        c = synthetic_citizen(ref, today=dt.date(2026, 11, 22))
        assert len(c.personal_id) == 12 and c.personal_id.isdigit()
        century_sex = int(c.personal_id[3])
        assert century_sex == (0 if c.date_of_birth.year < 2000 else 2) + (c.sex == "F")
        assert c.personal_id[4:6] == f"{c.date_of_birth.year % 100:02d}"
        assert c.date_of_expiry is not None and c.date_of_expiry > dt.date(2026, 11, 22)
        mrz = parse_td1(c.td1().text())  # every check digit verifies
        assert mrz.document_number == c.personal_id
        assert c.dg13().sex in ("Nam", "Nữ")


def test_citizen_file_entries_and_errors(tmp_path: Path) -> None:
    good = {
        "CIT-9": {
            "personal_id": "001190012345",
            "full_name": "Nguyễn Thị Mai",
            "date_of_birth": "1990-02-15",
            "sex": "F",
            "date_of_expiry": "2030-02-15",
        }
    }
    path = tmp_path / "citizens.json"
    path.write_text(json.dumps(good, ensure_ascii=False))
    directory = CitizenDirectory(path)
    c = directory.get("CIT-9")
    assert c.td1().text().startswith("IDVNM001190012")
    with pytest.raises(CitizenUnknown):
        directory.get("CIT-10")
    assert CitizenDirectory(path, synthetic=True).get("CIT-10").citizen_ref == "CIT-10"
    bad = {
        "A": {"personal_id": "12", "full_name": "X", "date_of_birth": "soon", "sex": "?"},
        "B": 3,
    }
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError) as info:
        load_citizens(path)
    where = {p for p, _r in info.value.problems}
    assert {"A.personal_id", "A.full_name", "A.date_of_birth", "A.sex", "B"} <= where
    path.write_text("{not json")
    with pytest.raises(ConfigError):
        load_citizens(path)
    # No expiry: the MRZ cannot be written, and the error says why.
    nodate = {**good["CIT-9"]}
    del nodate["date_of_expiry"]
    path.write_text(json.dumps({"CIT-9": nodate}))
    with pytest.raises(ApplianceError) as err:
        CitizenDirectory(path).get("CIT-9").td1()
    assert err.value.code == "citizen_incomplete"


def test_lds_from_a_verified_enrollment_passes_the_kiosks_checks(
    fleet: Fleet, tmp_path: Path
) -> None:
    built = build_package(
        fleet.kiosk, fleet.enrollment.public_key, device=DEVICE, records=standard_records((2,))
    )
    core = ReceiverCore(
        fleet.store,
        fleet.enrollment,
        fleet.ingest,
        registry_device_keys(fleet.home),
        lambda _t, _p: True,
        background=False,
    )
    for c in split_package(built.package_id, built.data):
        core.handle(f"kiosk/{DEVICE}/upload/{built.package_id}", c)
    pki = make_test_pki()
    paths = write_test_pki(pki, tmp_path / "pki")
    signer = DocumentSigner.load(paths["ds_key"].parent)
    citizen = synthetic_citizen("citizen-001")
    pkg = build_for_enrollment(fleet.store, DEVICE, built.package_id, citizen, signer)
    verified = verify_package(pkg, [pki.csca_cert])  # what the kiosk checks before writing
    assert decode_dg2(verified.files["DG2"]) == [built.plaintexts[0]]
    assert decode_dg13(verified.files["DG13"]).full_name == citizen.full_name
    assert verified.mrz.document_number == citizen.personal_id
    # A Document Signer key readable by others is refused.
    os.chmod(paths["ds_key"], 0o644)
    with pytest.raises(TrustError) as info:
        DocumentSigner.load(paths["ds_key"].parent)
    assert info.value.code == "key_permissions"
    # An enrollment that does not exist cannot be issued.
    with pytest.raises(ApplianceError) as err:
        build_for_enrollment(fleet.store, DEVICE, "pkg-none", citizen, signer)
    assert err.value.code == "enrollment_unknown"


def _parse(module: object, argv: list[str]) -> object:
    import argparse

    p = argparse.ArgumentParser()
    module.configure_parser(p)  # type: ignore[attr-defined]
    return p.parse_args(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["kiosk-x", "--policy", "2,11"],
        ["kiosk-x", "--policy", "thumbs"],
        ["kiosk-x", "--skip", "6:lost"],
        ["kiosk-x", "--exception", "x:missing"],
    ],
)
def test_enroll_cli_refuses_bad_usage(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = _parse(enrollcli, [*argv, "--home", str(tmp_path)])
    assert enrollcli.run(args) == 2  # type: ignore[arg-type]
    assert "error (usage)" in capsys.readouterr().err


def test_clis_explain_missing_keys_and_enrollments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "empty-home"
    args = _parse(enrollcli, ["kiosk-x", "--home", str(home)])
    assert enrollcli.run(args) == 2  # type: ignore[arg-type]
    assert "--create-keys" in capsys.readouterr().err
    args = _parse(receivecli, ["--home", str(home)])
    assert receivecli.run(args) == 2  # type: ignore[arg-type]
    assert "enrollment key" in capsys.readouterr().err
    args = _parse(issuecli, ["kiosk-x", "--home", str(home), "--synthetic"])
    assert issuecli.run(args) == 2  # type: ignore[arg-type]
    assert "no verified enrollment" in capsys.readouterr().err


def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    for module in (enrollcli, issuecli, receivecli):
        p = argparse.ArgumentParser()
        module.configure_parser(p)  # type: ignore[attr-defined]
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, (module.__name__, action.option_strings)


def test_register_device_key_never_replaces_an_approved_key(fleet: Fleet, tmp_path: Path) -> None:
    from appliance.central.clitools import register_device_key
    from appliance.trust.keys import DeviceIdentity

    register_device_key(fleet.home, DEVICE, fleet.kiosk_pub)  # the same key: a no-op
    other = DeviceIdentity.create(tmp_path / "other")
    with pytest.raises(TrustError) as info:
        register_device_key(fleet.home, DEVICE, tmp_path / "other" / "device.pub")
    assert info.value.code == "key_exists"
    register_device_key(fleet.home, "kiosk-fresh", tmp_path / "other" / "device.pub")
    from appliance.fleet.registry import FleetRegistry

    rec = FleetRegistry(fleet.home).device("kiosk-fresh")
    assert rec is not None and rec.key_id == other.key_id


def test_tools_parse_when_mounted_like_the_fleet_plugins() -> None:
    """As appliance/cli.py mounts fleet tools: sub-parsers with dests command/fleet_command."""
    import argparse

    root = argparse.ArgumentParser(prog="appliance")
    sub = root.add_subparsers(dest="command", required=True)
    fsub = sub.add_parser("fleet").add_subparsers(dest="fleet_command", required=True)
    for name, module in (("enroll", enrollcli), ("issue", issuecli), ("receive", receivecli)):
        p = fsub.add_parser(name)
        module.configure_parser(p)
        p.set_defaults(func=module.run)
    a = root.parse_args(["fleet", "enroll", "kiosk-1", "--skip", "6:bandaged", "--issue"])
    assert (a.command, a.fleet_command, a.device, a.skip, a.issue) == (
        "fleet",
        "enroll",
        "kiosk-1",
        ["6:bandaged"],
        True,
    )
    a = root.parse_args(["fleet", "issue", "kiosk-1", "--package-id", "p1", "--synthetic"])
    assert a.func is issuecli.run and a.package_id == "p1"
    a = root.parse_args(["fleet", "receive", "--share-group", "central", "--port", "1884"])
    assert a.func is receivecli.run and a.share_group == "central" and a.port == 1884
