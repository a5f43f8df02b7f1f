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
