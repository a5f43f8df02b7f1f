"""A small paho MQTT 5 client that waits for what it needs (CONNACK, SUBACK, PUBACK) with
deadlines, and the broker options it connects with.

Used by every tool that talks to the broker as a peer of the kiosks rather than as a kiosk: the
fleet tools (``appliance fleet ...``, whose flags and ``<home>/fleet.toml`` build the options in
:mod:`appliance.fleet.conn`), the central service, and the kiosk's own provisioning (the claim
exchange and the self-test's broker check). It sits below all three so none of them imports
another's package for it (docs/architecture.md, "Borders").
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import ssl
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .errors import ApplianceError
from .protocol.codes import ErrorCode

log = logging.getLogger(__name__)


class FleetConnectionError(ApplianceError):
    """The broker could not be reached, refused the connection, or did not answer in time."""

    code = ErrorCode.BROKER_UNREACHABLE
    retryable = True


@dataclass(frozen=True)
class BrokerOptions:
    """Where and how a fleet tool connects."""

    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "kiosk"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False
    # Further brokers of the same cluster, tried in order when ``host``:``port`` does not
    # answer at connect (a kiosk's ``mqtt.brokers``, for the fleet tools). Failover happens at
    # connect only: paho's own reconnect of a connected client returns to the same broker.
    alternates: tuple[tuple[str, int], ...] = ()

    @property
    def tls(self) -> bool:
        return self.ca_file is not None or self.cert_file is not None

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return [(self.host, self.port), *self.alternates]

    def describe(self) -> str:
        where = ", ".join(f"{h}:{p}" for h, p in self.endpoints)
        return f"{where}{' (TLS)' if self.tls else ''}"

    def paho_tls(self) -> dict[str, str | None] | None:
        """paho ``tls_set`` arguments, or None without TLS."""
        if not self.tls:
            return None
        return tls_files(self.ca_file, self.cert_file, self.key_file)


def tls_files(
    ca_file: Path | str | None, cert_file: Path | str | None, key_file: Path | str | None
) -> dict[str, str | None]:
    """paho ``tls_set`` file arguments for :func:`make_client`."""
    return {
        "ca_certs": str(ca_file) if ca_file else None,
        "certfile": str(cert_file) if cert_file else None,
        "keyfile": str(key_file) if key_file else None,
    }


def release(client: paho.Client) -> None:
    """Stop a client's network thread and close its sockets now. paho 2.x closes the socket
    pair that ``loop_start`` made only in ``Client.__del__``; a client in a reference cycle
    (its callbacks are bound methods) is freed by the cyclic collector, which may finalise
    the sockets first and raise ResourceWarning (an error under filterwarnings=error)."""
    client.loop_stop()
    reset = getattr(client, "_reset_sockets", None)
    if callable(reset):
        reset()


@dataclass(frozen=True)
class Message:
    """One delivered message with what the fleet tools need of its MQTT 5 properties."""

    topic: str
    payload: bytes
    retained: bool
    user_properties: dict[str, str]
    correlation_data: bytes | None


def _nodelay(_c: Any, _u: Any, sock: Any) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # a websocket or unix transport has no TCP option
        log.debug("TCP_NODELAY not available on this socket")


def make_client(
    client_id: str,
    *,
    protocol: str = "5",
    tls: Mapping[str, str | None] | None = None,
    insecure: bool = False,
    persistent: bool = False,
    nodelay: bool = True,
) -> paho.Client:
    """The one paho client set-up of the project: every paho user (the kiosk agent, the fleet
    tools, the ingest, the central services, the dev controller, provisioning's broker check,
    ``appliance status``) makes its client here.

    ``protocol`` "5" (MQTT 5, the default) or "3.1.1"; ``tls`` the paho ``tls_set`` files
    (``ca_certs``, ``certfile``, ``keyfile``; None: plain TCP) with the server certificate and
    host name checked (``insecure`` skips the host name only, for a test broker);
    ``persistent`` asks MQTT 3.1.1 for ``clean_session=false`` (MQTT 5 sets its session at
    CONNECT, :func:`connect_properties`). TLS files that cannot be loaded raise
    :class:`FleetConnectionError` (``tls_files``) naming them."""
    v5 = protocol == "5"
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        clean_session=None if v5 else not persistent,
    )
    if nodelay:
        client.on_socket_open = _nodelay
    if tls is not None:
        try:
            client.tls_set(
                ca_certs=tls.get("ca_certs"),
                certfile=tls.get("certfile"),
                keyfile=tls.get("keyfile"),
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (OSError, ssl.SSLError) as exc:
            files = ", ".join(str(v) for v in tls.values() if v)
            raise FleetConnectionError(
                f"cannot load the TLS files ({files}): {exc}",
                code=ErrorCode.TLS_FILES,
                retryable=False,
            ) from None
        if insecure:
            client.tls_insecure_set(True)
    return client


def connect_properties(session_expiry_s: int = 0) -> Properties:
    """MQTT 5 CONNECT properties: the session expiry interval (MQTT 5.0 section 3.1.2.11.2;
    0: the session ends with the connection)."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if session_expiry_s:
        props.SessionExpiryInterval = session_expiry_s
    return props


