"""The fleet tools on the broker of provisioning/ (mutual TLS, ACLs on the certificate CN):
the shared-subscription controller and ``watch`` with the ``controller`` certificate receive a
device's events; a device certificate cannot listen in on another device's events."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.fleet.conn import FleetConnectionError, FleetMqtt
from appliance.fleet.watch import EventStream, Seen
from tests.provisioning.tlsbroker import TlsBroker, issue, tls_broker


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    with tls_broker(tmp_path_factory.mktemp("tlsacl")) as b:
        for dev in ("kiosk-a1", "kiosk-b1"):
            issue(b.ca_dir, b.certs, dev)
        yield b


def test_shared_controllers_and_acl(broker: TlsBroker, tmp_path: Path) -> None:
    got: dict[str, list[str]] = {"c1": [], "c2": []}
    lock = threading.Lock()
    done = threading.Event()

    def sink(name: str) -> Callable[[Seen], None]:
        def on(seen: Seen) -> None:
            with lock:
                got[name].append(str(seen.body["id"]))
                if sum(len(v) for v in got.values()) >= 40:
                    done.set()

        return on

    streams = [
        EventStream(broker.opts(), {}, sink(n), share_group="ctl", client_id=f"t-{n}")
        for n in ("c1", "c2")
    ]
    for s in streams:
        s.start()
    # kiosk-b1 tries to read kiosk-a1's events: the ACL withholds them.
    spy = FleetMqtt(broker.opts("kiosk-b1")).connect()
    spied = spy.collector("kiosk/kiosk-a1/events/#")
    spy.subscribe(["kiosk/kiosk-a1/events/#", "kiosk/kiosk-b1/cmd"])
    own = spy.collector("kiosk/kiosk-b1/cmd")
    try:
        with FleetMqtt(broker.opts("kiosk-a1")) as dev:
            for i in range(40):
                body = {"id": f"e{i}", "seq": i + 1, "device": "kiosk-a1", "type": "note",
                        "ts": 1.0, "data": {}}  # fmt: skip
                dev.publish("kiosk/kiosk-a1/events/note", json.dumps(body).encode())
        assert done.wait(20), got
        ctl = FleetMqtt(broker.opts()).connect()
        ctl.publish("kiosk/kiosk-b1/cmd", b"marker")  # delivered in order after the events
        ctl.close()
        own.get(timeout=10)
        with pytest.raises(queue.Empty):
            spied.get_nowait()
    finally:
        spy.close()
        for s in streams:
            s.stop()
    # A refused publish is an error naming the ACL, not a silent loss.
    with FleetMqtt(broker.opts("kiosk-b1")) as dev_b, pytest.raises(FleetConnectionError) as err:
        dev_b.publish("kiosk/kiosk-a1/cmd", b"forged")
    assert "not authorised by the broker's ACL" in err.value.message
    ids = got["c1"] + got["c2"]
    assert sorted(ids) == sorted(f"e{i}" for i in range(40)) and got["c1"] and got["c2"]
