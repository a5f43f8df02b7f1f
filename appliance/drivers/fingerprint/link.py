"""Link layer: ZhianTec packets over a pyserial port (device path, pty, or pyserial URL).

Every read has a deadline: a silent sensor produces :class:`~appliance.errors.DeviceTimeout`,
never a hang (the public host library loops forever on empty reads; spec "Known failure
modes"). Garbage before a packet is skipped up to the next ``EF 01``. pyserial's exceptions and
the codec's :class:`~.frames.FrameError` are converted into the appliance error tree here.
"""

from __future__ import annotations

import logging
import sys
import termios
import time
from typing import Any

import serial

from ...errors import DeviceDisconnected, DeviceTimeout, ProtocolError
from .frames import (
    BITS_PER_UART_BYTE,
    PID,
    FrameError,
    Packet,
    PacketParser,
    ack_payload_len,
    build_packet,
)

log = logging.getLogger(__name__)

# What a vanished port raises. pyserial's POSIX back end calls termios directly in flush()
# (tcdrain), reset_*_buffer() (tcflush) and the baud rate setter (tcsetattr): on a pty whose
# other end closed, or a USB adapter pulled out, those raise termios.error (EIO), which is not
# an OSError (termios(3): the calls fail with EIO/ENOTTY; Python's termios module raises
# termios.error for them).
PORT_ERRORS: tuple[type[Exception], ...] = (serial.SerialException, OSError, termios.error)
# ... and, opening a port or setting its rate, a rate the port does not take.
SETUP_ERRORS: tuple[type[Exception], ...] = (*PORT_ERRORS, ValueError)

DEVICE = "fingerprint"
# Scheduling slack added to every computed line time (USB-UART latency timers are 16 ms).
LINE_SLACK_S = 0.25
# Longest single blocking read; reads loop until their deadline.
READ_SLICE_S = 0.05


