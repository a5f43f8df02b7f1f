"""The fleet tools against the REAL daemon and a real mosquitto: ``send`` signs with an
operator key and verifies the device-signed reply with the key approved in the fleet home,
``devices`` shows the retained status, ``watch`` streams verified events, ``push-config``
signs with an admin key and waits for the retained report."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.devtools.broker import Mosquitto
from appliance.devtools.controller import Controller
from appliance.fleet import devicescli, pushconfigcli, sendcli
from appliance.fleet.keys import generate_operator_key, issue_operator, write_certificate
from appliance.fleet.registry import DeviceRecord, FleetRegistry
from appliance.trust.certs import ROOT_PUB_FILE, FleetRoot
from appliance.trust.keys import encode_public_key, key_id, load_public_key
from tests.helpers import ROOT, DaemonProcess, wait_for, wait_online

DEV = "kiosk-ft1"


def issue(home: Path, name: str, roles: list[str], **scope: list[str]) -> None:
    pub = generate_operator_key(home, name)
    cert = issue_operator(
        home, pub, roles=roles, not_after=int(time.time()) + 3600, name=name, **scope
    )
    write_certificate(home / f"{name}.cert", cert)


def register(home: Path, device: str, pub: bytes, groups: list[str]) -> None:
    FleetRegistry(home).save_device(
        DeviceRecord(
            device_id=device,
            public_key=encode_public_key(pub).decode().strip(),
            key_id=key_id(pub),
            groups=groups,
        )
    )


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, broker: Mosquitto
) -> Iterator[dict[str, object]]:
    base = tmp_path_factory.mktemp("fleet")
    home = base / "home"
    FleetRoot.create(home)
    issue(home, "operator", ["operator", "technician"], devices=[DEV], groups=["hanoi"])
    issue(home, "admin", ["admin"], devices=[DEV])
    d = DaemonProcess(
        base / "kiosk",
        broker,
        DEV,
        extra_toml="[commands]\nallow_unsigned = false\n"
        f'[trust]\nroot_keys = ["{home / ROOT_PUB_FILE}"]\n'
        "[config_push]\ntrial_timeout_s = 5\n",
    )
    d.config_path.write_text(
        d.config_path.read_text().replace(f'id = "{DEV}"', f'id = "{DEV}"\ngroups = ["hanoi"]')
    )
    ctl = Controller(broker.host, broker.port).connect()
    t0 = time.time()
    d.start()
    try:
        wait_online(ctl, DEV, after=t0, timeout=30)
        wait_for((d.state_dir / "device.pub").exists, 15, "the device key")
        register(home, DEV, load_public_key(d.state_dir / "device.pub"), ["hanoi"])
        yield {"home": home, "daemon": d, "ctl": ctl}
    finally:
        ctl.close()
        if d.proc is not None and d.proc.poll() is None:
            d.terminate()


def flags(broker: Mosquitto, home: object) -> list[str]:
    return ["--home", str(home), "--host", broker.host, "--port", str(broker.port)]


def test_send_signs_and_verifies(
    broker: Mosquitto, fleet: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    home = fleet["home"]
    f = flags(broker, home)
    assert sendcli.main([DEV, "ping", "echo=xin chào", "--json", *f]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["verified"] == "ok" and line["reply"]["result"]["echo"] == "xin chào"

    # The operator certificate lacks admin: the kiosk refuses, the tool says why (exit 1).
    assert sendcli.main([DEV, "diagnostics", *f]) == 1
    assert "forbidden_role" in capsys.readouterr().out

    # A group command: every known member answers, each reply verified.
    assert sendcli.main(["group:hanoi", "ping", "--json", *f]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["device"] == DEV and "1 replied" in err

    # An unsigned request is refused by a provisioned kiosk.
    assert sendcli.main([DEV, "ping", "--unsigned", "--json", *f]) == 1
    assert json.loads(capsys.readouterr().out)["reply"]["error"]["code"] == "unsigned"

    # Nobody answers for a device that does not exist: exit 4 after the timeout.
    assert sendcli.main(["kiosk-nobody", "ping", "--timeout", "0.5", *f]) == 4
    assert "no reply from kiosk-nobody" in capsys.readouterr().err

    # Bad usage never crashes: exit 2 with the reason.
    assert sendcli.main([DEV, "ping", "not-a-pair", *f]) == 2
    assert "key=value" in capsys.readouterr().err
    assert sendcli.main(["bad/target", "ping", *f]) == 2
    assert sendcli.main([DEV, "ping", "--signer", "/nonexistent/x", *f]) == 2
    assert "no signing key" in capsys.readouterr().err


def test_send_refuses_a_reply_that_does_not_verify(
    broker: Mosquitto, fleet: dict[str, object], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # A fleet home in which DEV is registered with ANOTHER key: the genuine reply must fail.
    home = Path(str(fleet["home"]))
    other = tmp_path / "home"
    other.mkdir()
    for name in ("root.pub", "operator.key", "operator.cert"):
        (other / name).write_bytes((home / name).read_bytes())
    (other / "operator.key").chmod(0o600)
    from nacl.signing import SigningKey

    register(other, DEV, bytes(SigningKey.generate().verify_key), [])
    assert sendcli.main([DEV, "ping", *flags(broker, other)]) == 3
    out, err = capsys.readouterr()
    assert "SIGNATURE INVALID" in out and "untrusted_issuer" in err
    # Not registered at all: the reply is shown as unverified, exit 3 too.
    (other / "devices" / f"{DEV}.json").unlink()
    assert sendcli.main([DEV, "ping", *flags(broker, other)]) == 3
    assert "unverified" in capsys.readouterr().out


def test_watch_streams_verified_events_and_devices_shows_the_fleet(
    broker: Mosquitto, fleet: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    home = fleet["home"]
    f = flags(broker, home)
    watch = subprocess.Popen(
        [sys.executable, "-m", "appliance.fleet.watchcli", "--type", "note",
         "--device", "kiosk-ft*", "--json", "--count", "1", "--timeout", "30", *f],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    assert watch.stderr is not None
    assert watch.stderr.readline().startswith("watching ")  # subscribed (after the SUBACK)
    assert sendcli.main([DEV, "note", "text=replaced sensor cable", *f]) == 0
    out, err = watch.communicate(timeout=30)
    assert watch.returncode == 0, err
    ev = json.loads(out)
    assert ev["device"] == DEV and ev["type"] == "note" and ev["verified"] == "ok"
    assert ev["data"]["text"] == "replaced sensor cable"
    capsys.readouterr()

    assert devicescli.main(["--json", "--query", *f]) == 0
    rows = {r["device"]: r for r in json.loads(capsys.readouterr().out)}
    row = rows[DEV]
    assert row["state"] == "online" and row["signature"] == "ok" and row["approved"]
    assert row["version"] and row["health"] == "ok" and isinstance(row["outbox_depth"], int)
    assert devicescli.main(f) == 0
    table = capsys.readouterr().out
    assert DEV in table and "online" in table and "LAST SEEN" in table


def test_push_config_applies_and_reports(
    broker: Mosquitto, fleet: dict[str, object], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    home = fleet["home"]
    f = flags(broker, home)
    good = tmp_path / "hb.toml"
    good.write_text("[telemetry]\nheartbeat_s = 7\n")
    assert pushconfigcli.main([DEV, str(good), "--timeout", "60", *f]) == 0
    out = capsys.readouterr().out
    assert "v1 applying" in out and "v1 trial" in out and "v1 applied" in out
    assert f"v1 for {DEV}: applied on 1 of 1" in out.splitlines()[-1]
    assert sendcli.main([DEV, "config.get", "section=telemetry", "--signer",
                         str(Path(str(home)) / "admin"), "--json", *f]) == 0  # fmt: skip
    reply = json.loads(capsys.readouterr().out)["reply"]
    assert reply["result"]["config"]["heartbeat_s"] == 7

    bad = tmp_path / "bad.json"
    bad.write_text('{"telemetry": {"heartbeat": 7}}')
    # Checked here first, with config check's checker: refused before signing, nothing sent
    # (the next version pushed is still v2).
    assert pushconfigcli.main([DEV, str(bad), "--timeout", "60", *f]) == 2
    captured = capsys.readouterr()
    assert "telemetry.heartbeat: unknown key" in captured.err
    assert "nothing signed or published" in captured.err and "published" not in captured.out
    # --no-check: the kiosk's own validation rejects it and reports every problem.
    assert pushconfigcli.main([DEV, str(bad), "--no-check", "--timeout", "60", *f]) == 1
    out = capsys.readouterr().out
    assert "v2 rejected" in out and "telemetry.heartbeat: unknown key" in out
    assert f"v2 for {DEV}: applied on 0 of 1; {DEV} rejected" in out

    # Signed by an operator instead of an admin: the kiosk rejects it (forbidden_role).
    assert pushconfigcli.main([DEV, str(good), "--signer", str(Path(str(home)) / "operator"),
                               "--timeout", "60", *f]) == 1  # fmt: skip
    assert "forbidden_role" in capsys.readouterr().out
    ctl = fleet["ctl"]
    assert isinstance(ctl, Controller)
    ctl.publish(f"kiosk/{DEV}/config/desired", b"", retain=True)
