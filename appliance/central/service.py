"""The paho MQTT 5 client under the central services (the enrollment receiver, the citizen
directory): one set-up, connect, one subscription renewed on every (re)connect, wait for its
SUBACK, stop. A service says what it subscribes to and what it does with a message."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..mqttclient import FleetConnectionError, make_client

log = logging.getLogger(__name__)


class SubscribedService:
    """Base of a central service: ``name`` (for messages), :meth:`_filter` and
    :meth:`_on_message` come from the subclass."""

    name = "service"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        tls: dict[str, Any] | None,
        insecure: bool = False,
    ) -> None:
        self.host, self.port = host, port
        self.client = make_client(client_id, tls=tls or None, insecure=insecure, nodelay=False)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 5)
        self._subscribed = threading.Event()
        #: SUBACKs received: one per (re)subscription, so a test can wait for a resubscribe.
        self.subacks = 0

    def _filter(self) -> str:
        raise NotImplementedError

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        raise NotImplementedError

    def _connect(
        self, timeout: float, *, clean_start: bool, properties: Properties | None = None
    ) -> None:
        """Connect and wait for the subscription; :class:`FleetConnectionError`
        (``broker_unreachable``) when the broker cannot be reached or does not answer."""
        try:
            self.client.connect(
                self.host, self.port, 30, clean_start=clean_start, properties=properties
            )
        except OSError as exc:
            raise FleetConnectionError(
                f"{self.name}: cannot connect to {self.host}:{self.port}: {exc}"
            ) from None
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            self._close()
            raise FleetConnectionError(f"{self.name}: no SUBACK from {self.host}:{self.port}")

    def _close(self, properties: Properties | None = None) -> None:
        self.client.disconnect(properties=properties)
        self.client.loop_stop()
        # paho closes loop_start's socket pair only in __del__; a client in a reference cycle
        # (ours is: callbacks are bound methods) may be finalised with a ResourceWarning.
        reset = getattr(self.client, "_reset_sockets", None)
        if callable(reset):
            reset()

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.error("%s: broker refused the connection: %s", self.name, rc)
            return
        client.subscribe([(self._filter(), SubscribeOptions(qos=1))])

    def _on_subscribe(self, *_a: Any) -> None:
        self.subacks += 1
        self._subscribed.set()


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT: how a service's command line waits to stop."""
    stop = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return stop
