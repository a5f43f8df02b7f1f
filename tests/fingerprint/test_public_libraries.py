"""The public host libraries (pyfingerprint, Adafruit CircuitPython) work against the emulator.

They are the two public reference hosts of these sensors; they need
the dev dependencies ``pyfingerprint`` and ``adafruit-circuitpython-fingerprint``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import serial

from appliance.drivers.fingerprint.emulator import FingerprintEmulator

from .test_simcli import read_line

MakeEmu = Callable[..., FingerprintEmulator]


def test_pyfingerprint_enrolls_searches_and_downloads(
    make_emulator: MakeEmu, tmp_path: Path
) -> None:
    from pyfingerprint.pyfingerprint import PyFingerprint

    emu = make_emulator("r307")
    fp = PyFingerprint(emu.path, 57600, 0xFFFFFFFF, 0x00000000)
    try:
        assert fp.verifyPassword()
        assert fp.getStorageCapacity() == 1000 and fp.getTemplateCount() == 0
        emu.present_finger(2, "good", captures=3)
        assert fp.readImage()
        fp.downloadImage(str(tmp_path / "finger.bmp"))  # UpImage, named "download" there
        assert (tmp_path / "finger.bmp").stat().st_size > 36_864
        assert fp.readImage()
        fp.convertImage(0x01)
        assert fp.searchTemplate() == (-1, -1)
        assert fp.readImage()
        fp.convertImage(0x02)
        assert fp.compareCharacteristics() > 0
        fp.createTemplate()
        assert fp.storeTemplate() == 0
        assert fp.getTemplateIndex(0)[0] is True
        chars = fp.downloadCharacteristics(0x01)  # UpChar
        assert len(chars) == 512
        assert fp.uploadCharacteristics(0x02, chars)  # DownChar in 128-byte packets
        assert fp.loadTemplate(0, 0x01)
        assert fp.deleteTemplate(0) and fp.getTemplateCount() == 0
        assert fp.clearDatabase()
    finally:
        del fp  # closes its serial port


def test_adafruit_library_over_pyserial(make_emulator: MakeEmu) -> None:
    import adafruit_fingerprint as af

    emu = make_emulator("r503")
    with serial.Serial(emu.path, 57600, timeout=1) as uart:
        f = af.Adafruit_Fingerprint(uart)
        assert f.read_sysparam() == af.OK
        assert (f.library_size, f.security_level) == (200, 3)
        emu.present_finger(4, "good", captures=3)
        assert f.get_image() == af.OK
        image = f.get_fpdata("image", 1)
        assert len(image) == 36_864
        assert f.get_image() == af.OK and f.image_2_tz(1) == af.OK
        assert f.get_image() == af.OK and f.image_2_tz(2) == af.OK
        assert f.create_model() == af.OK and f.store_model(3) == af.OK
        assert f.count_templates() == af.OK and f.template_count == 1
        assert f.read_templates() == af.OK and f.templates == [3]
        assert f.finger_fast_search() == af.OK and f.finger_id == 3
        char = f.get_fpdata("char", 1)
        assert len(char) == 1536
        assert f.send_fpdata(char, "char", 2)
        assert f.set_led(color=1, mode=3) == af.OK and emu.led is not None
        assert f.delete_model(3) == af.OK and f.count_templates() == af.OK
        assert f.template_count == 0


# --- against `appliance sim fingerprint` with its defaults (paced, automatic finger) ---------

PROFILES = ["r307", "r503", "as608"]
RATES = [57600, 115200]


@pytest.fixture(params=[(p, r) for p in PROFILES for r in RATES], ids=lambda pr: f"{pr[0]}-{pr[1]}")
def sim(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """`appliance sim fingerprint` as a process, defaults except the profile and the rate."""
    profile, rate = request.param
    link = tmp_path / "ttyFP"
    cmd = [sys.executable, "-m", "appliance", "sim", "fingerprint", "--link", str(link)]
    cmd += ["--profile", profile, "--baud", str(rate)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert read_line(proc) == str(link)
        yield str(link), rate
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err


def until(probe: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Call ``probe`` (a sensor command) until it is true; a bounded wait on the sensor."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")


def test_pyfingerprint_enrolls_stores_searches_and_deletes_against_the_sim(
    sim: tuple[str, int],
) -> None:
    from pyfingerprint.pyfingerprint import PyFingerprint

    path, rate = sim
    fp = PyFingerprint(path, rate, 0xFFFFFFFF, 0x00000000)
    try:
        assert fp.verifyPassword()
        # example_enroll.py: first capture, then "remove finger", then the same finger again.
        until(fp.readImage, "a finger")
        fp.convertImage(0x01)
        assert fp.searchTemplate()[0] == -1
        until(lambda: not fp.readImage(), "the finger lifted")
        until(fp.readImage, "the same finger again")
        fp.convertImage(0x02)
        assert fp.compareCharacteristics() > 0
        fp.createTemplate()
        position = fp.storeTemplate()
        assert fp.getTemplateCount() == 1
        # example_search.py: the same person's finger is found.
        until(fp.readImage, "a finger to search")
        fp.convertImage(0x01)
        assert fp.searchTemplate()[0] == position
        # example_delete.py
        assert fp.deleteTemplate(position) and fp.getTemplateCount() == 0
    finally:
        fp.__del__()  # closes its serial port


def test_adafruit_enrolls_stores_searches_and_deletes_against_the_sim(
    sim: tuple[str, int],
) -> None:
    import adafruit_fingerprint as af

    path, rate = sim
    with serial.Serial(path, rate, timeout=1) as uart:
        f = af.Adafruit_Fingerprint(uart)
        assert f.read_sysparam() == af.OK
        # fingerprint_simpletest.py enroll_finger(): two images of one finger, lifted between.
        for slot in (1, 2):
            until(lambda: f.get_image() == af.OK, "a finger")
            assert f.image_2_tz(slot) == af.OK
            if slot == 1:
                until(lambda: f.get_image() == af.NOFINGER, "the finger lifted")
        assert f.create_model() == af.OK
        assert f.store_model(5) == af.OK
        # get_fingerprint(): the enrolled finger is found.
        until(lambda: f.get_image() == af.OK, "a finger to search")
        assert f.image_2_tz(1) == af.OK
        assert f.finger_search() == af.OK and f.finger_id == 5
        assert f.delete_model(5) == af.OK
        assert f.count_templates() == af.OK and f.template_count == 0
