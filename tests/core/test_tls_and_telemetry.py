"""TLS with client certificates against a real mosquitto; heartbeat contents; log target."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from appliance import logs
from appliance.devtools.broker import Mosquitto, free_port
from appliance.devtools.controller import Controller
from appliance.devtools.pki import TestCA
from tests.helpers import DaemonProcess, get_json, wait_for, wait_online


def test_daemon_connects_with_client_certificate_over_tls(
    tmp_path: Path,
    make_broker: Callable[..., Mosquitto],
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    ca = TestCA(tmp_path / "pki")
    server = ca.issue("localhost", server=True)
    device = ca.issue("kiosk-tls")
    plain = make_broker()  # for the test's own controller
    tls_port = free_port()
    plain.extra_conf = (
        f"listener {tls_port} 127.0.0.1\n"
        f"cafile {ca.cert_path}\ncertfile {server.cert}\nkeyfile {server.key}\n"
        "require_certificate true\nuse_identity_as_username true\n"
    )
    plain.restart()
    d = daemon_factory(plain, "kiosk-tls", dev=True)
    text = d.config_path.read_text().replace(f"port = {plain.port}", f"port = {tls_port}")
    text += (
        "[mqtt.tls]\nenabled = true\n"
        f'ca_file = "{ca.cert_path}"\ncert_file = "{device.cert}"\nkey_file = "{device.key}"\n'
    )
    d.config_path.write_text(text)
    with Controller(plain.host, plain.port) as ctl:
        t0 = time.time()
        d.start()
        birth = wait_online(ctl, "kiosk-tls", after=t0)
        assert birth["device"] == "kiosk-tls"
        assert ctl.request("kiosk-tls", "ping")["ok"] is True
    # A client without a certificate is refused by the TLS listener.
    c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    c.tls_set(ca_certs=str(ca.cert_path))
    refused = False
    try:
        c.connect("127.0.0.1", tls_port, 5)
        for _ in range(50):
            if c.loop(0.1) != 0:
                refused = True
                break
    except OSError:
        refused = True
    assert refused
    d.terminate()


def test_daemon_with_wrong_ca_keeps_retrying_and_says_why(
    tmp_path: Path,
    make_broker: Callable[..., Mosquitto],
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    ca = TestCA(tmp_path / "pki")
    other = TestCA(tmp_path / "other", "Some Other CA")
    server = ca.issue("localhost", server=True)
    device = ca.issue("kiosk-badca")
    b = make_broker()
    tls_port = free_port()
    b.extra_conf = (
        f"listener {tls_port} 127.0.0.1\ncafile {ca.cert_path}\ncertfile {server.cert}\n"
        f"keyfile {server.key}\nrequire_certificate true\n"
    )
    b.restart()
    d = daemon_factory(b, "kiosk-badca")
    text = d.config_path.read_text().replace(f"port = {b.port}", f"port = {tls_port}")
    text += (
        "[mqtt.tls]\nenabled = true\n"
        f'ca_file = "{other.cert_path}"\ncert_file = "{device.cert}"\nkey_file = "{device.key}"\n'
    )
    d.config_path.write_text(text)
    d.start()
    wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in d.log(), 20, "a certificate error in the log")
    assert d.proc is not None and d.proc.poll() is None, "the daemon must keep running offline"
    d.terminate()


def test_heartbeat_carries_system_and_device_metrics(
    broker: Mosquitto, controller: Controller, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    d = daemon_factory(broker, "kiosk-hb", extra_toml="")
    d.config_path.write_text(
        d.config_path.read_text().replace("heartbeat_s = 3600", "heartbeat_s = 1")
    )
    q = controller.subscribe("kiosk/kiosk-hb/telemetry")
    d.start()
    hb = get_json(q, 15)
    for key in (
        "uptime_s",
        "load",
        "mem_total",
        "mem_available",
        "rss",
        "disk_free",
        "soc_temp_c",
        "outbox_depth",
        "devices",
    ):
        assert key in hb, key
    assert hb["device"] == "kiosk-hb"
    assert hb["outbox_depth"] == 0
    assert hb["devices"] == {"camera": "disabled", "fingerprint": "disabled", "card": "disabled"}
    assert hb["rss"] > 1_000_000
    second = get_json(q, 15)
    assert second["uptime_s"] > hb["uptime_s"]
    d.terminate()
    json.dumps(hb)


def test_journald_is_used_only_when_stderr_is_the_journal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert logs.journald_available() is False
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # not our stderr
    assert logs.journald_available() is False
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        assert logs.setup("INFO", "auto") == "stderr"
        assert logs.setup("INFO", "journal") == "stderr"  # falls back, with a warning
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
