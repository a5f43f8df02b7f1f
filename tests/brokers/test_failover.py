"""``mqtt.brokers``: the configuration (strings, tables, per-broker TLS, errors naming the entry),
the order a kiosk tries its brokers in, and the failover itself on real sockets: a closed port
first, then two mosquittos with the shipped configuration (mutual TLS, the shipped ACL)."""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.agent.mqtt import broker_order
from appliance.config import env_overrides, validate
from appliance.devtools.broker import Mosquitto, free_port
from appliance.devtools.fleetkit import FleetKit
from appliance.errors import ConfigError
from tests.helpers import DaemonProcess, wait_for, wait_online


def _problems(brokers: object) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as exc:
        validate({"mqtt": {"brokers": brokers}})
    return exc.value.problems


def test_host_and_port_are_a_one_broker_list() -> None:
    cfg = validate({"mqtt": {"host": "mq.example", "port": 8883}}).mqtt
    assert [e.name for e in cfg.endpoints()] == ["mq.example:8883"]
    assert cfg.endpoints()[0].tls == cfg.tls


def test_broker_strings_and_tables() -> None:
    cfg = validate(
        {
            "mqtt": {
                "port": 8883,
                "tls": {"enabled": True, "ca_file": "/etc/ca.pem", "cert_file": "/k.crt"},
                "brokers": [
                    "mq1.example:18883",
                    "mq2.example",  # takes mqtt.port
                    "[fd00::3]:8883",
                    {"host": "mq4.example", "port": 1884, "tls": {"ca_file": "/other-ca.pem"}},
                    {"host": "mq5.example", "tls": {"enabled": False}},
                ],
            }
        }
    ).mqtt
    eps = cfg.endpoints()
    assert [e.name for e in eps] == [
        "mq1.example:18883",
        "mq2.example:8883",
        "[fd00::3]:8883",
        "mq4.example:1884",
        "mq5.example:8883",
    ]
    assert eps[2].host == "fd00::3"
    # TLS inherited from [mqtt.tls] unless the entry overrides a key
    assert eps[0].tls == cfg.tls
    assert str(eps[3].tls.ca_file) == "/other-ca.pem" and str(eps[3].tls.cert_file) == "/k.crt"
    assert eps[3].tls.enabled and not eps[4].tls.enabled


def test_the_environment_sets_the_list() -> None:
    env = env_overrides({"APPLIANCE_MQTT__BROKERS": '["10.0.0.1:1883", "10.0.0.2:1883"]'})
    cfg = validate(env).mqtt
    assert [e.name for e in cfg.endpoints()] == ["10.0.0.1:1883", "10.0.0.2:1883"]


@pytest.mark.parametrize(
    ("brokers", "field", "words"),
    [
        (["ok:1", "bad:99999"], "mqtt.brokers.1", "port 99999"),
        (["ok:1", "two words:1"], "mqtt.brokers.1", 'not "host:port"'),
        (["ok:1", "ok:x"], "mqtt.brokers.1", 'not "host:port"'),
        ([{"host": "a", "port": 0}], "mqtt.brokers.0.port", "greater than"),
        ([{"hots": "a"}], "mqtt.brokers.0.hots", "unknown key"),
        ([{"host": "a", "tls": {"ca": "/x"}}], "mqtt.brokers.0.tls.ca", "unknown key"),
        (["a:1", "b:2", "A:1"], "mqtt.brokers", "entry 2 repeats entry 0"),
        ([42], "mqtt.brokers.0", ""),
        ("a:1", "mqtt.brokers", "list"),
    ],
)
def test_bad_entries_are_named(brokers: object, field: str, words: str) -> None:
    problems = _problems(brokers)
    assert any(f == field and words in msg for f, msg in problems), problems


def test_listed_order_is_kept_and_device_order_spreads_a_fleet() -> None:
    eps = validate({"mqtt": {"brokers": ["a:1", "b:1", "c:1"]}}).mqtt.endpoints()
    assert [e.host for e in broker_order(eps, "k1", "listed")] == ["a", "b", "c"]
    # Stable across restarts (seeded by the id, not by the process).
    assert broker_order(eps, "k1", "device") == broker_order(eps, "k1", "device")
    firsts: collections.Counter[str] = collections.Counter()
    seconds: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for i in range(600):
        order = [e.host for e in broker_order(eps, f"kiosk-{i:05d}", "device")]
        assert sorted(order) == ["a", "b", "c"]
        firsts[order[0]] += 1
        seconds[order[0]][order[1]] += 1
    # Each node is the first choice of about a third of the fleet, and the kiosks of a lost
    # node move to both others, not all to the same one.
    assert all(150 < n < 250 for n in firsts.values()), firsts
    for first, nxt in seconds.items():
        assert len(nxt) == 2 and min(nxt.values()) > firsts[first] / 4, (first, nxt)


