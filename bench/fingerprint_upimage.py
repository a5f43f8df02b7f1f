"""UpImage throughput as a share of the UART line rate, at 57600 and 115200 baud.

    .venv/bin/python bench/fingerprint_upimage.py [--repeat 1] [--rates 57600,115200]
                                                  [--no-pyfingerprint]

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
import time
from pathlib import Path

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1, help="uploads per method and rate")
    ap.add_argument("--rates", default="57600,115200", help="comma-separated baud rates")
    ap.add_argument("--no-pyfingerprint", action="store_true", help="skip the public library")
    args = ap.parse_args()
    results: dict[str, object] = {}
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
