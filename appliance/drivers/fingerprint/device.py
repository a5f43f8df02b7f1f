"""Device layer: typed ZhianTec sensor commands, connection supervision and hot-plug.

Commands are named as in the manual (the ZhianTec R30x/AS608 user manual, "Instructions"),
in snake case: ``gen_img`` is GenImg (0x01), ``up_image`` is UpImage (0x0A), and so on. Nothing
above this module sees bytes. One lock serialises every exchange on the link; a background
supervisor thread reconnects after an unplug and probes an idle sensor so that a pulled cable
shows up in health even when no command runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...devices import DeviceHealth, EventSink, HealthTracker
from ...protocol.codes import ErrorCode

if TYPE_CHECKING:  # numpy loads with the first image, not at start
    import numpy as np
    import numpy.typing as npt
from ...errors import (
    ApplianceError,
    Busy,
    ConfigError,
    DeviceDisconnected,
    DeviceError,
    DeviceStatusError,
    DeviceTimeout,
    ProtocolError,
)
from .config import FingerprintConfig
from .frames import (
    PACKET_SIZES,
    PID,
    Confirm,
    FrameError,
    Instruction,
    Packet,
    SysParam,
    SystemParameters,
    ack_payload_len,
    baud_from_n,
    confirm_text,
    n_from_baud,
    pack_image,
    packet_size_code,
    split_data,
    unpack_image,
    wire_bytes_for,
)
from .link import LINE_SLACK_S, SerialLink
from .profiles import SensorProfile, load_profile
from .records import FingerRecordStore

log = logging.getLogger(__name__)

DEVICE = "fingerprint"
# Confirmation codes that describe the finger, not the device (worth another try).
_FINGER_CODES = {Confirm.NO_FINGER, Confirm.IMAGE_FAIL, Confirm.IMAGE_MESSY, Confirm.FEATURE_FAIL}


@dataclass(frozen=True)
class SearchResult:
    """Search/HighSpeedSearch hit: the library page and the match score."""

    page_id: int
    score: int


@dataclass(frozen=True)
class CapturedImage:
    """One finger image read from the sensor (8-bit grey, ``height`` rows x ``width``)."""

    image: npt.NDArray[np.uint8]
    wire_s: float  # seconds the UpImage transfer took on the line
    received_at: float  # time.monotonic() when the last data byte arrived
    # The sensor's own character file of this impression (Img2Tz then UpChar), when asked for
    # and the sensor could extract one; a biometric: held in memory only, never logged.
    template: bytearray | None = None

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


class FingerprintSensor:
    """A ZhianTec-family sensor behind a serial port, pty or ``socket://`` URL.

    Implements the :class:`~appliance.devices.Device` protocol and
    :class:`~appliance.drivers.fingerprint.interface.FingerprintScanner`.
    """

    kind = "fingerprint"

    def __init__(self, config: FingerprintConfig, sink: EventSink | None = None) -> None:
        self.config = config
        profile_dir = Path(config.profile_dir) if config.profile_dir else None
        self.profile: SensorProfile = load_profile(config.model, profile_dir)
        try:
            n_from_baud(config.baud)
        except FrameError as exc:
            raise ConfigError(str(exc), [("hardware.fingerprint.baud", str(exc))]) from None
        self._health = HealthTracker(self.kind, "serial", sink)
        self._lock = threading.RLock()
        self._session = threading.RLock()
        self._link: SerialLink | None = None
        self._baud = config.baud
        self._sys: SystemParameters | None = None
        self._packet_size = 128
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_io = 0.0
        # Set after a failed exchange: (the instruction, wire bytes of the stream it may
        # still be sending). The next exchange first resynchronises (see _resync).
        self._desync: tuple[Instruction, int] | None = None
        self._owed_probes = 0
        self.stats: dict[str, int] = {
            "resyncs": 0,
            "retries": 0,
            "connects": 0,
            "timeouts": 0,
            "garbage_bytes": 0,
        }
        # Captured records wait here, in memory only, until the trust layer seals them.
        self.records = FingerRecordStore(config.record_store_max, config.record_ttl_s)

    # --- Device protocol ------------------------------------------------------------------------

    def start(self) -> None:
        """Connect now if the sensor answers; otherwise report it and keep trying in the
        background. Never raises for absent hardware."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._try_connect()
        self._thread = threading.Thread(
            target=self._supervise, name="fingerprint-supervisor", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop supervision and close the port; idempotent."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=10)
        with self._lock:
            self._close()
        self._health.set("disabled", "stopped")

    def health(self) -> DeviceHealth:
        return self._health.current

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.is_open

    @property
    def baud(self) -> int:
        return self._baud

    @property
    def packet_size(self) -> int:
        return self._packet_size

    @property
    def system_parameters(self) -> SystemParameters | None:
        return self._sys

    # --- connection -----------------------------------------------------------------------------

    def _close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            self.stats["garbage_bytes"] += link.garbage_bytes
            link.close()

    @property
    def garbage_bytes(self) -> int:
        """Bytes skipped while resynchronising, over every connection so far."""
        link = self._link
        return self.stats["garbage_bytes"] + (link.garbage_bytes if link is not None else 0)

    def _try_connect(self) -> bool:
        """One connection attempt; reports the outcome through health and never raises."""
        first_baud = self._baud
        with self._lock:
            try:
                self._connect()
            except DeviceDisconnected as exc:
                self._close()
                self._health.set("disconnected", exc.message, port=self.config.port)
                return False
            except ApplianceError as exc:
                self._close()
                self._baud = first_baud
                self._health.set("error", exc.message, port=self.config.port)
                return False
            except Exception as exc:  # a bug must not kill start() or the supervisor
                log.exception("fingerprint connect failed unexpectedly")
                self._close()
                self._baud = first_baud
                self._health.set("error", f"internal error: {exc!r}", port=self.config.port)
                return False
        self.stats["connects"] += 1
        return True

    def _connect(self) -> None:
        """Open the port, verify the password, read the system parameters, apply settings."""
        self._close()
        link = SerialLink(self.config.port, self._baud, self.config.address)
        link.open()
        self._link = link
        self._desync = None
        self._owed_probes = 0
        memo = self._link_memo()
        known = memo.get("baud")
        # Remembered rate first (no probing when it is known), then the configured one, then,
        # when negotiating, every rate the profile allows, fastest first: a sensor switched
        # earlier keeps its rate in flash.
        rates: list[int] = []
        for rate in [known, self._baud] + (
            [baud_from_n(n) for n in sorted(self.profile.uart.allowed_baud_n, reverse=True)]
            if self.config.negotiate_baud
            else []
        ):
            if isinstance(rate, int) and rate not in rates:
                rates.append(rate)
        last: DeviceError | None = None
        for rate in rates:
            link.set_baud(rate)
            self._baud = rate
            try:
                # A 12-byte ack arrives within milliseconds at any rate: probe the rates other
                # than the configured one with a short deadline so a sensor at another rate
                # costs a fraction of a second each, and a silent one seconds, not a minute.
                short = rate != self.config.baud
                self._handshake(min(self.config.command_timeout_s, 0.3) if short else None)
                break
            except DeviceTimeout as exc:
                last = exc
                link.drain(0.02, 0.2)
                # Nothing is owed at a rate the sensor does not speak: no resync probe.
                self._desync = None
                self._owed_probes = 0
        else:
            assert last is not None
            raise last
        refused = set(memo.get("refused_baud") or [])
        target = self.profile.max_baud
        if self.config.negotiate_baud and self._baud < target and target not in refused:
            try:
                self.set_baud(target)
            except (DeviceStatusError, DeviceTimeout, ProtocolError) as exc:
                # A sensor that refuses the rate (0x1A) or does not follow it: stay at the
                # working rate, remember the refusal, and do not ask again at every connect.
                log.warning(
                    "fingerprint sensor refused %d baud (%s); staying at %d",
                    target,
                    exc.message,
                    self._baud,
                )
                refused.add(target)
        if self.config.packet_size and self.config.packet_size != self._packet_size:
            try:
                self.set_packet_size(self.config.packet_size)
            except (DeviceStatusError, DeviceTimeout, ProtocolError) as exc:
                log.warning(
                    "fingerprint sensor refused %d-byte packets (%s); staying at %d",
                    self.config.packet_size,
                    exc.message,
                    self._packet_size,
                )
        self._save_link_memo(
            {
                "baud": self._baud,
                "packet_size": self._packet_size,
                "refused_baud": sorted(refused),
            }
        )
        sp = self._sys
        assert sp is not None
        self._health.set(
            "ok",
            None,
            port=self.config.port,
            model=self.profile.model,
            baud=self._baud,
            packet_size=self._packet_size,
            library_size=sp.library_size,
            security_level=sp.security_level,
        )
        log.info(
            "fingerprint sensor %s on %s at %d baud, %d-byte packets",
            self.profile.model,
            self.config.port,
            self._baud,
            self._packet_size,
        )

    def _link_memo(self) -> dict[str, Any]:
        """What the last connection negotiated, if remembered for this port and model."""
        path = self.config.link_state_file
        if not path:
            return {}
        try:
            raw = json.loads(Path(path).read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable fingerprint link state %s: %s", path, exc)
            return {}
        if (
            not isinstance(raw, dict)
            or raw.get("port") != self.config.port
            or raw.get("model") != self.profile.model
        ):
            return {}
        return raw

    def _save_link_memo(self, memo: dict[str, Any]) -> None:
        """Remember the negotiated link settings (atomically; a failure only costs a probe)."""
        path = self.config.link_state_file
        if not path:
            return
        memo = {"port": self.config.port, "model": self.profile.model, **memo}
        target = Path(path)
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            tmp.write_text(json.dumps(memo, sort_keys=True) + "\n")
            os.replace(tmp, target)
        except OSError as exc:
            log.warning("cannot remember the fingerprint link settings in %s: %s", path, exc)

    def _handshake(self, timeout_s: float | None = None) -> None:
        # Hosts send VfyPwd even with the default password (spec, "Packet"); it also proves
        # the rate is right before anything else is said.
        pwd = struct.pack(">I", self.config.password)
        self._exchange(Instruction.VfyPwd, pwd, retries=0, timeout_s=timeout_s)
        self.read_sys_para(retries=0)

    def _supervise(self) -> None:
        while not self._stop.is_set():
            if not self.connected:
                self._wake.wait(self.config.reconnect_interval_s)
                self._wake.clear()
                if self._stop.is_set():
                    return
                if not self.connected:
                    self._try_connect()
                continue
            period = self.config.health_probe_s or 3600.0
            self._wake.wait(period)
            self._wake.clear()
            if self._stop.is_set() or not self.config.health_probe_s:
                continue
            if time.monotonic() - self._last_io < period:
                continue
            # Idle liveness probe; skipped while a command holds the link.
            if self._lock.acquire(blocking=False):
                try:
                    if self.connected:
                        self.read_sys_para(retries=0)
                except DeviceDisconnected:
                    pass  # _exchange already reported it and woke us up to reconnect
                except DeviceError as exc:
                    # The port is there but the module does not answer (unpowered sensor
                    # behind a live USB-UART adapter, wrong rate): say so in health; the
                    # next successful exchange turns it back to ok.
                    if self._health.current.state != "error":
                        log.warning("fingerprint sensor not answering: %s", exc.message)
                    self._health.set("error", f"sensor not answering: {exc.code}")
                except Exception:  # keep supervising whatever happens
                    log.exception("fingerprint health probe failed unexpectedly")
                finally:
                    self._lock.release()

    # --- exchange -------------------------------------------------------------------------------

    def _lost(self, exc: DeviceDisconnected) -> None:
        self._close()
        self._health.set("disconnected", exc.message, port=self.config.port)
        self._wake.set()

    def _exchange(
        self,
        instruction: Instruction,
        params: bytes = b"",
        *,
        ok: frozenset[int] = frozenset({Confirm.OK}),
        timeout_s: float | None = None,
        data_len: int | None = -1,
        retries: int | None = None,
        after_ack: Any = None,
    ) -> tuple[Packet, bytes | None]:
        """Send one command; return its ack and, if ``data_len`` is not -1, the data stream
        that follows it (``None`` for any length). Retries garbled or lost replies of
        idempotent commands (``retries``); raises DeviceStatusError for a confirmation code
        outside ``ok``."""
        if not self.profile.supports(instruction):
            raise DeviceError(
                f"{self.profile.model} does not support {instruction.name}",
                device=DEVICE,
                code=ErrorCode.UNSUPPORTED,
                details={"instruction": instruction.name},
            )
        attempts = 1 + (self.config.retries if retries is None else retries)
        timeout = timeout_s if timeout_s is not None else self.config.command_timeout_s
        with self._lock:
            for attempt in range(1, attempts + 1):
                link = self._link
                if link is None:
                    raise DeviceDisconnected(
                        "fingerprint sensor is not connected",
                        device=DEVICE,
                        details={"port": self.config.port},
                    )
                try:
                    if self._desync is not None:
                        self._resync(link)
                    # Whatever waits in the input now cannot be this command's reply.
                    link.flush_input()
                    link.send_command(instruction, params)
                    # The reply is ~12-44 bytes: its line time plus the command's own time.
                    ack = link.receive_ack(
                        time.monotonic() + timeout + link.line_time(44),
                        instruction.name,
                        instruction,
                    )
                    data: bytes | None = None
                    if ack.confirm in ok and ack.confirm == Confirm.OK:
                        if after_ack is not None:
                            after_ack(link)
                        if data_len != -1:
                            data = link.receive_data(self._packet_size, data_len, LINE_SLACK_S)
                    self._last_io = time.monotonic()
                except DeviceDisconnected as exc:
                    self._lost(exc)
                    raise
                except (ProtocolError, DeviceTimeout) as exc:
                    if isinstance(exc, DeviceTimeout):
                        self.stats["timeouts"] += 1
                    # A reply (or the rest of a data stream) may still be owed: nothing more
                    # is sent before the line is quiet and a probe's answer has been read.
                    self._desync = (instruction, self._stream_bytes(instruction, data_len))
                    if attempt >= attempts:
                        raise
                    self.stats["retries"] += 1
                    log.info(
                        "fingerprint %s: %s; retry %d/%d",
                        instruction.name,
                        exc.code,
                        attempt,
                        attempts - 1,
                    )
                    continue
                if attempt > 1:
                    # An earlier attempt's reply may still come (a late reply answered this
                    # attempt): resynchronise before the next command.
                    self._desync = (instruction, 0)
                if ack.confirm not in ok:
                    raise DeviceStatusError(
                        f"{instruction.name}: {confirm_text(ack.confirm)}",
                        device=DEVICE,
                        status=ack.confirm,
                        code=ErrorCode.FINGER_STATUS if ack.confirm in _FINGER_CODES else None,
                        retryable=ack.confirm in _FINGER_CODES,
                        details={"instruction": instruction.name},
                    )
                if self._health.current.state != "ok" and self._sys is not None:
                    self._health.set("ok", None)
                return ack, data
        raise AssertionError("unreachable")  # pragma: no cover

    def _stream_bytes(self, instruction: Instruction, data_len: int | None) -> int:
        """Wire bytes of the data stream ``instruction`` may still be sending (0: none)."""
        if data_len == -1:
            return 0
        size = data_len if data_len is not None else self.profile.library.template_bytes
        return wire_bytes_for(size, self._packet_size)

    def _resync(self, link: SerialLink) -> None:
        """Bring the link back in step after a failed exchange; raises DeviceTimeout if the
        sensor does not answer the probe.

        1. Drain by line silence: wait until nothing has arrived for three data packets' line
           time (at least 0.2 s), for at most the line time of the stream that may still be
           arriving (an image takes seconds; stopping earlier and retrying would queue a
           second image behind it).
        2. Probe: send an instruction whose reply length differs from the failed one's
           (ReadSysPara, 28 bytes; TemplateNum if ReadSysPara failed) and read until its
           reply, skipping everything before it. The sensor answers in order, so every reply
           still owed to earlier commands comes before the probe's and is discarded.
        """
        assert self._desync is not None
        failed, stream = self._desync
        # Three packets' line time, and never under 0.2 s (USB-UART latency timers, a loaded
        # host): a pause shorter than that inside a stream must not end the drain.
        quiet = max(0.2, 3 * link.line_time(self._packet_size + 12))
        dropped = link.drain(quiet, link.line_time(stream) + LINE_SLACK_S + quiet)
        probe = (
            Instruction.TemplateNum
            if failed == Instruction.ReadSysPara
            else Instruction.ReadSysPara
        )
        want = ack_payload_len(probe)
        self.stats["resyncs"] += 1
        link.flush_input()
        link.send_command(probe)
        # A stream that started late may still be on the line: its line time, plus one more
        # command time for the late start.
        deadline = (
            time.monotonic()
            + self.config.command_timeout_s * (2 if stream else 1)
            + link.line_time(stream + 44)
            + LINE_SLACK_S
        )
        # A probe that timed out earlier may still be answered: wait for those answers too,
        # but accept being in step once the deadline passes with at least one seen.
        need, seen = self._owed_probes + 1, 0
        while seen < need:
            try:
                pkt = link.receive(deadline, f"{probe.name} (resynchronising)")
            except ProtocolError:
                # Garbled: perhaps the probe's own reply. Still out of step; the next
                # attempt probes again (a probe reply read late is skipped by its length).
                raise
            except DeviceTimeout:
                if seen:
                    break
                self._owed_probes += 1
                raise
            if pkt.pid == PID.ACK and len(pkt.payload) == want:
                seen += 1
            else:
                link.stale_packets += 1
        self._owed_probes = 0
        self._desync = None
        log.info(
            "fingerprint link resynchronised after %s (%d bytes drained)", failed.name, dropped
        )

    def _send_data(self, data: bytes, packet_size: int) -> None:
        """Send a host-to-sensor data stream (after the single ack of DownChar/DownImage)."""
        link = self._link
        assert link is not None
        try:
            for pkt in split_data(data, packet_size, self.config.address):
                link.write(pkt)
        except DeviceDisconnected as exc:
            self._lost(exc)
            raise
        self._last_io = time.monotonic()

    # --- typed commands (manual names) ------------------------------------------------------------

    def vfy_pwd(self, password: int | None = None, *, retries: int | None = None) -> None:
        """VfyPwd (0x13): verify the module password."""
        pwd = self.config.password if password is None else password
        self._exchange(Instruction.VfyPwd, struct.pack(">I", pwd), retries=retries)

    def set_pwd(self, password: int) -> None:
        """SetPwd (0x12): set a new module password (0 restores the default)."""
        self._exchange(Instruction.SetPwd, struct.pack(">I", password), retries=0)

    def read_sys_para(self, *, retries: int | None = None) -> SystemParameters:
        """ReadSysPara (0x0F): status register, library size, security level, packet size, baud."""
        ack, _ = self._exchange(Instruction.ReadSysPara, retries=retries)
        try:
            sp = SystemParameters.decode(ack.payload[1:])
        except FrameError as exc:
            raise ProtocolError(f"ReadSysPara: {exc}", device=DEVICE) from exc
        self._sys = sp
        self._packet_size = sp.packet_size
        return sp

    def set_sys_para(self, param: SysParam | int, value: int) -> None:
        """SetSysPara (0x0E): write one system register (4 baud N, 5 security, 6 packet size)."""
        if param == SysParam.BAUD:
            self.set_baud(baud_from_n(value))
            return
        self._exchange(Instruction.SetSysPara, bytes([param, value]), retries=0)
        if param == SysParam.PACKET_SIZE:
            self._packet_size = PACKET_SIZES[value]
        self.read_sys_para()

    def set_baud(self, baud: int) -> None:
        """SetSysPara(4, N): switch the sensor's UART rate and follow it on the host side.

        The ack comes at the old rate; both sides use the new one afterwards. The result is
        checked with ReadSysPara at the new rate; on failure the old rate is restored.
        """
        n = n_from_baud(baud)
        if n not in self.profile.uart.allowed_baud_n:
            raise ConfigError(
                f"{self.profile.model} does not accept {baud} baud",
                [("hardware.fingerprint.baud", f"allowed N: {self.profile.uart.allowed_baud_n}")],
            )
        old = self._baud

        def follow(link: SerialLink) -> None:
            # Let the sensor switch before talking at the new rate.
            time.sleep(0.01)
            link.set_baud(baud)

        with self._lock:
            self._exchange(
                Instruction.SetSysPara, bytes([SysParam.BAUD, n]), retries=0, after_ack=follow
            )
            self._baud = baud
            try:
                self.read_sys_para(retries=0)
            except DeviceTimeout:
                if self._link is not None:
                    self._link.set_baud(old)
                self._baud = old
                # Nothing is owed at a rate the sensor does not speak.
                self._desync = None
                raise
        log.info("fingerprint sensor now at %d baud", baud)

    def set_packet_size(self, size: int) -> None:
        """SetSysPara(6, code): data packet size 32/64/128/256 bytes."""
        self.set_sys_para(SysParam.PACKET_SIZE, packet_size_code(size))

    def set_security_level(self, level: int) -> None:
        """SetSysPara(5, level): matching threshold 1..5."""
        if not 1 <= level <= 5:
            raise ValueError(f"security level {level} outside 1..5")
        self.set_sys_para(SysParam.SECURITY_LEVEL, level)

    def gen_img(self) -> bool:
        """GenImg (0x01): capture into the image buffer. False when no finger is on the
        sensor (0x02) or the capture failed (0x03): both mean "try again"."""
        ack, _ = self._exchange(
            Instruction.GenImg,
            ok=frozenset({Confirm.OK, Confirm.NO_FINGER, Confirm.IMAGE_FAIL}),
            timeout_s=self.config.command_timeout_s + self.profile.timing.capture_ms / 1000,
        )
        return ack.confirm == Confirm.OK

    def up_image_raw(self) -> tuple[bytes, float]:
        """UpImage (0x0A) as wire data (4 bits a pixel) and the transfer's duration."""
        t0 = time.monotonic()
        _, data = self._exchange(Instruction.UpImage, data_len=self.profile.image_wire_bytes)
        assert data is not None
        return data, time.monotonic() - t0

    def up_image(self) -> npt.NDArray[np.uint8]:
        """UpImage (0x0A): the image buffer as an 8-bit image (rows x columns)."""
        data, _ = self.up_image_raw()
        return unpack_image(data, self.profile.image.width, self.profile.image.height)

    def down_image(self, image: npt.NDArray[np.uint8]) -> None:
        """DownImage (0x0B): load an 8-bit image into the sensor's image buffer.

        Acknowledged once before the data; nothing follows the data (spec, "Sensor behaviour").
        """
        want = (self.profile.image.height, self.profile.image.width)
        if image.shape != want:
            raise ValueError(f"image must be {want[0]} x {want[1]}, got {image.shape}")
        data = pack_image(image)
        with self._lock:
            self._exchange(Instruction.DownImage, retries=0)
            self._send_data(data, self._packet_size)

    def img2tz(self, buffer: int = 1) -> None:
        """Img2Tz (0x02): extract features from the image buffer into char buffer 1 or 2.

        Upload the image first: after Img2Tz the image buffer reads back black (spec)."""
        self._exchange(Instruction.Img2Tz, bytes([_buffer(buffer)]))

    def match(self) -> int | None:
        """Match (0x03): compare char buffers 1 and 2; the score, or None for no match."""
        ack, _ = self._exchange(Instruction.Match, ok=frozenset({Confirm.OK, Confirm.NO_MATCH}))
        if ack.confirm != Confirm.OK:
            return None
        return int(struct.unpack(">H", ack.payload[1:3])[0])

    def search(
        self, buffer: int = 1, start: int = 0, count: int | None = None, *, fast: bool = False
    ) -> SearchResult | None:
        """Search (0x04) or HighSpeedSearch (0x1B) of char buffer ``buffer`` in the library
        pages ``start .. start + count - 1`` (default: the whole library). None: not found."""
        if count is None:
            count = self.profile.library.library_size - start
        ins = Instruction.HighSpeedSearch if fast else Instruction.Search
        ack, _ = self._exchange(
            ins,
            struct.pack(">BHH", _buffer(buffer), start, count),
            ok=frozenset({Confirm.OK, Confirm.NOT_FOUND}),
            timeout_s=self.config.command_timeout_s + self.profile.timing.search_ms / 1000,
        )
        if ack.confirm != Confirm.OK:
            return None
        page, score = struct.unpack(">HH", ack.payload[1:5])
        return SearchResult(page, score)

    def reg_model(self) -> None:
        """RegModel (0x05): merge char buffers 1 and 2 into a template (in both buffers)."""
        self._exchange(Instruction.RegModel)

    def store(self, buffer: int, page: int) -> None:
        """Store (0x06): write char buffer ``buffer`` to library page ``page``."""
        self._exchange(Instruction.Store, struct.pack(">BH", _buffer(buffer), self._page(page)))

    def load_char(self, buffer: int, page: int) -> None:
        """LoadChar (0x07): read library page ``page`` into char buffer ``buffer``."""
        self._exchange(Instruction.LoadChar, struct.pack(">BH", _buffer(buffer), self._page(page)))

    def up_char(self, buffer: int = 1) -> bytes:
        """UpChar (0x08): the char buffer's content (character file or template)."""
        _, data = self._exchange(Instruction.UpChar, bytes([_buffer(buffer)]), data_len=None)
        assert data is not None
        return data

    def down_char(self, buffer: int, data: bytes) -> None:
        """DownChar (0x09): load a character file or template into a char buffer.

        Honours the profile's DownChar packet-size quirk (R307: 32-byte packets) by switching
        the packet size for the transfer and back afterwards."""
        with self._downchar_packets() as size:
            self._down_char(buffer, data, size)

    @contextlib.contextmanager
    def _downchar_packets(self) -> Iterator[int]:
        """Hold the packet size DownChar needs (the profile's quirk) for one or more transfers,
        and restore the link's own afterwards."""
        limit = self.profile.quirks.downchar_max_packet_size
        with self._lock:
            original = self._packet_size
            size = min(original, limit) if limit else original
            if size != original:
                self.set_packet_size(size)
            try:
                yield size
            finally:
                if size != original and self.connected:
                    self.set_packet_size(original)

    def _down_char(self, buffer: int, data: bytes, packet_size: int) -> None:
        sizes = {self.profile.library.char_file_bytes, self.profile.library.template_bytes}
        if len(data) not in sizes:
            raise ValueError(f"char data must be one of {sorted(sizes)} bytes, got {len(data)}")
        self._exchange(Instruction.DownChar, bytes([_buffer(buffer)]), retries=0)
        self._send_data(data, packet_size)

    def delete_char(self, page: int, count: int = 1) -> None:
        """DeleteChar (0x0C): delete ``count`` templates from page ``page``."""
        if count < 1 or page + count > self.profile.library.library_size:
            raise ValueError("pages outside the library")
        self._exchange(Instruction.DeleteChar, struct.pack(">HH", page, count))

    def empty(self) -> None:
        """Empty (0x0D): delete every template in the library."""
        self._exchange(Instruction.Empty)

    def template_num(self) -> int:
        """TemplateNum (0x1D): number of templates stored."""
        ack, _ = self._exchange(Instruction.TemplateNum)
        return int(struct.unpack(">H", ack.payload[1:3])[0])

    def read_index_table(self, index: int = 0) -> set[int]:
        """ReadIndexTable (0x1F): occupied pages of index page ``index`` (256 pages each)."""
        if not 0 <= index <= 3:
            raise ValueError("index table page outside 0..3")
        ack, _ = self._exchange(Instruction.ReadIndexTable, bytes([index]))
        table = ack.payload[1:33]
        return {
            index * 256 + i * 8 + bit
            for i, byte in enumerate(table)
            for bit in range(8)
            if byte >> bit & 1
        }

    def get_random_code(self) -> int:
        """GetRandomCode (0x14): a 32-bit random number from the module."""
        ack, _ = self._exchange(Instruction.GetRandomCode)
        return int(struct.unpack(">I", ack.payload[1:5])[0])

    def set_addr(self, address: int) -> None:
        """SetAddr (0x15): give the module a new address.

        The command goes to the old address; the acknowledge is expected from the new one, as
        the emulator sends it (the spec does not say; check on hardware). Not retried.
        """
        if not 0 <= address <= 0xFFFFFFFF:
            raise ValueError(f"address {address!r} outside 32 bits")
        with self._lock:
            link = self._link
            if link is None:
                raise DeviceDisconnected(
                    "fingerprint sensor is not connected",
                    device=DEVICE,
                    details={"port": self.config.port},
                )
            old = link.address
            try:
                link.send_command(Instruction.SetAddr, struct.pack(">I", address))
                link.address = address
                ack = link.receive_ack(
                    time.monotonic() + self.config.command_timeout_s + link.line_time(12),
                    "SetAddr acknowledge",
                )
            except DeviceDisconnected as exc:
                self._lost(exc)
                raise
            except DeviceError:
                link.address = old
                raise
            if ack.confirm != Confirm.OK:
                link.address = old
                raise DeviceStatusError(
                    f"SetAddr: {confirm_text(ack.confirm)}",
                    device=DEVICE,
                    status=ack.confirm,
                    details={"instruction": "SetAddr"},
                )
        log.info("fingerprint module address changed; update hardware.fingerprint.address")

    def write_notepad(self, page: int, data: bytes) -> None:
        """WriteNotepad (0x18): 32 bytes into notepad page 0..15."""
        if not 0 <= page <= 15 or len(data) != 32:
            raise ValueError("notepad page 0..15 and exactly 32 bytes")
        self._exchange(Instruction.WriteNotepad, bytes([page]) + data)

    def read_notepad(self, page: int) -> bytes:
        """ReadNotepad (0x19): the 32 bytes of notepad page 0..15."""
        if not 0 <= page <= 15:
            raise ValueError("notepad page 0..15")
        ack, _ = self._exchange(Instruction.ReadNotepad, bytes([page]))
        return ack.payload[1:33]

    def soft_reset(self) -> None:
        """SoftReset (0x3D): restart the module (the R503 sends 0x55 after the ack; the link
        skips that byte as it resyncs on the next header)."""
        self._exchange(Instruction.SoftReset, retries=0)

    def aura_led_config(self, control: int, speed: int, colour: int, count: int) -> None:
        """AuraLedConfig (0x35, R503): ring LED mode, speed, colour index and cycle count."""
        if not self.profile.quirks.aura_led:
            raise DeviceError(
                f"{self.profile.model} has no ring LED", device=DEVICE, code=ErrorCode.UNSUPPORTED
            )
        self._exchange(Instruction.AuraLedConfig, bytes([control, speed, colour, count]))

    def get_echo(self) -> bool:
        """GetEcho (0x53): True when the module answers 0x55 ("ready")."""
        ack, _ = self._exchange(Instruction.GetEcho, ok=frozenset({0x55}))
        return ack.confirm == 0x55

    def _page(self, page: int) -> int:
        if not 0 <= page < self.profile.library.library_size:
            raise ValueError(f"page {page} outside 0..{self.profile.library.library_size - 1}")
        return page

    # --- capture ----------------------------------------------------------------------------------

    def capture(
        self,
        deadline: float,
        cancelled: threading.Event | None = None,
        *,
        on_image: Callable[[], None] | None = None,
        extract: bool = False,
    ) -> CapturedImage:
        """Poll GenImg until a finger is captured (or ``deadline``), then UpImage it.

        ``on_image`` is called the moment GenImg reports the image in the sensor's image
        buffer, before the upload (the finger may be lifted then). With ``extract``, the image
        is also turned into a character file in char buffer 1 (Img2Tz, after the upload: the
        spec's "Image upload" says Img2Tz first leaves a black image) and read back (UpChar);
        an impression the sensor cannot extract leaves ``template`` None."""
        stop = cancelled or threading.Event()
        template: bytearray | None = None
        with self.exclusive():
            while True:
                if stop.is_set():
                    raise DeviceTimeout(
                        "capture cancelled", device=DEVICE, code=ErrorCode.CANCELLED
                    )
                if time.monotonic() >= deadline:
                    raise DeviceTimeout(
                        "no finger on the sensor before the deadline",
                        device=DEVICE,
                        code=ErrorCode.NO_FINGER,
                    )
                # GenImg and UpImage back to back under the link lock: nothing may touch the
                # image buffer in between.
                with self._lock:
                    if self.gen_img():
                        if on_image is not None:
                            on_image()
                        data, wire_s = self.up_image_raw()
                        received = time.monotonic()
                        if extract:
                            template = self._extract()
                        break
                stop.wait(self.config.capture_poll_s)
        image = unpack_image(data, self.profile.image.width, self.profile.image.height)
        return CapturedImage(image=image, wire_s=wire_s, received_at=received, template=template)

    @property
    def can_match(self) -> bool:
        """Whether this sensor extracts and matches on board (Img2Tz, UpChar, DownChar,
        Match): the 1:1 check of :meth:`match_templates`."""
        return all(
            self.profile.supports(i)
            for i in (
                Instruction.Img2Tz,
                Instruction.UpChar,
                Instruction.DownChar,
                Instruction.Match,
            )
        )

    def _extract(self) -> bytearray | None:
        """Img2Tz into char buffer 1 and UpChar it; None when the impression has too few
        features (a finger condition, not a device fault)."""
        if not self.can_match:
            return None
        try:
            self.img2tz(1)
        except DeviceStatusError as exc:
            if exc.status in _FINGER_CODES:
                return None
            raise
        return bytearray(self.up_char(1))

    def match_templates(
        self, probe: bytes | bytearray, references: Sequence[bytes | bytearray]
    ) -> list[int | None]:
        """1:1 on the sensor: ``probe`` into char buffer 1 (DownChar), then each reference
        into char buffer 2 and Match (0x03, "buffers 1 and 2"). The match score per
        reference, None where it does not match. Char buffer 1 is not changed by Match, so
        the probe goes down once."""
        scores: list[int | None] = []
        with self.exclusive(), self._downchar_packets() as size:
            self._down_char(1, bytes(probe), size)
            for ref in references:
                self._down_char(2, bytes(ref), size)
                scores.append(self.match())
        return scores

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the sensor for one capture session (re-entrant in the holding thread).

        A second session from another thread is refused at once with :class:`Busy`, instead
        of two captures interleaving their GenImg/UpImage on one image buffer.
        """
        if not self._session.acquire(blocking=False):
            raise Busy(
                "a fingerprint capture is already running",
                details={"device": DEVICE},
            )
        try:
            yield
        finally:
            self._session.release()

    @property
    def busy(self) -> bool:
        """True while a capture session holds the sensor."""
        if self._session.acquire(blocking=False):
            self._session.release()
            return False
        return True

    def wait_finger_removed(
        self, deadline: float, cancelled: threading.Event | None = None
    ) -> bool:
        """Poll GenImg until it reports no finger; False if the deadline passed first."""
        stop = cancelled or threading.Event()
        while time.monotonic() < deadline and not stop.is_set():
            ack, _ = self._exchange(
                Instruction.GenImg,
                ok=frozenset({Confirm.OK, Confirm.NO_FINGER, Confirm.IMAGE_FAIL}),
                timeout_s=self.config.command_timeout_s + self.profile.timing.capture_ms / 1000,
            )
            if ack.confirm == Confirm.NO_FINGER:
                return True
            stop.wait(self.config.capture_poll_s)
        return False

    def info(self) -> dict[str, Any]:
        """What status shows: profile, link settings and the last system parameters."""
        sp = self._sys
        return {
            "model": self.profile.model,
            "port": self.config.port,
            "connected": self.connected,
            "baud": self._baud,
            "packet_size": self._packet_size,
            "library_size": self.profile.library.library_size,
            "security_level": sp.security_level if sp else None,
            "retries": self.stats["retries"],
            "timeouts": self.stats["timeouts"],
            "connects": self.stats["connects"],
            "garbage_bytes": self.garbage_bytes,
            "stale_packets": self._link.stale_packets if self._link is not None else 0,
            "resyncs": self.stats["resyncs"],
            "busy": self.busy,
        }


def _buffer(buffer: int) -> int:
    if buffer not in (1, 2):
        raise ValueError(f"char buffer must be 1 or 2, got {buffer}")
    return buffer
