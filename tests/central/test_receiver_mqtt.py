"""``appliance fleet receive`` as a real process on a real mosquitto: a kiosk-side uploader
publishes chunks, the receiver is killed with SIGKILL mid-upload, the rest of the chunks are
published while it is away (its persistent session queues them), and after its restart the
package completes with a valid receipt."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.central.package import split_package
from appliance.central.testkit import build_package, standard_records
from appliance.devtools.broker import Mosquitto
from appliance.fleet.conn import BrokerOptions, FleetMqtt, Message
from appliance.trust.sealed import verify_ack
from tests.central.conftest import DEVICE, Fleet
from tests.central.procs import ReceiverProc
from tests.helpers import wait_for


@pytest.fixture
def receiver(fleet: Fleet, broker: Mosquitto, tmp_path: Path) -> Iterator[ReceiverProc]:
    r = ReceiverProc(fleet.home, broker, tmp_path / "receiver.log")
    yield r
    if r.proc is not None and r.proc.poll() is None:
        r.kill9()


def _next(q: queue.Queue[Message], pred: Any, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "no matching message in time"
        try:
            msg = q.get(timeout=left)
        except queue.Empty:
            continue
        obj = json.loads(msg.payload)
        if pred(obj):
            return obj  # type: ignore[no-any-return]


def test_receiver_killed_mid_upload_resumes(
    fleet: Fleet, broker: Mosquitto, receiver: ReceiverProc
) -> None:
    built = build_package(
        fleet.kiosk, fleet.enrollment.public_key, device=DEVICE, records=standard_records()
    )
    chunks = split_package(built.package_id, built.data, 16 * 1024)
    assert len(chunks) >= 6
    kiosk = FleetMqtt(BrokerOptions(host=broker.host, port=broker.port)).connect()
    try:
        acks = kiosk.collector(f"kiosk/{DEVICE}/upload/ack")
        receipts = kiosk.collector(f"kiosk/{DEVICE}/upload/receipt")
        kiosk.subscribe([f"kiosk/{DEVICE}/upload/ack", f"kiosk/{DEVICE}/upload/receipt"])
        receiver.start()
        topic = f"kiosk/{DEVICE}/upload/{built.package_id}"
        half = len(chunks) // 2
        for c in chunks[:half]:
            kiosk.publish(topic, c)
        seen: set[int] = set()
        while len(seen) < half:
            seen.update(_next(acks, lambda a: "received" in a)["received"])
        receiver.kill9()
        for c in chunks[half:]:
            kiosk.publish(topic, c)  # queued by the broker for the receiver's session
        receiver.start()
        status = _next(acks, lambda a: "status" in a, timeout=30)
        assert status == {"package_id": built.package_id, "status": "complete"}
        receipt = receipts.get(timeout=20)
        ack = verify_ack(receipt.payload, [fleet.root.public_key], device_id=DEVICE, now=1e9)
        assert {i for i, _s in ack.records} == {r["record_id"] for r in built.manifest["records"]}
        res = fleet.store.result(DEVICE, built.package_id)
        assert res is not None and res["status"] == "complete"
        # Marked once the broker confirmed both messages (a restart announces it otherwise).
        wait_for(
            lambda: (fleet.store.result(DEVICE, built.package_id) or {}).get("announced_at"),
            10,
            "verdict marked as announced",
        )
        # A kiosk that missed the verdict re-sends a chunk and gets it again (the receiver
        # answers a finished package at most every 2 s: re-send as a kiosk would).
        again: dict[str, Any] = {}
        deadline = time.monotonic() + 20
        while not again and time.monotonic() < deadline:
            kiosk.publish(topic, chunks[0])
            try:
                again = _next(acks, lambda a: "status" in a, timeout=1.0)
            except AssertionError:
                continue
        assert again.get("status") == "complete"
        receiver.stop()
    finally:
        kiosk.close()


def test_multi_megabyte_package_through_the_broker(fleet: Fleet, broker: Mosquitto) -> None:
    """A several-megabyte package (a large portrait) in 32 KiB chunks, receiver in-process."""
    import io

    import numpy as np
    from PIL import Image

    from appliance.central.receiver import Receiver, ReceiverCore, registry_device_keys
    from appliance.central.testkit import finger_record
    from appliance.lds.files import face_record_from_jpeg

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(1600, 1200, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    portrait = face_record_from_jpeg(buf.getvalue(), 1200, 1600)
    records = [("face", 0, portrait), ("finger", 2, finger_record(2))]
    built = build_package(fleet.kiosk, fleet.enrollment.public_key, device=DEVICE, records=records)
    assert len(built.data) > 2_000_000
    chunks = split_package(built.package_id, built.data, 32 * 1024)
    core = ReceiverCore(
        fleet.store,
        fleet.enrollment,
        fleet.ingest,
        registry_device_keys(fleet.home),
        lambda *_: False,
    )
    receiver = Receiver(
        core, host=broker.host, port=broker.port, client_id="central-big", session_expiry_s=0
    ).start()
    kiosk = FleetMqtt(BrokerOptions(host=broker.host, port=broker.port)).connect()
    try:
        acks = kiosk.collector(f"kiosk/{DEVICE}/upload/ack")
        kiosk.subscribe([f"kiosk/{DEVICE}/upload/ack"])
        for c in chunks:
            kiosk.publish(f"kiosk/{DEVICE}/upload/{built.package_id}", c)
        status = _next(acks, lambda a: "status" in a, timeout=60)
        assert status["status"] == "complete", status
        stored = fleet.store.record(DEVICE, built.package_id, "01-face-00.iso")
        assert stored == portrait
    finally:
        kiosk.close()
        receiver.stop(end_session=True)


def test_an_unreachable_broker_is_named_as_such(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The receiver's connection failure is the fleet tools' ``broker_unreachable`` (exit 1,
    the broker named), not a device timeout."""
    from appliance.central import receivecli
    from appliance.devtools.broker import free_port

    port = free_port()  # nothing listens there
    rc = receivecli.main(
        ["--home", str(fleet.home), "--port", str(port), "--store", str(tmp_path / "store")]
    )
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "error (broker_unreachable)" in err and f"127.0.0.1:{port}" in err, err
