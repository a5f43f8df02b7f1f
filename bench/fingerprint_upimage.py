"""UpImage throughput as a share of the UART line rate, at 57600 and 115200 baud.

    .venv/bin/python bench/fingerprint_upimage.py [--repeat 1] [--rates 57600,115200]
                                                  [--no-pyfingerprint] [--fingers 3]

Kit section (issue 14), in the same run, on one factory-fresh emulated R307 paced at the line
rate (57,600 baud, 128-byte packets, as shipped):
  pyfp_default   pyfingerprint at its defaults (57,600 baud): readImage, then downloadImage
  kit_driver     the driver at the kit's defaults (firmware_profiles/sim.toml: it negotiates
                 115,200 baud and 256-byte packets on connect): up_image_raw()
  kit_line       the line floor at the kit's settings (12-byte ack + 144 packets of 256 bytes)
  per_finger     the finger placed on the platen (while the driver polls GenImg) -> image
                 uploaded, scored, ISO 19794-4 PNG record built and sealed to disk
                 (SealedStore.put); target <= kit_line + 0.7 s
targets: kit_driver <= 3.40 s and pyfp_default / kit_driver >= 2.

The emulator (R307 profile) serves a real pty and paces its output at the line rate, 10 bit
times a byte (8N1), as the sensor's UART does. For each rate, measured in the same run:
  line       the physical floor: (12-byte ack + 288 data packets) x 10 / baud
  baseline   a bare pyserial loop that sends UpImage and reads the reply's byte count with no
             parsing at all (what the emulator + pty allow; the best any host could do here)
  driver     FingerprintSensor.up_image_raw(): parse, checksum, reassemble (the production path)
  pyfp       pyfingerprint's downloadImage (the public library; it also writes a BMP)
share = line / driver time (target >= 95 %); ratio = driver time / baseline time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import serial

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit

from appliance.drivers.fingerprint.config import FingerprintConfig
from appliance.drivers.fingerprint.device import FingerprintSensor
from appliance.drivers.fingerprint.emulator import FingerprintEmulator
from appliance.drivers.fingerprint.frames import (
    IMAGE_WIRE_BYTES,
    Instruction,
    build_command,
    wire_bytes_for,
)
from appliance.resources import profiles_dir

ACK_LEN = 12


def reply_bytes(packet_size: int) -> int:
    return ACK_LEN + wire_bytes_for(IMAGE_WIRE_BYTES, packet_size)


def bare_read(path: str, baud: int, n: int) -> float:
    with serial.Serial(path, baud, timeout=30) as port:
        t0 = time.perf_counter()
        port.write(build_command(Instruction.UpImage))
        got = 0
        while got < n:
            chunk = port.read(max(1, port.in_waiting))
            if not chunk:
                raise RuntimeError("bare read timed out")
            got += len(chunk)
        return time.perf_counter() - t0


def kit_fields() -> dict[str, Any]:
    """The kit's [hardware.fingerprint] settings (firmware_profiles/sim.toml)."""
    with (profiles_dir() / "sim.toml").open("rb") as fh:
        fp = tomllib.load(fh)["hardware"]["fingerprint"]
    return {k: fp[k] for k in ("model", "baud", "negotiate_baud", "packet_size")}


