"""A protocol-faithful ZhianTec sensor emulator on a real pty or a TCP socket.

The production driver (and the public host libraries) open the pty path exactly as they open
``/dev/ttyUSB0``, or ``socket://host:port`` for the TCP listener. The emulator answers
byte-exact packets (the ZhianTec R30x/AS608 user manual, "Packet format"): checksums,
confirmation codes, every data packet size, the address and password rules, fixed reply
lengths, one ack before DownChar/DownImage data, the ``0x55`` handshake quirks, and paces its
output at the configured baud (10 bit times a byte) unless told not to. Fingers are synthetic
images from :mod:`.synth`.

Rules where the manual is silent, chosen here and documented in docs/fingerprint.md:

- a packet for another address is ignored (no reply), as on a shared bus;
- an instruction the profile lacks, a malformed parameter list or a bad checksum gets
  confirmation code 0x01 (packet receive error);
- an unknown SetSysPara register or a value the profile refuses gets 0x1A (invalid register);
- when a pty host's termios rate differs from the emulated rate, incoming bytes are treated as
  line noise (a real UART sees framing errors) and nothing is answered.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import select
import socket
import struct
import termios
import threading
import time
import tty
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .frames import (
    BITS_PER_UART_BYTE,
    DEFAULT_ADDRESS,
    MIN_PACKET_LEN,
    PID,
    Confirm,
    FrameError,
    Instruction,
    Packet,
    PacketParser,
    SysParam,
    SystemParameters,
    ack_payload_len,
    baud_from_n,
    build_ack,
    build_packet,
    n_from_baud,
    pack_image,
    packet_size_from_code,
    split_data,
    unpack_image,
)
from .profiles import SensorProfile, load_profile
from .quality import assess, extraction_failure
from .synth import FingerSpec, Variant, char_file_seed, generate

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]
# Packets of a reply, and an action to run once they are sent (a baud switch).
_Result = tuple[list[bytes], Callable[[], None] | None]
# Output is written in slices of at most this many bytes, each at its line-time schedule.
PACE_CHUNK = 64
NOTEPAD_PAGES = 16
NOTEPAD_PAGE_BYTES = 32

_TERMIOS_BAUD = {
    getattr(termios, f"B{rate}"): rate
    for rate in (9600, 19200, 38400, 57600, 115200, 230400)
    if hasattr(termios, f"B{rate}")
}


# The automatic finger (demo mode) is a person's: it stays on the platen this long after its
# first capture, then is lifted; asked again, the person places the same finger again.
AUTO_DWELL_S = 1.0


@dataclass
class Presentation:
    """A finger laid on the sensor: ``polls`` GenImg calls see nothing first, then every
    GenImg captures it (a new impression each time) until it is lifted: after ``captures``
    captures if given, else when another finger is queued behind it (once captured), by
    :meth:`FingerprintEmulator.remove_finger`, or, for the automatic finger, after
    :data:`AUTO_DWELL_S`."""

    finger_id: int
    variant: Variant
    polls: int = 0
    captures: int | None = None
    auto: bool = False
    captured: int = 0
    first_capture: float = 0.0


@dataclass
class _Faults:
    garbage: int = 0  # bytes of noise before the next reply
    drop_packets: int = 0  # next N outgoing packets vanish
    drop_data_index: int | None = None  # this data packet of the next stream vanishes
    corrupt_data_index: int | None = None  # this data packet of the next stream is garbled
    corrupt_packets: int = 0  # next N outgoing packets get a flipped payload bit
    bad_checksum_packets: int = 0  # next N outgoing packets carry a wrong checksum
    byte_at_a_time: bool = False
    busy_s: float = 0.0  # the next reply is held back this long, status says busy
    silent: bool = False


class _Channel:
    """Byte pipe to the host (pty master or TCP connection)."""

    def read(self, timeout: float) -> bytes | None:  # None: closed
        raise NotImplementedError

    def write(self, data: bytes, stop: threading.Event) -> bool:
        raise NotImplementedError

    def host_baud(self) -> int | None:
        return None

    def pending(self) -> bool:
        """True when the host has sent bytes not yet read."""
        return False

    def close(self) -> None:
        raise NotImplementedError


class _PtyChannel(_Channel):
    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        # Raw mode at once, so nothing is echoed or translated before the host configures it.
        # The emulator keeps its own slave descriptor open: without it the master would read
        # EIO every time the host closes the port.
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)

    def read(self, timeout: float) -> bytes | None:
        r, _, _ = select.select([self.master], [], [], timeout)
        if not r:
            return b""
        try:
            return os.read(self.master, 4096)
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            return None

    def write(self, data: bytes, stop: threading.Event) -> bool:
        view = memoryview(data)
        while view:
            if stop.is_set():
                return False
            _, w, _ = select.select([], [self.master], [], 0.05)
            if not w:
                continue
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                continue
            except OSError:
                return False
            view = view[n:]
        return True

    def pending(self) -> bool:
        r, _, _ = select.select([self.master], [], [], 0)
        return bool(r)

    def host_baud(self) -> int | None:
        # On Linux the master's termios are the slave's: what the host set with tcsetattr.
        try:
            return _TERMIOS_BAUD.get(termios.tcgetattr(self.master)[5])
        except termios.error:
            return None

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class _SocketChannel(_Channel):
    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def read(self, timeout: float) -> bytes | None:
        r, _, _ = select.select([self.conn], [], [], timeout)
        if not r:
            return b""
        try:
            data = self.conn.recv(4096)
        except OSError:
            return None
        return data or None

    def pending(self) -> bool:
        r, _, _ = select.select([self.conn], [], [], 0)
        return bool(r)

    def write(self, data: bytes, stop: threading.Event) -> bool:
        try:
            self.conn.sendall(data)
        except OSError:
            return False
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.conn.close()


class FingerprintEmulator:
    """One emulated sensor. Start it on a pty (:meth:`start_pty`) or TCP (:meth:`listen_tcp`).

    Thread-safe setters inject fingers and faults while a host talks to it.
    """

    def __init__(
        self,
        profile: SensorProfile | str = "r307",
        *,
        seed: int = 1,
        pace: bool = True,
        baud: int | None = None,
        address: int = DEFAULT_ADDRESS,
        password: int = 0,
        profile_dir: Path | None = None,
        flash_file: Path | None = None,
    ) -> None:
        self.profile = (
            profile if isinstance(profile, SensorProfile) else load_profile(profile, profile_dir)
        )
        self.seed = seed
        self.pace = pace
        self.check_host_baud = True
        self.baud_n = n_from_baud(baud) if baud else self.profile.uart.default_baud_n
        self.address = address
        self.password = password
        self.packet_size_code = self.profile.uart.default_packet_size_code
        self.security_level = self.profile.library.default_security_level
        self.library: dict[int, bytes] = {}
        self.notepad = [bytes(NOTEPAD_PAGE_BYTES) for _ in range(NOTEPAD_PAGES)]
        self.flash_file = flash_file
        self._load_flash()
        self.faults = _Faults()
        self.led: tuple[int, int, int, int] | None = None
        self.stats: dict[str, int] = {
            "commands": 0,
            "noise_bytes": 0,
            "bad_packets": 0,
            "input_during_reply": 0,
            "late_replies": 0,  # replies later than the command's own time (GenImg capture)
        }
        # Commands received, by instruction name (tests check no retry was sent twice).
        self.received: Counter[str] = Counter()
        self._lock = threading.RLock()
        self._rng = random.Random(seed)  # noqa: S311 - simulated noise, not secrets
        self._presentations: deque[Presentation] = deque()
        self._auto: tuple[Variant, int] | None = None
        self._auto_wait = 0
        self._auto_finger = 0
        self._impressions: dict[int, int] = {}
        self._busy_until = 0.0
        # Seconds the current command takes on the sensor before its reply (GenImg's capture).
        self._work_s = 0.0
        self._instruction: int | None = None  # the command being answered
        self._line_free_at = 0.0  # when the last byte written leaves the paced line
        self._auto_uploaded = False  # the host uploaded an image of the automatic finger
        self._image_auto = False  # the image buffer holds the automatic finger
        self._image: Image | None = None
        self._pending_image: Future[Image] | None = None
        self._synth_pool = ThreadPoolExecutor(1, thread_name_prefix="fp-emu-synth")
        self._synth_cache: dict[tuple[int, Variant, int], Future[Image]] = {}
        self._reset_volatile()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._channel: _Channel | None = None
        self._mode: str | None = None
        self._link: Path | None = None
        self._listener: socket.socket | None = None
        self.path: str | None = None
        self.tcp_address: tuple[str, int] | None = None
        self.plugged = False

    # --- state --------------------------------------------------------------------------------

    def _load_flash(self) -> None:
        """Restore what the module keeps in flash (rate, packet size, security level,
        password, library, notepad) from :attr:`flash_file`, as a real module keeps them
        across power cycles."""
        if self.flash_file is None or not self.flash_file.exists():
            return
        raw = json.loads(self.flash_file.read_text())
        if raw.get("model") != self.profile.model:
            return  # another model's flash: a factory-fresh module
        if raw["baud_n"] in self.profile.uart.allowed_baud_n:
            self.baud_n = raw["baud_n"]
        if raw["packet_size_code"] in self.profile.uart.allowed_packet_size_codes:
            self.packet_size_code = raw["packet_size_code"]
        self.security_level = raw["security_level"]
        self.password = raw["password"]
        self.library = {int(k): bytes.fromhex(v) for k, v in raw["library"].items()}
        self.notepad = [bytes.fromhex(v) for v in raw["notepad"]]

    def _save_flash(self) -> None:
        if self.flash_file is None:
            return
        doc = {
            "model": self.profile.model,
            "baud_n": self.baud_n,
            "packet_size_code": self.packet_size_code,
            "security_level": self.security_level,
            "password": self.password,
            "library": {str(k): v.hex() for k, v in sorted(self.library.items())},
            "notepad": [v.hex() for v in self.notepad],
        }
        tmp = self.flash_file.with_name(f".{self.flash_file.name}.tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.flash_file)

    def _reset_volatile(self) -> None:
        """What a power cycle or SoftReset clears (RAM, not flash)."""
        self.verified = self.password == 0
        self.image = None
        self.image_finger: tuple[int, Variant] | None = None
        self.buffers: dict[int, bytes | None] = {1: None, 2: None}
        self._rx: tuple[str, int, bytearray] | None = None  # pending DownChar/DownImage

    @property
    def image(self) -> Image | None:
        """The image buffer (4-bit grey levels), waiting for its synthesis if need be."""
        pending, self._pending_image = self._pending_image, None
        if pending is not None:
            self._image = pending.result()
        return self._image

    @image.setter
    def image(self, value: Image | None) -> None:
        self._pending_image = None
        self._image = value

    @property
    def image_valid(self) -> bool:
        return self._image is not None or self._pending_image is not None

    @property
    def baud(self) -> int:
        return baud_from_n(self.baud_n)

    @property
    def packet_size(self) -> int:
        return packet_size_from_code(self.packet_size_code)

    # --- fingers -----------------------------------------------------------------------------

    def present_finger(
        self,
        finger_id: int = 1,
        variant: Variant | str = Variant.GOOD,
        *,
        after_polls: int = 0,
        captures: int | None = None,
    ) -> None:
        """Queue a finger: GenImg sees nothing for ``after_polls`` calls, then captures it
        until it is lifted (after ``captures`` captures if given; else once captured and
        another finger is queued, or by :meth:`remove_finger`). Its image is synthesised in
        the background now, so the capture is answered in the sensor's own time."""
        pres = Presentation(finger_id, Variant(variant), after_polls, captures)
        with self._lock:
            self._presentations.append(pres)
            self._prepare(pres.finger_id, pres.variant)

    def remove_finger(self) -> None:
        """Lift the finger on the platen and forget the queued ones."""
        with self._lock:
            self._presentations.clear()

    def set_auto_finger(self, variant: Variant | str | None, delay_polls: int = 10) -> None:
        """Demo mode, a simulated person: whenever no finger is queued, a finger arrives after
        ``delay_polls`` empty GenImg polls and stays for every capture the host asks until it
        is lifted, :data:`AUTO_DWELL_S` after its first capture. Asked again, the person places
        the same finger again (so two captures merge with RegModel, and a search finds the
        enrolled finger); once the host has uploaded an image of it (UpImage: a kiosk
        recording one finger position), the next placement is the next finger (ids 1..10 in
        turn). ``None`` turns it off."""
        with self._lock:
            self._auto = None if variant is None else (Variant(variant), max(0, delay_polls))
            self._auto_wait = 0
            if self._auto is not None:
                self._prepare(self._auto_next_id(), self._auto[0], ahead=True)

    def finger_image(self, finger_id: int, variant: Variant | str, impression: int = 0) -> bytes:
        """The 4-bit-quantised image the emulator would capture (for tests)."""
        img = generate(FingerSpec(self.seed, finger_id), variant, impression)
        return pack_image(img)

    def _synthesise(self, finger_id: int, variant: Variant, impression: int) -> Image:
        img = generate(
            FingerSpec(self.seed, finger_id),
            variant,
            impression,
            self.profile.image.width,
            self.profile.image.height,
        )
        # The buffer holds what the UART can carry: 4 bits a pixel.
        return (img & 0xF0).astype(np.uint8)

    def _prepare(
        self, finger_id: int, variant: Variant, *, ahead: bool = False
    ) -> Future[Image] | None:
        """Start synthesising the next impression of a finger in the background (caller
        holds the lock); returns its future. Synthesis takes tens of milliseconds, more on a
        loaded machine: done ahead, it never delays a capture's answer. ``ahead``: only if
        the synthesiser is idle (a host polling faster than it must not build a backlog)."""
        if variant is Variant.NO_FINGER:
            return None
        key = (finger_id, variant, self._impressions.get(finger_id, 0))
        fut = self._synth_cache.get(key)
        if fut is None:
            if ahead and any(not f.done() for f in self._synth_cache.values()):
                return None
            if len(self._synth_cache) >= 8:  # a bounded cache of impressions not taken
                self._synth_cache.pop(next(iter(self._synth_cache))).cancel()
            fut = self._synth_pool.submit(self._synthesise, *key)
            self._synth_cache[key] = fut
        return fut

    def _auto_next_id(self) -> int:
        if self._auto_finger == 0 or self._auto_uploaded:
            return self._auto_finger % 10 + 1
        return self._auto_finger

    # --- faults ------------------------------------------------------------------------------

    def inject_garbage(self, n_bytes: int) -> None:
        """Send ``n_bytes`` of line noise before the next reply."""
        with self._lock:
            self.faults.garbage += n_bytes

    def drop_next_packets(self, count: int = 1) -> None:
        """The next ``count`` outgoing packets are lost on the line."""
        with self._lock:
            self.faults.drop_packets += count

    def drop_data_packet(self, index: int) -> None:
        """The data packet number ``index`` (0-based) of the next data stream is lost."""
        with self._lock:
            self.faults.drop_data_index = index

    def corrupt_data_packet(self, index: int) -> None:
        """Flip a bit in data packet number ``index`` (0-based) of the next data stream."""
        with self._lock:
            self.faults.corrupt_data_index = index

    def corrupt_next_packets(self, count: int = 1) -> None:
        """Flip one payload bit in the next ``count`` packets (the checksum then disagrees)."""
        with self._lock:
            self.faults.corrupt_packets += count

    def wrong_checksum_next(self, count: int = 1) -> None:
        """The next ``count`` packets carry a checksum off by one."""
        with self._lock:
            self.faults.bad_checksum_packets += count

    def set_byte_at_a_time(self, on: bool) -> None:
        """Write every reply one byte per write (a host must reassemble across reads)."""
        with self._lock:
            self.faults.byte_at_a_time = on

    def set_busy(self, seconds: float) -> None:
        """Hold back the next reply ``seconds`` (status register bit 0 says busy meanwhile)."""
        with self._lock:
            self.faults.busy_s = seconds

    def set_silent(self, on: bool) -> None:
        """Never answer (a dead sensor whose port is still there)."""
        with self._lock:
            self.faults.silent = on

    # --- transports --------------------------------------------------------------------------

    def start_pty(self, link: str | Path | None = None) -> str:
        """Open a pty and serve it; returns the path hosts open.

        With ``link`` the path is a symlink that survives :meth:`unplug`/:meth:`replug` (each
        replug is a new pty, as a USB adapter re-enumerates, but the link stays the same).
        """
        if self._mode is not None:
            raise RuntimeError("emulator already started")
        self._mode = "pty"
        self._link = Path(link) if link is not None else None
        return self._plug_pty()

    def _plug_pty(self) -> str:
        channel = _PtyChannel()
        if self._link is not None:
            tmp = self._link.with_name(f".{self._link.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(channel.path)
            tmp.replace(self._link)
            self.path = str(self._link)
        else:
            self.path = channel.path
        self._serve(channel)
        return self.path

    def listen_tcp(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen on TCP; hosts connect with ``socket://host:port``. One host at a time."""
        if self._mode is not None:
            raise RuntimeError("emulator already started")
        self._mode = "tcp"
        self.tcp_address = (host, port)
        return self._plug_tcp()

    def _plug_tcp(self) -> tuple[str, int]:
        assert self.tcp_address is not None
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(self.tcp_address)
        srv.listen(1)
        self._listener = srv
        self.tcp_address = srv.getsockname()[:2]
        self.path = f"socket://{self.tcp_address[0]}:{self.tcp_address[1]}"
        self._stop.clear()
        self.plugged = True
        self._thread = threading.Thread(target=self._accept_loop, name="fp-emu-tcp", daemon=True)
        self._thread.start()
        return self.tcp_address

    def _serve(self, channel: _Channel) -> None:
        self._stop.clear()
        with self._lock:
            self._reset_volatile()
            self._channel = channel
        self.plugged = True
        self._thread = threading.Thread(
            target=self._serve_loop, args=(channel,), name="fp-emu", daemon=True
        )
        self._thread.start()
        if self.profile.quirks.power_up_handshake:
            self._write(channel, b"\x55")

    def _accept_loop(self) -> None:
        srv = self._listener
        assert srv is not None
        while not self._stop.is_set():
            r, _, _ = select.select([srv], [], [], 0.05)
            if not r:
                continue
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            channel = _SocketChannel(conn)
            with self._lock:
                self._reset_volatile()
                self._channel = channel
            if self.profile.quirks.power_up_handshake:
                self._write(channel, b"\x55")
            self._serve_loop(channel)
            channel.close()

    def unplug(self) -> None:
        """Pull the cable: the pty (or TCP listener) goes away; hosts see the port vanish."""
        self._halt()
        if self._link is not None:
            with contextlib.suppress(FileNotFoundError):
                self._link.unlink()

    def replug(self) -> str:
        """Plug the cable back: a new pty behind the same link (or the same TCP port)."""
        if self.plugged:
            raise RuntimeError("emulator is plugged in")
        if self._mode == "pty":
            return self._plug_pty()
        if self._mode == "tcp":
            self._plug_tcp()
            assert self.path is not None
            return self.path
        raise RuntimeError("emulator was never started")

    def power_cycle(self) -> None:
        """Reboot the module while the port stays open: RAM state (buffers, the password
        verification) is lost, the flash library stays, and models with the power-up quirk
        send their 0x55 handshake byte."""
        with self._lock:
            self._reset_volatile()
            channel = self._channel
        if channel is not None and self.profile.quirks.power_up_handshake:
            self._write(channel, b"\x55")

    def stop(self) -> None:
        """Stop serving and release everything; idempotent."""
        self.unplug()
        self._synth_pool.shutdown(wait=False, cancel_futures=True)

    def _halt(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        with self._lock:
            channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
            self._listener = None
        self.plugged = False

    def __enter__(self) -> FingerprintEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- serving -----------------------------------------------------------------------------

    def _serve_loop(self, channel: _Channel) -> None:
        parser = PacketParser()
        while not self._stop.is_set():
            data = channel.read(0.05)
            if data is None:
                return
            if not data:
                continue
            if self._mode == "pty" and self.check_host_baud:
                host = channel.host_baud()
                if host is not None and host != self.baud:
                    # Wrong rate: the UART would see framing errors, not bytes.
                    self.stats["noise_bytes"] += len(data)
                    parser.clear()
                    continue
            parser.feed(data)
            while True:
                try:
                    pkt = parser.next_packet()
                except FrameError:
                    self.stats["bad_packets"] += 1
                    self._reply(
                        channel, [build_ack(Confirm.PACKET_RECEIVE_ERROR, b"", self.address)]
                    )
                    continue
                if pkt is None:
                    break
                self._on_packet(channel, pkt)
            self.stats["noise_bytes"] += parser.skipped
            parser.skipped = 0

    def _on_packet(self, channel: _Channel, pkt: Packet) -> None:
        if pkt.address != self.address:
            return  # not for us
        with self._lock:
            if self._rx is not None and pkt.pid in (PID.DATA, PID.END):
                self._receive_data(pkt)
                return
            if pkt.pid != PID.COMMAND or not pkt.payload:
                return
            arrived = time.monotonic()
            self._rx = None
            self.stats["commands"] += 1
            try:
                self.received[Instruction(pkt.payload[0]).name] += 1
            except ValueError:
                self.received[f"0x{pkt.payload[0]:02X}"] += 1
            self._work_s = 0.0
            out, after = self._command(pkt.payload[0], pkt.payload[1:])
            work, self._work_s = self._work_s, 0.0
        if work:
            # The command's own time counts from its arrival: the reply is due then, however
            # long the emulator took to prepare it.
            left = arrived + work - time.monotonic()
            if left > 0:
                self._stop.wait(left)
            else:
                self.stats["late_replies"] += 1
        self._reply(channel, out)
        if after is not None:
            after()

    def _receive_data(self, pkt: Packet) -> None:
        assert self._rx is not None
        target, expected, buf = self._rx
        limit = self.profile.quirks.downchar_fails_above
        if target.startswith("char") and limit and len(pkt.payload) > limit:
            # R307 quirk (spec, "Known failure modes"): DownChar with 256-byte packets
            # fails; the character buffer ends up unusable.
            self._rx = (target + "!", expected, buf)
            target = self._rx[0]
        buf += pkt.payload
        if pkt.pid == PID.END:
            self._rx = None
            sizes = (
                {self.profile.library.char_file_bytes, self.profile.library.template_bytes}
                if expected < 0
                else {expected}
            )
            if target.endswith("!") or len(buf) not in sizes:
                log.debug("emulator: %s data stream of %d bytes rejected", target, len(buf))
                if target.startswith("char"):
                    self.buffers[int(target[4])] = None
                return
            if target == "image":
                self.image = unpack_image(
                    bytes(buf), self.profile.image.width, self.profile.image.height
                )
                self.image_finger = None
                self._image_auto = False
            else:
                self.buffers[int(target[4])] = bytes(buf)

    # --- output ------------------------------------------------------------------------------

    def _write(self, channel: _Channel, data: bytes, *, in_reply: bool = False) -> bool:
        """Write with line pacing (10 bit times a byte) and the byte-at-a-time fault.

        ``in_reply``: continue the reply's line clock. The packets of a reply follow each
        other back to back, as a UART sends them, so a scheduling delay of this process (a
        loaded machine) is caught up instead of being added to the stream's time."""
        step = 1 if self.faults.byte_at_a_time else (PACE_CHUNK if self.pace else len(data))
        start = self._line_free_at if in_reply else time.monotonic()
        sent = 0
        while sent < len(data):
            chunk = data[sent : sent + step]
            if not channel.write(chunk, self._stop):
                return False
            sent += len(chunk)
            if self.pace:
                due = start + sent * BITS_PER_UART_BYTE / self.baud
                self._line_free_at = due
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        return True

    def _mangle(self, packet: bytes, is_data: bool, data_index: int) -> bytes | None:
        f = self.faults
        if is_data and f.drop_data_index is not None and f.drop_data_index == data_index:
            f.drop_data_index = None
            return None
        if is_data and f.corrupt_data_index is not None and f.corrupt_data_index == data_index:
            f.corrupt_data_index = None
            f.corrupt_packets += 1
        if f.drop_packets:
            f.drop_packets -= 1
            return None
        if f.corrupt_packets:
            f.corrupt_packets -= 1
            b = bytearray(packet)
            b[9] ^= 0x01  # first payload byte
            packet = bytes(b)
        if f.bad_checksum_packets:
            f.bad_checksum_packets -= 1
            b = bytearray(packet)
            b[-1] = (b[-1] + 1) & 0xFF
            packet = bytes(b)
        return packet

    def _reply(self, channel: _Channel, packets: list[bytes]) -> None:
        with self._lock:
            f = self.faults
            if f.silent:
                return
            busy, f.busy_s = f.busy_s, 0.0
            garbage, f.garbage = f.garbage, 0
        if busy:
            self._busy_until = time.monotonic() + busy
            self._stop.wait(busy)
        # The line clock of this reply starts now: never before the command arrived.
        self._line_free_at = time.monotonic()
        if garbage:
            noise = bytes(self._rng.randrange(256) for _ in range(garbage))
            self._write(channel, noise, in_reply=True)
        data_index = 0
        # Input already waiting before the first byte went out was sent into silence (a host
        # that gave up on a late reply): not an overlap.
        overlapped = channel.pending()
        for i, raw in enumerate(packets):
            if i and not overlapped and channel.pending():
                # The host spoke while this reply was still on the line, before it could have
                # seen its end (a retry sent into a running image stream): a real sensor would
                # lose or queue that command. Counted once per reply.
                overlapped = True
                self.stats["input_during_reply"] += 1
            if len(raw) < MIN_PACKET_LEN:  # the bare 0x55 handshake byte is not a packet
                self._write(channel, raw, in_reply=True)
                continue
            is_data = raw[6] in (PID.DATA, PID.END)
            with self._lock:
                out = self._mangle(raw, is_data, data_index)
            if is_data:
                data_index += 1
            if out is not None and not self._write(channel, out, in_reply=True):
                return

    # --- instructions ------------------------------------------------------------------------

    def _ack(self, code: int, data: bytes = b"") -> list[bytes]:
        # Replies have a fixed length per instruction, errors included (spec, "Sensor
        # behaviour that host software depends on"): pad with zeros.
        want = ack_payload_len(self._instruction) - 1 if self._instruction is not None else 0
        if len(data) < want:
            data += bytes(want - len(data))
        return [build_ack(code, data, self.address)]

    def _data(self, payload: bytes) -> list[bytes]:
        return split_data(payload, self.packet_size, self.address)

    def _command(self, code: int, p: bytes) -> _Result:
        """Answer one command; returns the packets and an optional action run after them."""
        self._instruction = code
        try:
            ins = Instruction(code)
        except ValueError:
            return self._ack(Confirm.PACKET_RECEIVE_ERROR), None
        if not self.profile.supports(ins):
            return self._ack(Confirm.PACKET_RECEIVE_ERROR), None
        if not self.verified and ins is not Instruction.VfyPwd:
            # A module with a non-default password answers only VfyPwd until verified.
            return self._ack(Confirm.MUST_VERIFY_PASSWORD), None
        handler = getattr(self, f"_do_{ins.name}")
        try:
            result: _Result = handler(p)
        except (struct.error, IndexError, ValueError):
            return self._ack(Confirm.PACKET_RECEIVE_ERROR), None
        return result

    def _buffer_id(self, p: bytes) -> int:
        buf = p[0]
        if buf not in (1, 2):
            raise ValueError("buffer id")
        return buf

    def _next_presentation(self) -> Presentation | None:
        # Lift the finger on the platen if its time is over.
        while self._presentations:
            cur = self._presentations[0]
            if cur.captured and (
                (cur.captures is not None and cur.captured >= cur.captures)
                or (cur.captures is None and len(self._presentations) > 1)
                or (cur.auto and time.monotonic() - cur.first_capture >= AUTO_DWELL_S)
            ):
                self._presentations.popleft()
                continue
            break
        if not self._presentations and self._auto is not None:
            variant, delay = self._auto
            if self._auto_wait == 0:
                # The platen is empty and the host polls: synthesise the coming finger now.
                self._prepare(self._auto_next_id(), variant, ahead=True)
            if self._auto_wait >= delay:
                self._auto_wait = 0
                self._auto_finger = self._auto_next_id()
                self._auto_uploaded = False
                self._presentations.append(Presentation(self._auto_finger, variant, auto=True))
            else:
                self._auto_wait += 1
                return None
        return self._presentations[0] if self._presentations else None

    def _do_GenImg(self, p: bytes) -> _Result:
        if p:
            raise ValueError("GenImg takes no parameters")
        pres = self._next_presentation()
        if pres is None:
            return self._ack(Confirm.NO_FINGER), None
        if pres.polls > 0:
            pres.polls -= 1
            return self._ack(Confirm.NO_FINGER), None
        if pres.variant is Variant.NO_FINGER:
            self._presentations.popleft()
            return self._ack(Confirm.NO_FINGER), None
        if not pres.captured:
            pres.first_capture = time.monotonic()
        pres.captured += 1
        fut = self._prepare(pres.finger_id, pres.variant)
        assert fut is not None
        impression = self._impressions.get(pres.finger_id, 0)
        self._synth_cache.pop((pres.finger_id, pres.variant, impression), None)
        self._impressions[pres.finger_id] = impression + 1
        # The image is read from the future when the host asks for it (UpImage, Img2Tz),
        # never before the capture is answered. A capture the host never looked at is not
        # synthesised at all. (Nothing is synthesised ahead here: that would compete for the
        # CPU with the host's processing of this capture when both run on one machine.)
        replaced = self._pending_image
        if replaced is not None:
            replaced.cancel()
        self.image = None
        self._pending_image = fut
        self.image_finger = (pres.finger_id, pres.variant)
        self._image_auto = pres.auto
        if self.pace:
            # The capture takes time on a real sensor: counted from the command's arrival
            # and waited out without holding the lock.
            self._work_s = self.profile.timing.capture_ms / 1000
        return self._ack(Confirm.OK), None

    def _do_UpImage(self, p: bytes) -> _Result:
        if p:
            raise ValueError("UpImage takes no parameters")
        image = self.image
        if image is None:
            return self._ack(Confirm.UPIMAGE_ERROR), None
        if self._image_auto:
            self._auto_uploaded = True
        return self._ack(Confirm.OK) + self._data(pack_image(image)), None

    def _do_DownImage(self, p: bytes) -> _Result:
        if p:
            raise ValueError("DownImage takes no parameters")
        self._rx = ("image", self.profile.image_wire_bytes, bytearray())
        return self._ack(Confirm.OK), None

    def _char_file(self, finger_id: int) -> bytes:
        digest = char_file_seed(FingerSpec(self.seed, finger_id))
        size = self.profile.library.char_file_bytes
        return (digest * (size // len(digest) + 1))[:size]

    def _do_Img2Tz(self, p: bytes) -> _Result:
        buf = self._buffer_id(p)
        if len(p) != 1:
            raise ValueError("Img2Tz takes one byte")
        image = self.image
        if image is None:
            return self._ack(Confirm.NO_VALID_IMAGE), None
        finger = self.image_finger
        # Spec "Image upload": Img2Tz before UpImage leaves a black image buffer.
        self.image = np.zeros_like(self.image)
        self.image_finger = None
        if finger is None:
            return self._ack(Confirm.FEATURE_FAIL), None
        finger_id, _ = finger
        # Extraction is decided from the image itself, with the same features (and the same
        # calibration) as the host's quality score: what the gate accepts, Img2Tz extracts.
        failure = extraction_failure(assess(image).features)
        if failure is not None:
            return self._ack(failure), None
        self.buffers[buf] = self._char_file(finger_id)
        return self._ack(Confirm.OK), None

    @staticmethod
    def _identity(blob: bytes | None) -> bytes | None:
        return None if blob is None else blob[:32]

    def _do_Match(self, p: bytes) -> _Result:
        if p:
            raise ValueError("Match takes no parameters")
        a, b = self._identity(self.buffers[1]), self._identity(self.buffers[2])
        if a is not None and a == b:
            return self._ack(Confirm.OK, struct.pack(">H", 180)), None
        return self._ack(Confirm.NO_MATCH, b"\x00\x00"), None

    def _do_Search(self, p: bytes) -> _Result:
        buf = self._buffer_id(p)
        start, count = struct.unpack(">HH", p[1:5])
        if len(p) != 5:
            raise ValueError("Search takes five bytes")
        ident = self._identity(self.buffers[buf])
        if ident is not None:
            for page in range(start, min(start + count, self.profile.library.library_size)):
                if self._identity(self.library.get(page)) == ident:
                    return self._ack(Confirm.OK, struct.pack(">HH", page, 150)), None
        # A failed search still carries page id and score, as zeros.
        return self._ack(Confirm.NOT_FOUND, bytes(4)), None

    _do_HighSpeedSearch = _do_Search

    def _do_RegModel(self, p: bytes) -> _Result:
        if p:
            raise ValueError("RegModel takes no parameters")
        a, b = self.buffers[1], self.buffers[2]
        if a is None or b is None or a[:32] != b[:32]:
            return self._ack(Confirm.MERGE_FAIL), None
        size = self.profile.library.template_bytes
        template = (a * (size // len(a) + 1))[:size]
        self.buffers[1] = self.buffers[2] = template
        return self._ack(Confirm.OK), None

    def _page(self, raw: bytes) -> int | None:
        (page,) = struct.unpack(">H", raw)
        return page if page < self.profile.library.library_size else None

    def _do_Store(self, p: bytes) -> _Result:
        buf = self._buffer_id(p)
        if len(p) != 3:
            raise ValueError("Store takes three bytes")
        page = self._page(p[1:3])
        if page is None:
            return self._ack(Confirm.PAGE_OUT_OF_RANGE), None
        blob = self.buffers[buf]
        if blob is None:
            return self._ack(Confirm.PACKET_RECEIVE_ERROR), None
        self.library[page] = blob
        self._save_flash()
        return self._ack(Confirm.OK), None

    def _do_LoadChar(self, p: bytes) -> _Result:
        buf = self._buffer_id(p)
        if len(p) != 3:
            raise ValueError("LoadChar takes three bytes")
        page = self._page(p[1:3])
        if page is None:
            return self._ack(Confirm.PAGE_OUT_OF_RANGE), None
        if page not in self.library:
            return self._ack(Confirm.TEMPLATE_READ_ERROR), None
        self.buffers[buf] = self.library[page]
        return self._ack(Confirm.OK), None

    def _do_UpChar(self, p: bytes) -> _Result:
        buf = self._buffer_id(p)
        if len(p) != 1:
            raise ValueError("UpChar takes one byte")
        blob = self.buffers[buf]
        if blob is None:
            return self._ack(Confirm.UPCHAR_ERROR), None
        return self._ack(Confirm.OK) + self._data(blob), None

    def _do_DownChar(self, p: bytes) -> _Result:
        buf = self._buffer_id(p)
        if len(p) != 1:
            raise ValueError("DownChar takes one byte")
        # The host may send a character file or a whole template.
        self._rx = (f"char{buf}", -1, bytearray())
        return self._ack(Confirm.OK), None

    def _do_DeleteChar(self, p: bytes) -> _Result:
        start, count = struct.unpack(">HH", p)
        if count == 0 or start + count > self.profile.library.library_size:
            return self._ack(Confirm.DELETE_FAIL), None
        for page in range(start, start + count):
            self.library.pop(page, None)
        self._save_flash()
        return self._ack(Confirm.OK), None

    def _do_Empty(self, p: bytes) -> _Result:
        if p:
            raise ValueError("Empty takes no parameters")
        self.library.clear()
        self._save_flash()
        return self._ack(Confirm.OK), None

    def _do_SetSysPara(self, p: bytes) -> _Result:
        reg, value = struct.unpack(">BB", p)
        if reg == SysParam.BAUD and value in self.profile.uart.allowed_baud_n:
            if self.profile.quirks.ignores_baud_change:
                return self._ack(Confirm.OK), None

            def switch() -> None:
                # The ack goes out at the old rate; the new one applies afterwards.
                with self._lock:
                    self.baud_n = value
                    self._save_flash()

            return self._ack(Confirm.OK), switch
        if reg == SysParam.SECURITY_LEVEL and 1 <= value <= 5:
            self.security_level = value
            self._save_flash()
            return self._ack(Confirm.OK), None
        if reg == SysParam.PACKET_SIZE and value in self.profile.uart.allowed_packet_size_codes:
            self.packet_size_code = value
            self._save_flash()
            return self._ack(Confirm.OK), None
        return self._ack(Confirm.INVALID_REGISTER), None

    def _do_ReadSysPara(self, p: bytes) -> _Result:
        if p:
            raise ValueError("ReadSysPara takes no parameters")
        status = 0
        if time.monotonic() < self._busy_until:
            status |= 0x01
        if self.verified:
            status |= 0x04
        if self.image_valid:
            status |= 0x08
        sp = SystemParameters(
            status=status,
            system_id=self.profile.system_id,
            library_size=self.profile.library.library_size,
            security_level=self.security_level,
            address=self.address,
            packet_size_code=self.packet_size_code,
            baud_n=self.baud_n,
        )
        return self._ack(Confirm.OK, sp.encode()), None

    def _do_SetPwd(self, p: bytes) -> _Result:
        (self.password,) = struct.unpack(">I", p)
        self._save_flash()
        return self._ack(Confirm.OK), None

    def _do_VfyPwd(self, p: bytes) -> _Result:
        (pwd,) = struct.unpack(">I", p)
        if pwd != self.password:
            return self._ack(Confirm.WRONG_PASSWORD), None
        self.verified = True
        return self._ack(Confirm.OK), None

    def _do_GetRandomCode(self, p: bytes) -> _Result:
        if p:
            raise ValueError("GetRandomCode takes no parameters")
        return self._ack(Confirm.OK, struct.pack(">I", self._rng.getrandbits(32))), None

    def _do_SetAddr(self, p: bytes) -> _Result:
        (new,) = struct.unpack(">I", p)
        # The reply already carries the new address.
        self.address = new
        return self._ack(Confirm.OK), None

    def _do_WriteNotepad(self, p: bytes) -> _Result:
        page = p[0]
        if len(p) != 1 + NOTEPAD_PAGE_BYTES or page >= NOTEPAD_PAGES:
            raise ValueError("WriteNotepad takes a page and 32 bytes")
        self.notepad[page] = bytes(p[1:])
        self._save_flash()
        return self._ack(Confirm.OK), None

    def _do_ReadNotepad(self, p: bytes) -> _Result:
        if len(p) != 1 or p[0] >= NOTEPAD_PAGES:
            raise ValueError("ReadNotepad takes a page number 0..15")
        return self._ack(Confirm.OK, self.notepad[p[0]]), None

    def _do_TemplateNum(self, p: bytes) -> _Result:
        if p:
            raise ValueError("TemplateNum takes no parameters")
        return self._ack(Confirm.OK, struct.pack(">H", len(self.library))), None

    def _do_ReadIndexTable(self, p: bytes) -> _Result:
        if len(p) != 1 or p[0] > 3:
            raise ValueError("ReadIndexTable takes an index page 0..3")
        table = bytearray(32)
        base = p[0] * 256
        for page in self.library:
            if base <= page < base + 256:
                bit = page - base
                table[bit // 8] |= 1 << (bit % 8)
        return self._ack(Confirm.OK, bytes(table)), None

    def _do_AuraLedConfig(self, p: bytes) -> _Result:
        ctrl, speed, colour, count = struct.unpack(">BBBB", p)
        self.led = (ctrl, speed, colour, count)
        return self._ack(Confirm.OK), None

    def _do_SoftReset(self, p: bytes) -> _Result:
        if p:
            raise ValueError("SoftReset takes no parameters")
        self._reset_volatile()
        if self.profile.quirks.soft_reset_handshake:
            return [*self._ack(Confirm.OK), b"\x55"], None
        return self._ack(Confirm.OK), None

    def _do_GetEcho(self, p: bytes) -> _Result:
        if p:
            raise ValueError("GetEcho takes no parameters")
        # The R503 answers GetEcho with confirmation code 0x55 ("module is ready").
        return [build_packet(PID.ACK, b"\x55", self.address)], None
