"""Broker options from flags and ``<home>/fleet.toml``; the connection's errors name the
cause; ``devices`` reports a stopped kiosk as offline and a vanished one as lost."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from appliance.devtools.broker import Mosquitto, free_port
from appliance.errors import ConfigError
from appliance.fleet import devicescli
from appliance.fleet.conn import (
    BrokerOptions,
    FleetConnectionError,
    FleetMqtt,
    add_broker_args,
    add_home_arg,
    broker_options,
    release,
)


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_home_arg(p)
    add_broker_args(p)
    return p.parse_args(list(argv))


def test_options_from_flags_and_fleet_toml(tmp_path: Path) -> None:
    assert broker_options(parse("--home", str(tmp_path))) == BrokerOptions()
    (tmp_path / "fleet.toml").write_text(
        '[broker]\nhost = "mqtt.example"\nport = 8883\nca_file = "/etc/ca.crt"\n'
    )
    o = broker_options(parse("--home", str(tmp_path)))
    assert (o.host, o.port, o.tls, str(o.ca_file)) == ("mqtt.example", 8883, True, "/etc/ca.crt")
    o = broker_options(parse("--home", str(tmp_path), "--port", "1884", "--prefix", "k2"))
    assert (o.host, o.port, o.prefix) == ("mqtt.example", 1884, "k2")
    (tmp_path / "fleet.toml").write_text("[broker]\nhots = 1\n")
    with pytest.raises(ConfigError) as err:
        broker_options(parse("--home", str(tmp_path)))
    assert err.value.problems == [("broker.hots", "unknown key")]
    (tmp_path / "fleet.toml").write_text("[broker]\nport = 70000\n")
    with pytest.raises(ConfigError):
        broker_options(parse("--home", str(tmp_path)))
    (tmp_path / "fleet.toml").write_text("not toml [")
    with pytest.raises(ConfigError):
        broker_options(parse("--home", str(tmp_path)))
    with pytest.raises(ConfigError):
        broker_options(parse("--home", str(tmp_path / "x"), "--prefix", "a/b"))


def test_connection_errors_name_the_cause(tmp_path: Path) -> None:
    with pytest.raises(FleetConnectionError) as err:
        FleetMqtt(BrokerOptions(port=free_port())).connect(2)
    assert "cannot connect to the broker" in err.value.message
    with pytest.raises(FleetConnectionError) as err:
        FleetMqtt(BrokerOptions(ca_file=tmp_path / "missing.crt"))
    assert err.value.code == "tls_files"


def test_devices_offline_and_lost(
    broker: Mosquitto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
    )
    c.connect(broker.host, broker.port)
    c.loop_start()
    now = time.time()
    for dev, body in (
        ("kiosk-off", {"online": False, "device": "kiosk-off", "reason": "shutdown",
                       "ts": now - 30}),
        ("kiosk-lost", {"online": False, "device": "kiosk-lost", "reason": "lost"}),
        ("kiosk-on", {"online": True, "device": "kiosk-on", "version": "9.9", "ts": now,
                      "devices": {"camera": "ok", "card": "error"}}),
        # Not the contract's status (appliance/protocol/messages.py): skipped, named.
        ("kiosk-bad", {"online": "maybe", "device": "kiosk-bad"}),
    ):  # fmt: skip
        c.publish(f"kiosk/{dev}/status", json.dumps(body), qos=1, retain=True).wait_for_publish(5)
    try:
        flags = ["--home", str(tmp_path), "--host", broker.host, "--port", str(broker.port)]
        assert devicescli.main(["--json", "--listen", "0.5", *flags]) == 0
        out = capsys.readouterr()
        rows = {r["device"]: r for r in json.loads(out.out)}
        assert "kiosk-bad" not in rows
        assert "1 malformed message(s) skipped (malformed_message)" in out.err
        assert (
            "kiosk/kiosk-bad/status: malformed status: online: Input should be a valid boolean"
            in out.err
        )
        assert rows["kiosk-off"]["state"] == "offline"
        assert rows["kiosk-lost"]["state"] == "lost"
        on = rows["kiosk-on"]
        assert on["state"] == "online" and on["health"] == "card:error"
        assert on["signature"] == "unknown" and on["version"] == "9.9"
    finally:
        for dev in ("kiosk-off", "kiosk-lost", "kiosk-on", "kiosk-bad"):
            c.publish(f"kiosk/{dev}/status", b"", qos=1, retain=True).wait_for_publish(5)
        c.disconnect()
        release(c)


def test_the_shipped_example_is_valid(tmp_path: Path) -> None:
    from tests.helpers import ROOT

    (tmp_path / "fleet.toml").write_text((ROOT / "provisioning" / "fleet.toml.example").read_text())
    o = broker_options(parse("--home", str(tmp_path)))
    assert (o.host, o.port, o.prefix, o.tls) == ("mqtt.fleet.example", 8883, "kiosk", True)
