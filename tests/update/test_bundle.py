"""Release bundles: built and signed on the fleet side, refused by a kiosk when unsigned,
tampered, signed without the release role, for another target, or a downgrade."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from appliance.errors import ApplianceError, TrustError
from appliance.fleet import releasecli
from appliance.fleet.release import write_bundle
from appliance.trust.keys import b64decode, b64encode
from appliance.update.bundle import (
    CTX_RELEASE,
    MANIFEST,
    RELEASE_TYPE,
    Target,
    UpdateError,
    verify_bundle,
)

from .conftest import ReleaseKeys
from .wheels import make_project, make_wheel

HERE = Target()


def _bundle(tmp: Path, keys: ReleaseKeys, version: str = "0.2.0", **kw: object) -> Path:
    w = make_wheel(tmp / f"w{version}", version)
    dep = make_wheel(tmp / f"w{version}", "1.0", name="kioskdep")
    out = tmp / f"kioskdemo-{version}.bundle"
    write_bundle(out, keys.release, [w, dep], w, min_from=kw.pop("min_from", "0.1.0"), **kw)  # type: ignore[arg-type]
    return out


def _rewrite(src: Path, dst: Path, change: dict[str, bytes | None]) -> None:
    """Copy a bundle changing (bytes) or dropping (None) members, or adding new ones."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        seen = set()
        for m in tin.getmembers():
            seen.add(m.name)
            data = tin.extractfile(m).read()  # type: ignore[union-attr]
            if m.name in change:
                if change[m.name] is None:
                    continue
                data = change[m.name]  # type: ignore[assignment]
            info = tarfile.TarInfo(m.name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
        for name, data in change.items():
            if name not in seen and data is not None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tout.addfile(info, io.BytesIO(data))


def _code(exc: pytest.ExceptionInfo[ApplianceError]) -> str:
    return exc.value.code


def test_valid_bundle_verifies_and_extracts(tmp_path: Path, release_keys: ReleaseKeys) -> None:
    b = _bundle(tmp_path, release_keys)
    dest = tmp_path / "x"
    dest.mkdir()
    m = verify_bundle(b, [release_keys.root_pub], running="0.1.0", target=HERE, extract_to=dest)
    assert m.version == "0.2.0" and m.issuer == release_keys.release.key_id
    assert sorted(p.name for p in dest.iterdir()) == [
        "kioskdemo-0.2.0-py3-none-any.whl",
        "kioskdep-1.0-py3-none-any.whl",
    ]
    assert m.project == "wheels/kioskdemo-0.2.0-py3-none-any.whl"


def test_tampered_wheel_refused(tmp_path: Path, release_keys: ReleaseKeys) -> None:
    b = _bundle(tmp_path, release_keys)
    bad = tmp_path / "bad.bundle"
    evil = make_wheel(tmp_path / "evil", "0.2.0", behaviour="crash").read_bytes()
    _rewrite(b, bad, {"wheels/kioskdemo-0.2.0-py3-none-any.whl": evil})
    with pytest.raises(UpdateError) as exc:
        verify_bundle(bad, [release_keys.root_pub], running="0.1.0", target=HERE)
    assert _code(exc) == "release_tampered"
    assert "kioskdemo-0.2.0" in exc.value.message


@pytest.mark.parametrize("how", ["added", "dropped"])
def test_added_or_missing_file_refused(tmp_path: Path, release_keys: ReleaseKeys, how: str) -> None:
    b = _bundle(tmp_path, release_keys)
    bad = tmp_path / "bad.bundle"
    change: dict[str, bytes | None] = (
        {"wheels/extra-1.0-py3-none-any.whl": b"x"}
        if how == "added"
        else {"wheels/kioskdep-1.0-py3-none-any.whl": None}
    )
    _rewrite(b, bad, change)
    with pytest.raises(UpdateError) as exc:
        verify_bundle(bad, [release_keys.root_pub], running="0.1.0", target=HERE)
    assert _code(exc) == "release_tampered"


def test_manifest_edited_after_signing_refused(tmp_path: Path, release_keys: ReleaseKeys) -> None:
    b = _bundle(tmp_path, release_keys)
    with tarfile.open(b) as t:
        env = json.loads(t.extractfile(MANIFEST).read())  # type: ignore[union-attr]
    body = json.loads(b64decode(env["body"], what="body"))
    body["min_from"] = "0.0.1"
    env["body"] = b64encode(json.dumps(body).encode())
    bad = tmp_path / "bad.bundle"
    _rewrite(b, bad, {MANIFEST: json.dumps(env).encode()})
    with pytest.raises(TrustError) as exc:
        verify_bundle(bad, [release_keys.root_pub], running="0.1.0", target=HERE)
    assert _code(exc) == "bad_signature"


def test_unsigned_bundle_refused(tmp_path: Path, release_keys: ReleaseKeys) -> None:
    b = _bundle(tmp_path, release_keys)
    with tarfile.open(b) as t:
        env = json.loads(t.extractfile(MANIFEST).read())  # type: ignore[union-attr]
    unsigned = {"typ": RELEASE_TYPE, "body": env["body"]}
    bad = tmp_path / "unsigned.bundle"
    _rewrite(b, bad, {MANIFEST: json.dumps(unsigned).encode()})
    with pytest.raises(UpdateError) as exc:
        verify_bundle(bad, [release_keys.root_pub], running="0.1.0", target=HERE)
    assert _code(exc) == "release_unsigned"


def test_no_manifest_or_not_a_tar_refused(tmp_path: Path, release_keys: ReleaseKeys) -> None:
    b = _bundle(tmp_path, release_keys)
    bad = tmp_path / "nomanifest.bundle"
    _rewrite(b, bad, {MANIFEST: None})
    for path in (bad, tmp_path / "w0.2.0" / "kioskdemo-0.2.0-py3-none-any.whl"):
        with pytest.raises(UpdateError) as exc:
            verify_bundle(path, [release_keys.root_pub])
        assert _code(exc) == "release_malformed"


def test_only_the_release_role_signs(tmp_path: Path, release_keys: ReleaseKeys) -> None:
    w = make_wheel(tmp_path, "0.2.0")
    with pytest.raises(TrustError) as exc:
        write_bundle(tmp_path / "b", release_keys.admin, [w], w, min_from="0.1.0")
    assert _code(exc) == "forbidden_role"
    # A manifest an admin key signed anyway (by hand) is refused by the kiosk.
    good = _bundle(tmp_path, release_keys)
    with tarfile.open(good) as t:
        env = json.loads(t.extractfile(MANIFEST).read())  # type: ignore[union-attr]
    from appliance.trust.keys import sign_detached

    raw = b64decode(env["body"], what="body")
    body = json.loads(raw)
    body["issuer"] = release_keys.admin.key_id
    raw = json.dumps(body).encode()
    env.update(
        cert=release_keys.admin.certificate.to_token(),
        body=b64encode(raw),
        sig=b64encode(sign_detached(release_keys.admin.signing_key, CTX_RELEASE, raw)),
    )
    bad = tmp_path / "admin.bundle"
    _rewrite(good, bad, {MANIFEST: json.dumps(env).encode()})
    with pytest.raises(TrustError) as exc:
        verify_bundle(bad, [release_keys.root_pub], running="0.1.0", target=HERE)
    assert _code(exc) == "forbidden_role"


def test_untrusted_root_refused(tmp_path: Path, release_keys: ReleaseKeys) -> None:
    b = _bundle(tmp_path, release_keys)
    with pytest.raises(TrustError) as exc:
        verify_bundle(b, [bytes(32)], running="0.1.0", target=HERE)
    assert _code(exc) == "untrusted_issuer"


@pytest.mark.parametrize(
    ("target", "field"),
    [
        (Target(arch="armv7l"), "arch"),
        (Target(platform="win32"), "platform"),
        (Target(python="3.99"), "python"),
    ],
)
def test_other_target_refused(
    tmp_path: Path, release_keys: ReleaseKeys, target: Target, field: str
) -> None:
    b = _bundle(tmp_path, release_keys)
    with pytest.raises(UpdateError) as exc:
        verify_bundle(b, [release_keys.root_pub], running="0.1.0", target=target)
    assert _code(exc) == "release_wrong_platform"
    assert exc.value.details["field"] == field


def test_downgrade_refused_unless_signed_as_rollback(
    tmp_path: Path, release_keys: ReleaseKeys
) -> None:
    b = _bundle(tmp_path, release_keys, "0.2.0")
    for running in ("0.2.0", "0.3.0"):
        with pytest.raises(UpdateError) as exc:
            verify_bundle(b, [release_keys.root_pub], running=running, target=HERE)
        assert _code(exc) == "release_downgrade"
    rb = _bundle(tmp_path / "rb", release_keys, "0.2.0", rollback=True)
    m = verify_bundle(rb, [release_keys.root_pub], running="0.3.0", target=HERE)
    assert m.rollback


def test_running_version_below_min_from_refused(tmp_path: Path, release_keys: ReleaseKeys) -> None:
    b = _bundle(tmp_path, release_keys, "0.5.0", min_from="0.4.0")
    with pytest.raises(UpdateError) as exc:
        verify_bundle(b, [release_keys.root_pub], running="0.3.9", target=HERE)
    assert _code(exc) == "release_base_too_old"
    verify_bundle(b, [release_keys.root_pub], running="0.4.0", target=HERE)


def test_cli_build_and_verify(
    tmp_path: Path, release_keys: ReleaseKeys, capsys: pytest.CaptureFixture[str]
) -> None:
    """``fleet release build`` runs pip wheel on a checkout; ``verify`` checks it."""
    from appliance.trust.keys import encode_private_key

    prefix = tmp_path / "keys" / "release"
    prefix.parent.mkdir()
    (prefix.parent / "release.key").write_bytes(
        encode_private_key(release_keys.release.signing_key)
    )
    (prefix.parent / "release.key").chmod(0o600)
    (prefix.parent / "release.cert").write_text(release_keys.release.certificate.to_token())
    project = make_project(tmp_path / "src", "0.3.0")
    out = tmp_path / "dist" / "kioskdemo-0.3.0.bundle"
    home = str(release_keys.home)
    rc = releasecli.main(
        ["--home", home, "build", str(project), "--out", str(out), "--min-from", "0.2.0",
         "--signer", str(prefix), "--no-deps", "--migration", "none"]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert "kioskdemo 0.3.0 (from 0.2.0)" in capsys.readouterr().out
    assert sorted(p.name for p in project.iterdir()) == ["kioskdemo", "pyproject.toml"]
    rc = releasecli.main(
        ["--home", home, "verify", str(out), "--running", "0.2.0", "--target-here"]
    )
    assert rc == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "valid" and shown["version"] == "0.3.0" and shown["files"] == 1
    rc = releasecli.main(["--home", home, "verify", str(out), "--running", "0.3.0"])
    assert rc == 1
    assert "release_downgrade" in capsys.readouterr().err
