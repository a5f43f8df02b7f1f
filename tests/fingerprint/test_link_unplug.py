"""A port that vanishes under the link is DeviceDisconnected, whatever pyserial raises for it.

pyserial's POSIX back end calls termios directly (tcdrain in ``flush()``, tcflush in
``reset_input_buffer()``); on a pty whose other end is gone they raise ``termios.error`` (EIO),
which is not an OSError. Before the link caught it, a sensor pulled out during a write came back
to the fleet as ``internal_error``.
"""

from __future__ import annotations

import os
import pty

import pytest

from appliance.drivers.fingerprint.link import SerialLink
from appliance.errors import DeviceDisconnected


def test_a_write_to_a_port_whose_other_end_closed_is_device_disconnected() -> None:
    master, slave = pty.openpty()
    path = os.ttyname(slave)
    link = SerialLink(path, 57600, 0xFFFFFFFF)
    link.open()
    try:
        os.close(master)  # the sensor's end is gone (cable pulled, adapter unplugged)
        # Nothing left to write, so pyserial goes straight to flush() (tcdrain): the case of
        # a packet that was written just before the cable went and whose drain then fails.
        with pytest.raises(DeviceDisconnected) as info:
            link.write(b"")
        assert info.value.details["port"] == path
    finally:
        link.close()
        os.close(slave)


def test_a_packet_written_after_the_other_end_closed_is_device_disconnected() -> None:
    master, slave = pty.openpty()
    link = SerialLink(os.ttyname(slave), 57600, 0xFFFFFFFF)
    link.open()
    try:
        os.close(master)
        with pytest.raises(DeviceDisconnected):
            link.write(b"\xef\x01" + bytes(10))
    finally:
        link.close()
        os.close(slave)
