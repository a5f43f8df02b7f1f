"""Pure pieces of the agent: topics, backoff, sd_notify framing."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from appliance.agent.mqtt import backoff_delay
from appliance.protocol.topics import Topics, validate_segment
from appliance.sdnotify import Notifier


def test_topic_tree() -> None:
    t = Topics("kiosk", "k1")
    assert t.status == "kiosk/k1/status"
    assert t.cmd == "kiosk/k1/cmd"
    assert t.reply == "kiosk/k1/reply"
    assert t.event("note") == "kiosk/k1/events/note"
    assert t.group_cmd("hanoi") == "kiosk/group/hanoi/cmd"
    assert t.config_desired == "kiosk/k1/config/desired"


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "a\x00b", "x" * 300])
def test_topic_segments_reject_wildcards_and_separators(bad: str) -> None:
    with pytest.raises(ValueError):
        validate_segment(bad)
    with pytest.raises(ValueError):
        Topics("kiosk", bad)


def test_backoff_is_full_jitter_and_capped() -> None:
    rnd = random.Random(7)
    for attempt in range(20):
        ceiling = min(60.0, 0.5 * 2**attempt)
        samples = [backoff_delay(attempt, 0.5, 60.0, rnd) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples)
        # Full jitter spreads over the whole range, not around the ceiling.
        assert min(samples) < ceiling * 0.2 and max(samples) > ceiling * 0.8


def test_notifier_sends_datagrams_to_path_and_abstract(tmp_path: Path) -> None:
    path = str(tmp_path / "n.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        s.settimeout(5)
        n = Notifier({"NOTIFY_SOCKET": path})
        assert n.ready("connected")
        assert s.recv(1024).decode().startswith("READY=1\nSTATUS=connected\nMAINPID=")
        n.close()
    name = f"appliance-test-{id(tmp_path)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(5)
        n = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000"})
        assert n.watchdog_interval == 1.0
        assert n.watchdog()
        assert s.recv(1024) == b"WATCHDOG=1"
        n.close()


def test_notifier_is_a_noop_outside_systemd() -> None:
    n = Notifier({})
    assert not n.enabled and not n.ready("x") and n.watchdog_interval is None


def test_watchdog_pid_for_another_process_is_ignored() -> None:
    assert Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_interval is None