class FleetMqtt:
    """A paho MQTT 5 client for the fleet tools (one network thread, thread-safe calls).

    ``on_message`` receives every delivered :class:`Message`; :meth:`collector` gives a queue
    of the messages matching a filter. Subscriptions are made again after a reconnect.
    """

    def __init__(
        self,
        opts: BrokerOptions,
        *,
        client_id: str | None = None,
        clean_start: bool = True,
        session_expiry_s: int = 0,
    ) -> None:
        self.opts = opts
        self.client_id = client_id or f"fleet-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._clean_start = clean_start
        self._session_expiry_s = session_expiry_s
        self.client = self._new_client()
        self._cv = threading.Condition()
        self._connack: Any = None
        self._subacks: dict[int, list[int]] = {}
        self._pubacks: dict[int, int] = {}
        self._subs: list[tuple[str, int]] = []
        self._collectors: list[tuple[str, queue.Queue[Message]]] = []
        self.on_message: Callable[[Message], None] | None = None

    # -- connection ----------------------------------------------------------------------------

    def _new_client(self) -> paho.Client:
        client = make_client(self.client_id, tls=self.opts.paho_tls(), insecure=self.opts.insecure)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        return client

    def connect(self, timeout: float = 10.0) -> FleetMqtt:
        """Connect to the first broker of ``opts.endpoints`` that answers (each with a fresh
        client and up to ``timeout``); a broker that refuses the connection is final."""
        problems = []
        for i, (host, port) in enumerate(self.opts.endpoints):
            if i:
                self.client = self._new_client()
                with self._cv:
                    self._connack = None
            try:
                return self._connect_one(host, port, timeout)
            except FleetConnectionError as exc:
                if not exc.retryable:
                    raise
                problems.append(exc.message)
        if len(problems) == 1:
            raise FleetConnectionError(problems[0])
        raise FleetConnectionError("no broker answered: " + "; ".join(problems))

    def _connect_one(self, host: str, port: int, timeout: float) -> FleetMqtt:
        where = f"{host}:{port}{' (TLS)' if self.opts.tls else ''}"
        props = connect_properties(self._session_expiry_s)
        try:
            self.client.connect(
                host, port, keepalive=30, clean_start=self._clean_start, properties=props
            )
        except (OSError, ssl.SSLError) as exc:
            release(self.client)
            raise FleetConnectionError(f"cannot connect to the broker {where}: {exc}") from None
        self.client.loop_start()
        with self._cv:
            ok = self._cv.wait_for(lambda: self._connack is not None, timeout)
        if not ok:
            self.close()
            raise FleetConnectionError(
                f"no answer (CONNACK) from {where} within {timeout:g} s: "
                "is the port right, and does the broker accept this certificate?"
            )
        if self._connack.is_failure:
            rc = self._connack
            self.close()
            raise FleetConnectionError(
                f"the broker {where} refused the connection: {rc}", retryable=False
            )
        return self

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            release(self.client)

    def __enter__(self) -> FleetMqtt:
        return self.connect()

    def __exit__(self, *_: object) -> None:
        self.close()

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        with self._cv:
            first = self._connack is None
            self._connack = rc
            self._cv.notify_all()
        if not rc.is_failure and not first and self._subs:
            client.subscribe(list(self._subs))  # resubscribe after a reconnect

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: list[Any], _p: Any) -> None:
        with self._cv:
            self._subacks[mid] = [r.value for r in rcs]
            self._cv.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self._cv:
            self._pubacks[mid] = rc.value
            self._cv.notify_all()

    # -- messages ------------------------------------------------------------------------------

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        user = dict(getattr(props, "UserProperty", None) or []) if props else {}
        corr = getattr(props, "CorrelationData", None) if props else None
        m = Message(
            topic=msg.topic,
            payload=bytes(msg.payload),
            retained=bool(msg.retain),
            user_properties={str(k): str(v) for k, v in user.items()},
            correlation_data=bytes(corr) if corr else None,
        )
        with self._cv:
            collectors = list(self._collectors)
        for pattern, q in collectors:
            if paho.topic_matches_sub(pattern, m.topic):
                q.put(m)
        cb = self.on_message
        if cb is not None:
            try:
                cb(m)
            except Exception:  # a tool's handler must not kill the network thread
                log.exception("message handler failed on %s", m.topic)

    def collector(self, pattern: str) -> queue.Queue[Message]:
        """A queue receiving every later message whose topic matches ``pattern`` (a filter
        without ``$share``); subscribe separately."""
        q: queue.Queue[Message] = queue.Queue()
        with self._cv:
            self._collectors.append((pattern, q))
        return q

    def subscribe(self, topics: list[str], qos: int = 1, timeout: float = 10.0) -> None:
        """Subscribe and wait for the SUBACK; a refused filter raises."""
        pairs = [(t, qos) for t in topics]
        rc, mid = self.client.subscribe(pairs)
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            raise FleetConnectionError(f"subscribe failed (rc {rc})")
        with self._cv:
            ok = self._cv.wait_for(lambda: mid in self._subacks, timeout)
            codes = self._subacks.pop(mid, [])
        if not ok:
            raise FleetConnectionError(f"no SUBACK for {topics} within {timeout:g} s")
        bad = [t for t, c in zip(topics, codes, strict=False) if c >= 0x80]
        if bad:
            raise FleetConnectionError(f"the broker refused the subscription to {bad}")
        with self._cv:
            self._subs.extend(pairs)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        expiry_s: int | None = None,
        timeout: float = 10.0,
    ) -> None:
        """Publish at QoS 1 and wait for the PUBACK; a refusal (e.g. 0x87 not authorised by
        the ACL) raises with the reason."""
        props = None
        if response_topic or correlation_data or expiry_s:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation_data:
                props.CorrelationData = correlation_data
            if expiry_s:
                props.MessageExpiryInterval = expiry_s
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
        with self._cv:
            ok = self._cv.wait_for(lambda: info.mid in self._pubacks, timeout)
            code = self._pubacks.pop(info.mid, None)
        if not ok or code is None:
            raise FleetConnectionError(f"no PUBACK for {topic} within {timeout:g} s")
        # 0x00 success, 0x10 no matching subscribers (MQTT 5.0 section 3.4.2.1)
        if code not in (0x00, 0x10):
            what = "not authorised by the broker's ACL" if code == 0x87 else f"reason {code:#x}"
            raise FleetConnectionError(
                f"the broker refused the publish on {topic}: {what}", retryable=False
            )