def test_kiosk_fails_over_on_a_refused_connect_and_on_a_lost_broker(
    fleet_kit: FleetKit,
    make_tls_broker: Callable[..., Mosquitto],
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    """Production path: mutual TLS with the kiosk's certificate, signed birth. The first broker
    is a closed port: the kiosk moves on to the second; when that one goes away, to the third,
    and its birth names the broker it is on each time."""
    a = make_tls_broker()
    b = make_tls_broker()
    closed = free_port()
    brokers = [f"127.0.0.1:{closed}", f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
    d = daemon_factory(
        a,
        "failover-1",
        env={
            "APPLIANCE_MQTT__BROKERS": json.dumps(brokers),
            "APPLIANCE_MQTT__BROKER_ORDER": '"listed"',
        },
    )
    ctl_a = fleet_kit.controller(a.port).connect()
    ctl_b = fleet_kit.controller(b.port).connect()
    try:
        t0 = time.time()
        d.start()
        birth = wait_online(ctl_a, "failover-1", after=t0, timeout=30)
        assert birth["broker"] == f"127.0.0.1:{a.port}"
        log = d.log()
        assert f"connect to 127.0.0.1:{closed}" in log
        assert log.index(f"connect to 127.0.0.1:{closed}") < log.index(
            f"connected to 127.0.0.1:{a.port}"
        )
        status = ctl_a.request("failover-1", "status", timeout=10)
        assert status["result"]["broker"] == f"127.0.0.1:{a.port}"
        t1 = time.time()
        a.stop()
        birth = wait_online(ctl_b, "failover-1", after=t1, timeout=30)
        assert birth["broker"] == f"127.0.0.1:{b.port}"
        status = ctl_b.request("failover-1", "status", timeout=10)
        assert status["result"]["broker"] == f"127.0.0.1:{b.port}"
        wait_for(lambda: d.proc is not None and d.proc.poll() is None, 1, "daemon running")
    finally:
        ctl_a.close()
        ctl_b.close()
        assert d.terminate() == 0


def test_self_test_probes_every_broker(
    fleet_kit: FleetKit, make_tls_broker: Callable[..., Mosquitto]
) -> None:
    """The provisioning self-test's broker check tries each broker with its TLS settings: ok
    when one accepts the kiosk's certificate, every answer in the detail."""
    from appliance.provisioning.selftest import check_broker

    up = make_tls_broker()
    closed = free_port()
    fleet_kit.issue_cert("failover-st")
    tls = {
        "enabled": True,
        "ca_file": str(fleet_kit.ca_file),
        "cert_file": str(fleet_kit.certs / "failover-st.crt"),
        "key_file": str(fleet_kit.certs / "failover-st.key"),
    }
    cfg = validate(
        {
            "device": {"id": "failover-st"},
            "mqtt": {"tls": tls, "brokers": [f"127.0.0.1:{closed}", f"127.0.0.1:{up.port}"]},
        }
    )
    check = check_broker(cfg, timeout_s=5)
    assert check.status == "ok", check
    assert f"127.0.0.1:{closed} unreachable" in check.detail
    assert f"127.0.0.1:{up.port} accepted the connection over TLS" in check.detail
    up.stop()
    assert check_broker(cfg, timeout_s=5).status == "fail"


def test_fleet_tools_take_a_broker_list(
    tmp_path: Path, fleet_kit: FleetKit, make_tls_broker: Callable[..., Mosquitto]
) -> None:
    """``--broker`` (or fleet.toml ``brokers``) for the fleet tools: the first broker that
    answers at connect is used; errors name the entry; a broker that refuses is final."""
    import argparse
    import dataclasses

    from appliance.fleet.conn import (
        FleetConnectionError,
        FleetMqtt,
        add_broker_args,
        add_home_arg,
        broker_options,
    )

    def parse(*argv: str) -> argparse.Namespace:
        p = argparse.ArgumentParser()
        add_home_arg(p)
        add_broker_args(p)
        return p.parse_args(["--home", str(tmp_path), *argv])

    o = broker_options(parse("--broker", "mq1:8883", "--broker", "mq2"))
    assert (o.host, o.port, o.alternates) == ("mq1", 8883, (("mq2", 1883),))
    (tmp_path / "fleet.toml").write_text('[broker]\nport = 8883\nbrokers = ["a", "b:1"]\n')
    o = broker_options(parse())
    assert o.endpoints == [("a", 8883), ("b", 1)]
    (tmp_path / "fleet.toml").write_text('[broker]\nbrokers = ["a:1", "x y"]\n')
    with pytest.raises(ConfigError) as exc:
        broker_options(parse())
    assert exc.value.problems[0][0] == "broker.brokers.1"

    up = make_tls_broker()
    closed = free_port()
    opts = dataclasses.replace(
        fleet_kit.options(up.port), port=closed, alternates=(("localhost", up.port),)
    )
    with FleetMqtt(opts) as fm:
        fm.subscribe(["kiosk/+/status"])
    up.stop()
    with pytest.raises(FleetConnectionError) as down:
        FleetMqtt(opts).connect(timeout=3)
    assert f"localhost:{closed}" in down.value.message
    assert f"localhost:{up.port}" in down.value.message