def kit_run(repeat: int, fingers: int) -> dict[str, object]:
    from nacl.public import PrivateKey
    from pyfingerprint.pyfingerprint import PyFingerprint

    from appliance.biometrics.finger_record import Compression, FingerRecord, FingerView, encode
    from appliance.drivers.fingerprint.quality import assess
    from appliance.trust.sealed import SealedStore

    emu = FingerprintEmulator("r307", pace=True)  # factory-fresh: 57600, 128-byte packets
    path = emu.start_pty()
    try:
        emu.present_finger(1, "good")
        fp = PyFingerprint(path, 57600, 0xFFFFFFFF, 0)  # its defaults
        assert fp.verifyPassword() and fp.readImage()
        pyfp = []
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(repeat):
                t0 = time.perf_counter()
                fp.downloadImage(str(Path(tmp) / "f.bmp"))
                pyfp.append(time.perf_counter() - t0)
        fp.__del__()  # closes its port
        emu.remove_finger()
        cfg = FingerprintConfig(port=path, health_probe_s=0, **kit_fields())
        dev = FingerprintSensor(cfg, None)
        dev.start()
        assert (dev.baud, dev.packet_size) == (115200, 256), (dev.baud, dev.packet_size)
        line_s = (ACK_LEN + wire_bytes_for(IMAGE_WIRE_BYTES, 256)) * 10 / 115200
        emu.present_finger(2, "good")
        assert dev.gen_img()
        drv = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            data, _ = dev.up_image_raw()
            drv.append(time.perf_counter() - t0)
            assert len(data) == IMAGE_WIRE_BYTES
        emu.remove_finger()
        # Per finger: placed while the driver polls, to the sealed record on disk.
        per_finger = []
        with tempfile.TemporaryDirectory() as tmp:
            store = SealedStore(
                Path(tmp), bytes(PrivateKey.generate().public_key), device_id="bench"
            )
            for i in range(fingers):
                placed: list[float] = []

                def place(finger: int = i + 3, placed: list[float] = placed) -> None:
                    time.sleep(0.3)  # the person's hand arrives while the driver polls
                    placed.append(time.perf_counter())
                    emu.present_finger(finger, "good", captures=1)

                t = threading.Thread(target=place)
                t.start()
                cap = dev.capture(time.monotonic() + 20)
                report = assess(cap.image, cfg.quality)
                record = encode(
                    FingerRecord([FingerView(cap.image, 1, report.score)], Compression.PNG)
                )
                store.put(f"finger-{i}", record, kind="finger")
                per_finger.append(time.perf_counter() - placed[0])
                t.join()
        dev.stop()
    finally:
        emu.stop()
    kit_driver = statistics.median(drv)
    pyfp_s = statistics.median(pyfp)
    worst = max(per_finger)
    return {
        "pyfp_default_s": round(pyfp_s, 3),
        "kit_line_s": round(line_s, 3),
        "kit_driver_s": round(kit_driver, 3),
        "pyfp_over_kit_driver": round(pyfp_s / kit_driver, 3),
        "per_finger_s": [round(x, 3) for x in per_finger],
        "per_finger_target_s": round(line_s + 0.7, 3),
        "met": kit_driver <= 3.40 and pyfp_s / kit_driver >= 2 and worst <= line_s + 0.7,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1, help="uploads per method and rate")
    ap.add_argument("--rates", default="57600,115200", help="comma-separated baud rates")
    ap.add_argument("--no-pyfingerprint", action="store_true", help="skip the public library")
    ap.add_argument("--fingers", type=int, default=3, help="fingers timed placed -> sealed")
    ap.add_argument("--no-kit", action="store_true", help="skip the kit section")
    args = ap.parse_args()
    results: dict[str, object] = {}
    if not args.no_kit:
        results["kit"] = kit_run(args.repeat, args.fingers)
    for baud in [int(r) for r in args.rates.split(",")]:
        emu = FingerprintEmulator("r307", pace=True, baud=baud)
        path = emu.start_pty()
        try:
            emu.present_finger(1, "good")
            dev = FingerprintSensor(FingerprintConfig(port=path, baud=baud, health_probe_s=0), None)
            dev.start()
            assert dev.gen_img()
            dev.stop()
            n = reply_bytes(emu.packet_size)
            line_s = n * 10 / baud
            base = [bare_read(path, baud, n) for _ in range(args.repeat)]
            dev = FingerprintSensor(FingerprintConfig(port=path, baud=baud, health_probe_s=0), None)
            dev.start()
            drv = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                data, _ = dev.up_image_raw()
                drv.append(time.perf_counter() - t0)
                assert len(data) == IMAGE_WIRE_BYTES
            dev.stop()
            row: dict[str, object] = {
                "reply_bytes": n,
                "line_s": round(line_s, 3),
                "baseline_s": round(statistics.median(base), 3),
                "driver_s": round(statistics.median(drv), 3),
                "share_of_line_rate": round(line_s / statistics.median(drv), 4),
                "driver_over_baseline": round(statistics.median(drv) / statistics.median(base), 4),
                "target_share": 0.95,
            }
            if not args.no_pyfingerprint:
                from pyfingerprint.pyfingerprint import PyFingerprint

                fp = PyFingerprint(path, baud, 0xFFFFFFFF, 0)
                with tempfile.TemporaryDirectory() as tmp:
                    t0 = time.perf_counter()
                    fp.downloadImage(str(Path(tmp) / "f.bmp"))
                    pyfp = time.perf_counter() - t0
                del fp
                row["pyfingerprint_s"] = round(pyfp, 3)
                row["pyfingerprint_share"] = round(line_s / pyfp, 4)
            row["met"] = row["share_of_line_rate"] >= 0.95  # type: ignore[operator]
            results[str(baud)] = row
        finally:
            emu.stop()
    emit("fingerprint_upimage", results)


if __name__ == "__main__":
    main()
