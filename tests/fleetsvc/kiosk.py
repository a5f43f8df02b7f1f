"""A kiosk's wire side for the fleet service tests: its own certificate on the TLS broker with
the shipped ACL (so the broker checks every topic it writes), its device key signing every
message like the daemon (the ``sig`` user property, docs/protocol.md), a signed Last Will."""

from __future__ import annotations

import json
import queue
import ssl
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from nacl.signing import SigningKey
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.devtools.fleetkit import FleetKit
from appliance.trust.keys import DeviceIdentity


class SignedKiosk:
    def __init__(self, kit: FleetKit, port: int, device: str, *, prefix: str = "kiosk") -> None:
        kit.issue_cert(device)
        self.device, self.prefix = device, prefix
        self.identity = DeviceIdentity(SigningKey.generate())
        self.cmds: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=device,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        certs = Path(kit.certs)
        self.client.tls_set(
            ca_certs=str(kit.ca_file),
            certfile=str(certs / f"{device}.crt"),
            keyfile=str(certs / f"{device}.key"),
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        now = time.time()  # the daemon's will (agent/mqtt.py offline_status)
        will = self._body(
            {
                "online": False,
                "device": device,
                "reason": "lost",
                "connected_at": now,
                "last_seen": now,
            }
        )
        self.client.will_set(
            self.topic("status"), will, qos=1, retain=True, properties=self._props(will)
        )
        self.client.on_message = lambda _c, _u, m: self.cmds.put(m)
        self.client.connect("localhost", port, 30)
        self.client.loop_start()
        self.client.subscribe(self.topic("cmd"), qos=1)
        self.seq = 0

    @property
    def public_key(self) -> bytes:
        return self.identity.public_key

    def topic(self, rest: str) -> str:
        return f"{self.prefix}/{self.device}/{rest}"

    @staticmethod
    def _body(obj: dict[str, Any]) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    def _props(self, payload: bytes, key: DeviceIdentity | None = None) -> Properties:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.UserProperty = ("sig", (key or self.identity).sign(payload).to_header())
        return props

    def publish(
        self,
        rest: str,
        obj: dict[str, Any],
        *,
        retain: bool = False,
        key: DeviceIdentity | None = None,
    ) -> None:
        payload = self._body(obj)
        info = self.client.publish(
            self.topic(rest), payload, qos=1, retain=retain, properties=self._props(payload, key)
        )
        info.wait_for_publish(10)

    def birth(self, **extra: Any) -> None:
        self.publish(
            "status",
            {
                "online": True,
                "device": self.device,
                "ts": time.time(),
                "version": "1.2.0",
                "site": "Ha Noi 1",
                "devices": {"camera": "ok", "fingerprint": "ok"},
                **extra,
            },
            retain=True,
        )

    def heartbeat(self, outbox: int = 0, devices: dict[str, str] | None = None) -> None:
        self.publish(
            "telemetry",
            {  # every field of the contract's TelemetryMessage, as the daemon sends
                "device": self.device,
                "ts": time.time(),
                "uptime_s": 1.0,
                "load": [0.0, 0.0, 0.0],
                "mem_total": None,
                "mem_available": None,
                "rss": None,
                "disk_free": None,
                "soc_temp_c": None,
                "outbox_depth": outbox,
                "devices": devices or {"camera": "ok"},
            },
        )

    def event(self, type_: str, data: dict[str, Any]) -> str:
        self.seq += 1
        eid = f"{self.device}-{self.seq}"
        self.publish(
            f"events/{type_}",
            {
                "id": eid,
                "seq": self.seq,
                "device": self.device,
                "type": type_,
                "ts": time.time(),
                "data": data,
            },
        )
        return eid

    def kill(self) -> None:
        """Drop the connection without DISCONNECT: the broker sends the Last Will."""
        sock = self.client.socket()
        if sock is not None:
            sock.close()
        self.client.loop_stop()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
