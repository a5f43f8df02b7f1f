"""card.* command handlers called with a real CommandContext against the real stack, the
``appliance sim card`` entry point as a subprocess, and parallel test stacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from pydantic import ValidationError

from appliance.commands import CommandContext, CommandRegistry
from appliance.drivers.card.commands import register
from appliance.drivers.card.teststack import PcscTestStack, tcp_listening
from appliance.errors import ApplianceError

from .conftest import BIRTH, DOC, EXPIRY, wait_card_state


def _ctx(name: str, sent: list[tuple[str, dict[str, Any], bool]]) -> CommandContext:
    def emit(kind: str, data: dict[str, Any], durable: bool = True) -> None:
        sent.append((kind, data, durable))

    return CommandContext(command_id="c-1", name=name, deadline=time.monotonic() + 60, emit=emit)


def _call(
    registry: CommandRegistry,
    name: str,
    payload: dict[str, Any],
    sent: list[tuple[str, dict[str, Any], bool]],
) -> dict[str, Any]:
    spec = registry.get(name)
    args = spec.args_model.model_validate(payload)
    result = spec.handler(_ctx(name, sent), args)
    json.dumps(result)  # every reply must be JSON as it travels over MQTT
    return result


def test_card_commands_round_trip(make_encoder, insert_card, package) -> None:
    insert_card()
    registry = CommandRegistry()
    register(registry, make_encoder())
    assert {"card.status", "card.read", "card.encode"} <= set(registry.names())
    sent: list[tuple[str, dict[str, Any], bool]] = []
    status = _call(registry, "card.status", {}, sent)
    assert status["profile"] == "cccd-applet" and status["trust_anchors"] == 1
    issued = _call(registry, "card.encode", package.model_dump(mode="json"), sent)
    assert issued["outcome"] == "issued"
    steps = [d["step"] for k, d, durable in sent if k == "command.progress"]
    assert "check_package" in steps and "write:DG2" in steps and "verify:read" in steps
    assert all(not durable for k, _d, durable in sent if k == "command.progress")
    read = _call(
        registry,
        "card.read",
        {"document_number": DOC.lower(), "birth": BIRTH, "expiry": EXPIRY},
        sent,
    )
    assert read["passive_authentication"]["passed"]
    assert read["dg13"]["personal_id"] == DOC


@pytest.mark.parametrize(
    "payload",
    [
        {"document_number": DOC, "birth": "901301", "expiry": EXPIRY},
        {"document_number": DOC, "birth": BIRTH},
        {"document_number": "07909/001234", "birth": BIRTH, "expiry": EXPIRY},
        {"document_number": DOC, "birth": BIRTH, "expiry": EXPIRY, "pin": "1"},
    ],
)
def test_card_read_bad_arguments_are_refused(payload: dict[str, Any]) -> None:
    from appliance.drivers.card.commands import ReadArgs

    with pytest.raises(ValidationError):
        ReadArgs.model_validate(payload)


def test_card_read_without_card_times_out_cleanly(make_encoder) -> None:
    registry = CommandRegistry()
    register(registry, make_encoder(card_wait_s=0.5))
    with pytest.raises(ApplianceError) as ei:
        _call(registry, "card.read", {"document_number": DOC, "birth": BIRTH, "expiry": EXPIRY}, [])
    assert ei.value.code == "no_card"


def test_sim_card_cli_serves_a_card(pcsc_stack, make_encoder, package) -> None:
    env = {**os.environ, **pcsc_stack.env}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "appliance.drivers.card.simcli",
            "--port",
            str(pcsc_stack.vpcd_port),
            "--log-level",
            "WARNING",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_card_state(pcsc_stack, True)
        assert make_encoder().encode(package)["outcome"] == "issued"
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    wait_card_state(pcsc_stack, False)


def test_sim_card_cli_help_and_bad_options() -> None:
    run = [sys.executable, "-m", "appliance.drivers.card.simcli"]
    out = subprocess.run(
        [*run, "--help"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    for opt in (
        "--host",
        "--port",
        "--profile",
        "--pull-on-update",
        "--fail-on-update",
        "--delay-ms",
        "--reconnect",
        "--wait",
        "default",
    ):
        assert opt in out
    bad = subprocess.run(
        [*run, "--pull-on-update", "0"], capture_output=True, text=True, timeout=30, check=False
    )
    assert bad.returncode == 2 and "must be 1 or more" in bad.stderr
    bad = subprocess.run(
        [*run, "--profile", "nope"], capture_output=True, text=True, timeout=30, check=False
    )
    assert bad.returncode == 2 and "not found" in bad.stderr
    # vpcd not listening: a clear message, no traceback
    with PcscTestStack() as s:
        port = s.vpcd_port
    assert not tcp_listening(port)
    bad = subprocess.run(
        [*run, "--port", str(port), "--wait", "0.2"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert bad.returncode == 1 and "nothing listens" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_two_stacks_run_side_by_side(pcsc_stack) -> None:
    with PcscTestStack() as a, PcscTestStack() as b:
        assert len({a.vpcd_port, b.vpcd_port, pcsc_stack.vpcd_port}) == 3
        assert a.running and b.running and a.socket_path != b.socket_path
        sock = a.socket_path
    assert not a.running and sock is not None and not sock.exists()


def test_encoder_start_never_raises_without_pcscd(tmp_path) -> None:
    """A daemon process whose pcscd socket leads nowhere reports health instead of raising."""
    code = (
        "import sys, threading\n"
        "from appliance.drivers.card.config import CardConfig\n"
        "from appliance.drivers.card.pcsc import PcscEncoder\n"
        "got = threading.Event(); seen = []\n"
        "def sink(t, d):\n"
        "    seen.append(d)\n"
        "    if t == 'device.health': got.set()\n"
        "enc = PcscEncoder(CardConfig(), sink); enc.start()\n"
        "assert got.wait(10), 'no health event'\n"
        "print(enc.health().state, enc.health().detail); enc.stop()\n"
    )
    env = {**os.environ, "PCSCLITE_CSOCK_NAME": str(tmp_path / "no-pcscd.comm")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("disconnected"), out.stdout


def test_bad_profile_or_trust_bundle_is_reported_as_health(make_encoder, tmp_path) -> None:
    enc = make_encoder(card_profile="no-such-card")
    assert enc.health().state == "error" and "no-such-card" in (enc.health().detail or "")
    bad = tmp_path / "bundle.pem"
    bad.write_text("not a certificate")
    enc = make_encoder(trust_bundle=bad)
    assert enc.trust_anchors == []
    assert any("trust bundle" in p for p in enc._problems)


def test_simulated_card_kit_in_a_fresh_process() -> None:
    """What the daemon's simulation mode uses: stack + blank card, env exported in-process."""
    code = (
        "from appliance.drivers.card.teststack import SimulatedCard\n"
        "from appliance.drivers.card.link import PcscLink\n"
        "sim = SimulatedCard().start()\n"
        "link = PcscLink(); r = link.find_reader('')\n"
        "atr = link.wait_for_card(r, 10); link.close()\n"
        "sim.insert_blank(); print(atr.hex()); sim.stop()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().upper() == "3B8980014170706C69616E636545"


def test_pcscd_going_away_is_reported_as_disconnected() -> None:
    code = (
        "import threading\n"
        "from appliance.drivers.card.teststack import SimulatedCard\n"
        "from appliance.drivers.card.config import CardConfig\n"
        "from appliance.drivers.card.pcsc import PcscEncoder\n"
        "sim = SimulatedCard().start()\n"
        "states = []; cond = threading.Condition()\n"
        "def sink(t, d):\n"
        "    with cond:\n"
        "        states.append((t, d.get('state'))); cond.notify_all()\n"
        "def wait(item):\n"
        "    with cond:\n"
        "        assert cond.wait_for(lambda: item in states, 10), states\n"
        "enc = PcscEncoder(CardConfig(), sink); enc.start()\n"
        "wait(('card.inserted', None))\n"
        "sim.stop()\n"
        "wait(('device.health', 'disconnected'))\n"
        "print(enc.status()['health'], enc.status()['card_present']); enc.stop()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["disconnected", "False"]


def test_sim_card_cli_fault_option_takes_effect(pcsc_stack, make_encoder, package) -> None:
    env = {**os.environ, **pcsc_stack.env}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "appliance.drivers.card.simcli",
            "--port",
            str(pcsc_stack.vpcd_port),
            "--fail-on-update",
            "2",
            "--log-level",
            "WARNING",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_card_state(pcsc_stack, True)
        with pytest.raises(ApplianceError) as ei:
            make_encoder().encode(package)
        assert ei.value.code == "card_spoiled"
        assert ei.value.details["cause"]["details"]["status"] == 0x6581
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    wait_card_state(pcsc_stack, False)
