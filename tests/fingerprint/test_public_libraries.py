"""The public host libraries (pyfingerprint, Adafruit CircuitPython) work against the emulator.

They are the two public reference hosts of these sensors; they need
the dev dependencies ``pyfingerprint`` and ``adafruit-circuitpython-fingerprint``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import serial

from appliance.drivers.fingerprint.emulator import FingerprintEmulator

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