class SerialLink:
    """One open connection to a sensor. Not thread-safe: the device layer serialises use."""

    def __init__(self, url: str, baud: int, address: int) -> None:
        self.url = url
        self.baud = baud
        self.address = address
        self._port: Any = None
        self._parser = PacketParser()
        self._timeout: float | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.garbage_bytes = 0  # skipped while resynchronising (noise, 0x55 handshakes)
        self.stale_packets = 0  # well-formed packets that answered an earlier command

    # --- lifetime ---------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def open(self) -> None:
        """Open the port. Raises DeviceDisconnected if it is absent or cannot be opened."""
        try:
            # serial_for_url serves plain paths and URLs (socket://, spy://, loop://) alike.
            # exclusive=True refuses a port another process holds (TIOCEXCL on POSIX ttys).
            kwargs: dict[str, Any] = {"baudrate": self.baud, "timeout": 0, "write_timeout": 5}
            if "://" not in self.url:
                kwargs["exclusive"] = True
            self._port = serial.serial_for_url(self.url, **kwargs)
        except SETUP_ERRORS as exc:
            self._port = None
            raise DeviceDisconnected(
                f"cannot open {self.url}: {exc}", device=DEVICE, details={"port": self.url}
            ) from exc
        self._parser.clear()
        self._timeout = 0.0
        log.debug("opened %s at %d baud", self.url, self.baud)

    def close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            # pyserial's socket:// close() skips socket.close() when shutdown() fails (the
            # peer already went away), leaking the descriptor: close it here as well.
            sock = getattr(port, "_socket", None)
            try:
                port.close()
            except PORT_ERRORS:  # closing a vanished port
                log.debug("close of %s failed", self.url, exc_info=True)
            if sock is not None:
                sock.close()
            # pyserial's spy:// never closes the trace file it opened (?file=...).
            output = getattr(getattr(port, "formatter", None), "output", None)
            if output is not None and output not in (sys.stderr, sys.stdout):
                output.close()

    def set_baud(self, baud: int) -> None:
        """Change the host side's rate (after SetSysPara(4, N) was acknowledged)."""
        self.baud = baud
        if self._port is not None:
            try:
                self._port.baudrate = baud
            except SETUP_ERRORS as exc:
                raise self._lost(exc) from exc

    # --- timing -----------------------------------------------------------------------------

    def line_time(self, n_bytes: int) -> float:
        """Seconds ``n_bytes`` take on the wire at the current rate (8N1: 10 bits a byte)."""
        return n_bytes * BITS_PER_UART_BYTE / self.baud

    # --- bytes ------------------------------------------------------------------------------

    def _lost(self, exc: BaseException) -> DeviceDisconnected:
        self.close()
        return DeviceDisconnected(
            f"lost {self.url}: {exc}", device=DEVICE, details={"port": self.url}
        )

    def _require(self) -> Any:
        if self._port is None:
            raise DeviceDisconnected(
                f"{self.url} is not open", device=DEVICE, details={"port": self.url}
            )
        return self._port

    def write(self, data: bytes) -> None:
        port = self._require()
        try:
            port.write(data)
            port.flush()
        except serial.SerialTimeoutException as exc:
            raise DeviceTimeout(
                f"write to {self.url} timed out", device=DEVICE, details={"port": self.url}
            ) from exc
        except PORT_ERRORS as exc:
            raise self._lost(exc) from exc
        self.bytes_out += len(data)

    def _read_some(self, deadline: float) -> bytes:
        """Whatever bytes arrive before ``deadline`` (at least one, else b'')."""
        port = self._require()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return b""
            # Block at most READ_SLICE_S per call so the deadline is honoured without
            # reconfiguring the port's timeout (a tcsetattr) before every read.
            timeout = min(remaining, READ_SLICE_S)
            try:
                waiting = port.in_waiting
                if timeout != self._timeout:
                    port.timeout = timeout
                    self._timeout = timeout
                # Read what is already buffered in one call; else block for the first byte.
                data: bytes = port.read(max(1, waiting))
            except PORT_ERRORS as exc:
                raise self._lost(exc) from exc
            if data:
                self.bytes_in += len(data)
                return data

    def send(self, pid: int, payload: bytes) -> None:
        """Frame and write one packet."""
        self.write(build_packet(pid, payload, self.address))

    def send_command(self, instruction: int, params: bytes = b"") -> None:
        self.send(PID.COMMAND, bytes([instruction]) + params)

    def receive(self, deadline: float, what: str = "reply") -> Packet:
        """The next packet from our module address, before ``deadline`` (monotonic seconds).

        Skips leading garbage; raises DeviceTimeout if nothing complete arrives in time and
        ProtocolError on a checksum mismatch.
        """
        while True:
            try:
                pkt = self._parser.next_packet()
            except FrameError as exc:
                raise ProtocolError(
                    f"bad {what} from {self.url}: {exc}",
                    device=DEVICE,
                    details={"port": self.url},
                ) from exc
            if pkt is not None:
                if self._parser.skipped:
                    log.debug("skipped %d garbage bytes on %s", self._parser.skipped, self.url)
                    self.garbage_bytes += self._parser.skipped
                    self._parser.skipped = 0
                if pkt.address != self.address:
                    log.warning("ignored a packet for address 0x%08X on %s", pkt.address, self.url)
                    continue
                return pkt
            data = self._read_some(deadline)
            if not data:
                raise DeviceTimeout(
                    f"no {what} from {self.url} before the deadline",
                    device=DEVICE,
                    details={"port": self.url, "pending_bytes": self._parser.pending},
                )
            self._parser.feed(data)

    def flush_input(self) -> int:
        """Discard what already waits in the input buffer (before a command is sent, so a
        stale reply cannot be read as its answer). Returns the bytes dropped."""
        port = self._require()
        dropped = self._parser.pending
        self._parser.clear()
        try:
            waiting = int(port.in_waiting)
            if waiting:
                dropped += len(port.read(waiting))
        except PORT_ERRORS as exc:
            raise self._lost(exc) from exc
        if dropped:
            log.debug("flushed %d stale bytes on %s", dropped, self.url)
            self.garbage_bytes += dropped
        return dropped

    def receive_ack(
        self, deadline: float, what: str = "acknowledge", instruction: int | None = None
    ) -> Packet:
        """The acknowledge to ``instruction``, before ``deadline``.

        Replies have a fixed length per instruction, errors included (spec, "Sensor behaviour
        that host software depends on"): an acknowledge of another length, or a data packet,
        is a stale reply to an earlier command. It is counted in :attr:`stale_packets` and
        skipped, never taken as this command's answer. A one-byte error acknowledge is
        accepted for any instruction (firmware that does not pad its error replies).
        """
        want = None if instruction is None else ack_payload_len(instruction)
        while True:
            pkt = self.receive(deadline, what)
            if pkt.pid == PID.ACK and pkt.payload:
                n = len(pkt.payload)
                if want is None or n == want or (n == 1 and pkt.payload[0] != 0):
                    return pkt
            elif pkt.pid not in (PID.DATA, PID.END):
                raise ProtocolError(
                    f"expected an acknowledge from {self.url}, got PID 0x{pkt.pid:02X}",
                    device=DEVICE,
                    details={"port": self.url, "pid": pkt.pid},
                )
            self.stale_packets += 1
            log.debug(
                "skipped a stale packet (PID 0x%02X, %d payload bytes) waiting for %s on %s",
                pkt.pid,
                len(pkt.payload),
                what,
                self.url,
            )

    def receive_data(self, packet_size: int, expected_len: int | None, slack_s: float) -> bytes:
        """Collect data packets until the one with PID 08.

        Each packet gets its own deadline: its line time at the current rate plus ``slack_s``
        (so a long upload never times out as a whole, and a stall is noticed quickly).
        """
        out = bytearray()
        per_packet = self.line_time(packet_size + 11) + slack_s
        while True:
            pkt = self.receive(time.monotonic() + per_packet, "data packet")
            if pkt.pid not in (PID.DATA, PID.END):
                raise ProtocolError(
                    f"expected a data packet from {self.url}, got PID 0x{pkt.pid:02X}",
                    device=DEVICE,
                    details={"port": self.url, "pid": pkt.pid, "received": len(out)},
                )
            out += pkt.payload
            if expected_len is not None and len(out) > expected_len:
                raise ProtocolError(
                    f"data stream longer than {expected_len} bytes",
                    device=DEVICE,
                    details={"port": self.url, "received": len(out)},
                )
            if pkt.pid == PID.END:
                if expected_len is not None and len(out) != expected_len:
                    raise ProtocolError(
                        f"data stream of {len(out)} bytes, expected {expected_len}",
                        device=DEVICE,
                        details={"port": self.url, "received": len(out)},
                    )
                return bytes(out)

    def drain(self, quiet_s: float, limit_s: float) -> int:
        """Discard input until the line has been quiet for ``quiet_s`` (at most ``limit_s``).

        Used after a garbled exchange so a retry does not read the tail of the old reply. The
        caller sizes ``limit_s`` from what may still be on the line (the rest of an image
        stream takes seconds), so the drain never stops while a stream is still arriving.
        """
        dropped = self._parser.pending
        self._parser.clear()
        end = time.monotonic() + limit_s
        while time.monotonic() < end:
            data = self._read_some(min(end, time.monotonic() + quiet_s))
            if not data:
                break
            dropped += len(data)
        return dropped
