"""Serving release bundles to kiosks in chunks over MQTT (the download side of an update job).

A kiosk asks ``{prefix}/{device}/update/get`` with ``{"sha256", "offset", "length"}``; the
server answers on ``{prefix}/{device}/update/data`` with the bytes of the bundle whose SHA-256
that is (appliance/update/agent.py's chunk format). The kiosk keeps what it received, so a
download interrupted by a power cut or a lost connection resumes at its offset. Only bundles
registered with :meth:`BundleServer.add` are served; a request for anything else is ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
from pathlib import Path

from ..mqttclient import FleetMqtt
from ..protocol.topics import Topics
from ..update import topics
from ..update.agent import CHUNK, make_chunk

log = logging.getLogger(__name__)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class BundleServer:
    def __init__(self, mqtt: FleetMqtt, prefix: str) -> None:
        self.mqtt = mqtt
        self.prefix = prefix
        self.bundles: dict[str, Path] = {}
        self.served_bytes = 0
        self._filter = Topics.anyone(prefix).update_get
        self._queue = mqtt.collector(self._filter)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, path: Path) -> str:
        sha = sha256_file(path)
        self.bundles[sha] = Path(path)
        return sha

    def start(self) -> BundleServer:
        self.mqtt.subscribe([self._filter])
        self._thread = threading.Thread(target=self._run, name="bundle-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._serve(msg.topic, msg.payload)
            except Exception:
                log.exception("bundle server: request on %s failed", msg.topic)

    def _serve(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) != 4:
            return
        device = parts[1]
        try:
            req = json.loads(payload)
            sha, offset = str(req["sha256"]), int(req["offset"])
            length = min(int(req.get("length", CHUNK)), CHUNK)
        except (ValueError, KeyError, TypeError):
            return
        path = self.bundles.get(sha)
        if path is None or offset < 0 or length <= 0:
            return
        size = path.stat().st_size
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(length)
        self.mqtt.publish(
            topics.update_data(self.prefix, device), make_chunk(sha, offset, data, size)
        )
        self.served_bytes += len(data)
