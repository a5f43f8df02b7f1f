"""Fixtures for the camera tests: configs, an event recorder, a condition waiter."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from appliance.drivers.camera.config import CameraConfig
from appliance.drivers.camera.sim import SimCamera


class Events:
    """An EventSink / ctx.emit that records (type, data, durable) triples."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any], bool]] = []
        self._lock = threading.Lock()

    def sink(self, kind: str, data: dict[str, Any]) -> None:
        with self._lock:
            self.items.append((kind, data, True))

    def emit(self, kind: str, data: dict[str, Any], durable: bool = True) -> None:
        with self._lock:
            self.items.append((kind, data, durable))

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [d for k, d, _ in self.items if k == kind]


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until it holds or fail after ``timeout`` seconds (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    event = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {what}")
        event.wait(0.01)


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def make_sim(events: Events) -> Iterator[Callable[..., SimCamera]]:
    made: list[SimCamera] = []

    def make(**overrides: Any) -> SimCamera:
        fields: dict[str, Any] = {"backend": "sim", "sim_fps": 200.0, "reopen_interval_s": 0.05}
        fields.update(overrides)
        cam = SimCamera(CameraConfig(**fields), events.sink)
        made.append(cam)
        return cam

    yield make
    for cam in made:
        cam.stop()
