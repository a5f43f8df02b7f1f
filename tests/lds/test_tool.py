"""The issuer-side tool: test PKI, build a package, verify it; bad input gives exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.lds import files, tool


def test_build_and_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tool.main(["test-pki", "--out", str(tmp_path / "pki")]) == 0
    person = {
        "package_id": "vn-2026-0001",
        "document_number": "001199012345",
        "birth": "990315",
        "sex": "F",
        "expiry": "390315",
        "family_name": "Đặng",
        "given_names": "Thị Ngọc Ánh",
        "dg13": {
            "personal_id": "001199012345",
            "full_name": "Đặng Thị Ngọc Ánh",
            "date_of_birth": "15/03/1999",
            "sex": "Nữ",
            "nationality": "Việt Nam",
            "date_of_issue": "10/05/2023",
            "date_of_expiry": "15/03/2039",
        },
    }
    (tmp_path / "person.json").write_text(json.dumps(person, ensure_ascii=False))
    (tmp_path / "face.fac").write_bytes(files.face_record_from_jpeg(b"\xff\xd8" + bytes(99), 4, 5))
    pki = tmp_path / "pki"
    assert (
        tool.main(
            [
                "build",
                "--person",
                str(tmp_path / "person.json"),
                "--ds-key",
                str(pki / "ds.key"),
                "--ds-cert",
                str(pki / "ds.pem"),
                "--face-record",
                str(tmp_path / "face.fac"),
                "--out",
                str(tmp_path / "pkg.json"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        tool.main(
            [
                "verify",
                "--package",
                str(tmp_path / "pkg.json"),
                "--trust-bundle",
                str(pki / "csca.pem"),
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["passive_authentication"]["passed"] is True
    # Another CSCA: refused with the trust error code, exit 1.
    assert tool.main(["test-pki", "--out", str(tmp_path / "other")]) == 0
    assert (
        tool.main(
            [
                "verify",
                "--package",
                str(tmp_path / "pkg.json"),
                "--trust-bundle",
                str(tmp_path / "other" / "csca.pem"),
            ]
        )
        == 1
    )
    assert "sod_chain_invalid" in capsys.readouterr().err
    # Bad person data: exit 2 with a message.
    person["birth"] = "991315"
    (tmp_path / "person.json").write_text(json.dumps(person))
    assert (
        tool.main(
            [
                "build",
                "--person",
                str(tmp_path / "person.json"),
                "--ds-key",
                str(pki / "ds.key"),
                "--ds-cert",
                str(pki / "ds.pem"),
                "--out",
                str(tmp_path / "pkg2.json"),
            ]
        )
        == 2
    )


def test_build_checks_the_citizen_unless_told_not_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tool.main(["test-pki", "--out", str(tmp_path / "pki")]) == 0
    pki = tmp_path / "pki"
    # A man's number (4th digit 0) for a woman, and an expiry that is not her 40th birthday.
    person = {
        "package_id": "vn-2026-0002",
        "document_number": "001090012345",
        "birth": "900215",
        "sex": "F",
        "expiry": "350215",
        "family_name": "Nguyễn",
        "given_names": "Thị Mai",
        "dg13": {
            "personal_id": "001090012345",
            "full_name": "Nguyễn Thị Mai",
            "date_of_birth": "15/02/1990",
            "sex": "Nữ",
            "nationality": "Việt Nam",
            "date_of_issue": "01/06/2025",
            "date_of_expiry": "15/02/2035",
        },
    }
    (tmp_path / "person.json").write_text(json.dumps(person, ensure_ascii=False))
    out = tmp_path / "pkg.json"
    build = [
        "build",
        "--person",
        str(tmp_path / "person.json"),
        "--ds-key",
        str(pki / "ds.key"),
        "--ds-cert",
        str(pki / "ds.pem"),
        "--out",
        str(out),
    ]
    capsys.readouterr()
    assert tool.main(build) == 1
    err = capsys.readouterr().err
    assert "citizen_invalid: 2 problem(s)" in err
    assert "personal_id:" in err and "[id_century_sex]" in err
    assert "date_of_expiry:" in err and "[expiry_milestone]" in err
    assert not out.exists()  # nothing signed
    # The opt-out builds it, says so, and the kiosk's check (verify) refuses it.
    assert tool.main([*build, "--skip-citizen-check"]) == 0
    assert "NOT checked" in capsys.readouterr().err
    verify = ["verify", "--package", str(out), "--trust-bundle", str(pki / "csca.pem")]
    assert tool.main(verify) == 1
    err = capsys.readouterr().err
    assert "citizen_invalid" in err and "[id_century_sex]" in err
