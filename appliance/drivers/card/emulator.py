"""Card emulator: a blank personalisable eMRTD applet behind vpcd's TCP protocol.

Two layers, like the driver: :class:`EmrtdApplet` is the pure card (APDU bytes in, response
bytes out; the JMRTD reference applet's personalisation commands, ICAO 9303 Part 11 BAC and
secure messaging), and :class:`VpcdCardEmulator` speaks vsmartcard's vpcd protocol: 2-byte
big-endian length + payload; a 1-byte payload is a control code (0 power off, 1 power on,
2 reset, 4 get ATR), anything longer is an APDU.

The applet answers every malformed APDU with a status word and never dies. Faults are injected
by the emulator: the card pulled on the N-th UPDATE BINARY, a write failure (6581) on the N-th
UPDATE BINARY, and a slow card (a delay before every answer).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import struct
import threading
import time
from dataclasses import dataclass

from ...errors import DeviceError, ProtocolError
from ...lds.files import FILE_FIDS
from ...lds.mrz import check_digit
from ...lds.tlv import parse_all
from . import apdu as A
from .profile import CardProfile
from .sm import (
    ChipSecureMessaging,
    chip_authenticate,
    derive_key,
    kseed_from_mrz,
    session_keys,
)

log = logging.getLogger(__name__)

INS_SELECT = 0xA4
INS_READ_BINARY = 0xB0
INS_UPDATE_BINARY = 0xD6
INS_CREATE_FILE = 0xE0
INS_PUT_DATA = 0xDA
INS_GET_CHALLENGE = 0x84
INS_EXTERNAL_AUTHENTICATE = 0x82
_MRZ_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789<")


class _Sw(Exception):
    """Internal control flow: answer this status word."""

    def __init__(self, sw: int) -> None:
        super().__init__(f"{sw:04X}")
        self.sw = sw


class EmrtdApplet:
    """The card's state and APDU processing. Thread-safe (one lock)."""

    def __init__(self, profile: CardProfile) -> None:
        self.profile = profile
        self._lock = threading.Lock()
        self.files: dict[int, bytearray] = {}
        self.bac_seed: tuple[str, str, str] | None = None
        self.aa_key: bytes | None = None
        self.locked = False
        self.refused_extended = 0  # extended-length APDUs refused (profile without them)
        self._allowed_fids = {FILE_FIDS[n] for n in profile.files if n in FILE_FIDS}
        self.reset()

    def reset(self) -> None:
        """Power cycle: transient state only (selection, challenge, SM session)."""
        self.app_selected = False
        self.selected: int | None = None
        self._rnd_ic: bytes | None = None
        self._sm: ChipSecureMessaging | None = None

    @property
    def used_memory(self) -> int:
        """EEPROM taken by files: contents plus the profile's per-file overhead."""
        return sum(len(f) + self.profile.file_overhead for f in self.files.values())

    def process(self, raw: bytes) -> bytes:
        """One APDU in, one response out. Never raises."""
        with self._lock:
            try:
                return self._process(raw)
            except Exception:  # the card must answer, whatever the bug
                log.exception("emulator: internal error on INS %s", raw[1:2].hex())
                return A.ResponseApdu(b"", A.SW_UNKNOWN).encode()

    def _process(self, raw: bytes) -> bytes:
        try:
            cmd = A.decode_command(raw)
        except ProtocolError:
            return A.SW_WRONG_LENGTH.to_bytes(2, "big")
        if cmd.extended and not self.profile.extended_length:
            # A card stock without extended Lc/Le (ISO/IEC 7816-4 §5.1) rejects the encoding.
            self.refused_extended += 1
            return A.SW_WRONG_LENGTH.to_bytes(2, "big")
        if cmd.cla & 0x0C == 0x0C:
            sm = self._sm
            if sm is None:
                return A.SW_SM_OBJECTS_INCORRECT.to_bytes(2, "big")
            try:
                plain = sm.unwrap(cmd)
            except ProtocolError:
                self._sm = None  # Part 11 §9.8.7: an SM error ends the session
                return A.SW_SM_OBJECTS_INCORRECT.to_bytes(2, "big")
            resp = self._dispatch(plain, protected=True)
            return sm.wrap(resp).encode()
        if cmd.cla != 0x00:
            return A.SW_CLA_NOT_SUPPORTED.to_bytes(2, "big")
        if self.locked and self._sm is not None and cmd.ins != INS_SELECT:
            self._sm = None  # a plain APDU aborts secure messaging
        return self._dispatch(cmd, protected=False).encode()

    def _dispatch(self, cmd: A.CommandApdu, protected: bool) -> A.ResponseApdu:
        handlers = {
            INS_SELECT: self._select,
            INS_READ_BINARY: self._read_binary,
            INS_UPDATE_BINARY: self._update_binary,
            INS_CREATE_FILE: self._create_file,
            INS_PUT_DATA: self._put_data,
            INS_GET_CHALLENGE: self._get_challenge,
            INS_EXTERNAL_AUTHENTICATE: self._external_authenticate,
        }
        h = handlers.get(cmd.ins)
        if h is None:
            return A.ResponseApdu(b"", A.SW_INS_NOT_SUPPORTED)
        try:
            return A.ResponseApdu(h(cmd, protected), A.SW_OK)
        except _Sw as sw:
            return A.ResponseApdu(b"", sw.sw)

    # -- commands ----------------------------------------------------------------------------

    def _need_access(self, protected: bool) -> None:
        """After locking, files are readable only under BAC (spec)."""
        if self.locked and not protected:
            raise _Sw(A.SW_SECURITY_STATUS)

    def _select(self, cmd: A.CommandApdu, protected: bool) -> bytes:
        if cmd.p1 == 0x04:  # by DF name
            if cmd.data != self.profile.aid_bytes:
                raise _Sw(A.SW_FILE_NOT_FOUND)
            self.app_selected = True
            self.selected = None
            if not protected:
                self._sm = None
            return b""
        if cmd.p1 not in (0x00, 0x02) or len(cmd.data) != 2:
            raise _Sw(A.SW_WRONG_P1P2 if len(cmd.data) == 2 else A.SW_WRONG_LENGTH)
        if not self.app_selected:
            raise _Sw(A.SW_FILE_NOT_FOUND)
        self._need_access(protected)
        fid = int.from_bytes(cmd.data, "big")
        if fid not in self.files:
            raise _Sw(A.SW_FILE_NOT_FOUND)
        self.selected = fid
        return b""

    def _current(self, cmd: A.CommandApdu) -> tuple[bytearray, int]:
        if not self.app_selected:
            raise _Sw(A.SW_CONDITIONS)
        if cmd.p1 & 0x80:  # short EF identifier in P1, offset in P2 (7816-4 §7.2.2)
            sfi = cmd.p1 & 0x1F
            fid = next((f for f in self.files if f & 0x1F == sfi and f >> 8 == 0x01), None)
            if fid is None:
                raise _Sw(A.SW_FILE_NOT_FOUND)
            self.selected = fid
            return self.files[fid], cmd.p2
        if self.selected is None:
            raise _Sw(A.SW_CONDITIONS)
        return self.files[self.selected], (cmd.p1 << 8) | cmd.p2

    def _read_binary(self, cmd: A.CommandApdu, protected: bool) -> bytes:
        self._need_access(protected)
        f, offset = self._current(cmd)
        if cmd.ne is None:
            raise _Sw(A.SW_WRONG_LENGTH)
        if offset >= len(f):
            raise _Sw(A.SW_WRONG_P1P2)
        limit = self.profile.max_read_short
        if cmd.ne > 256 and self.profile.extended_length:
            limit = self.profile.max_read_extended
        return bytes(f[offset : offset + min(cmd.ne, limit)])

    def _update_binary(self, cmd: A.CommandApdu, protected: bool) -> bytes:
        if self.locked:
            raise _Sw(A.SW_SECURITY_STATUS)
        f, offset = self._current(cmd)
        limit = self.profile.max_update_short
        if len(cmd.data) > 255:
            if not self.profile.extended_length:
                raise _Sw(A.SW_WRONG_LENGTH)
            limit = self.profile.max_update_extended
        if not cmd.data or len(cmd.data) > limit:
            raise _Sw(A.SW_WRONG_LENGTH)
        if offset + len(cmd.data) > len(f):
            raise _Sw(A.SW_NOT_ENOUGH_MEMORY)
        f[offset : offset + len(cmd.data)] = cmd.data
        return b""

    def _create_file(self, cmd: A.CommandApdu, protected: bool) -> bytes:
        if self.locked:
            raise _Sw(A.SW_SECURITY_STATUS)
        if not self.app_selected:
            raise _Sw(A.SW_CONDITIONS)
        d = cmd.data
        # 63 04 <size 2> <FID 2> (spec, CREATE FILE)
        if len(d) != 6 or d[0] != 0x63 or d[1] != 0x04:
            raise _Sw(A.SW_WRONG_DATA)
        size = int.from_bytes(d[2:4], "big")
        fid = int.from_bytes(d[4:6], "big")
        if fid not in self._allowed_fids:
            raise _Sw(A.SW_WRONG_DATA)
        if fid in self.files:
            raise _Sw(A.SW_FILE_EXISTS)
        if size == 0 or size > self.profile.max_file_size:
            raise _Sw(A.SW_WRONG_DATA)
        if self.used_memory + size + self.profile.file_overhead > self.profile.memory:
            raise _Sw(A.SW_NOT_ENOUGH_MEMORY)
        self.files[fid] = bytearray(size)
        return b""

    def _put_data(self, cmd: A.CommandApdu, protected: bool) -> bytes:
        if self.locked:
            raise _Sw(A.SW_SECURITY_STATUS)
        p1p2 = (cmd.p1 << 8) | cmd.p2
        if p1p2 == int(self.profile.lock_p1p2, 16):
            if cmd.data:
                raise _Sw(A.SW_WRONG_LENGTH)
            if self.bac_seed is None:
                raise _Sw(A.SW_CONDITIONS)  # locking without a BAC seed would brick the card
            self.locked = True
            self._sm = None
            self.selected = None
            return b""
        if p1p2 == int(self.profile.put_data_bac_seed, 16):
            self.bac_seed = _parse_bac_seed(cmd.data)
            return b""
        if p1p2 in (0x0060, 0x0061):  # active authentication key parts: stored, unused here
            if not cmd.data:
                raise _Sw(A.SW_WRONG_LENGTH)
            self.aa_key = cmd.data
            return b""
        raise _Sw(A.SW_WRONG_P1P2)

    def _get_challenge(self, cmd: A.CommandApdu, protected: bool) -> bytes:
        if cmd.ne != self.profile.challenge_length or cmd.p1 or cmd.p2:
            raise _Sw(A.SW_WRONG_LENGTH)
        if self.bac_seed is None:
            raise _Sw(A.SW_CONDITIONS)
        self._rnd_ic = secrets.token_bytes(8)
        return self._rnd_ic

    def _external_authenticate(self, cmd: A.CommandApdu, protected: bool) -> bytes:
        rnd_ic, self._rnd_ic = self._rnd_ic, None
        if rnd_ic is None or self.bac_seed is None:
            raise _Sw(A.SW_CONDITIONS)
        if len(cmd.data) != 40:
            raise _Sw(A.SW_WRONG_LENGTH)
        kenc, kmac = applet_bac_keys(*self.bac_seed)
        k_ic = secrets.token_bytes(16)
        try:
            resp, rnd_ifd, k_ifd = chip_authenticate(kenc, kmac, cmd.data, rnd_ic, k_ic)
        except ProtocolError:
            self._sm = None
            raise _Sw(A.SW_SECURITY_STATUS) from None
        self._sm = ChipSecureMessaging(session_keys(k_ifd, k_ic, rnd_ic, rnd_ifd))
        return resp


def applet_bac_keys(document_number: str, birth: str, expiry: str) -> tuple[bytes, bytes]:
    """(Kenc, Kmac) as a personalised applet derives them from its PUT DATA seed: the three
    values exactly as received, each followed by its check digit (ICAO 9303-3 §4.9), SHA-1,
    first 16 bytes (9303-11 §9.7.1). Like the JMRTD reference applet, a card pads nothing: a
    writer that sends a short document number without its ``<`` fillers gets a card whose keys
    no ICAO reader derives. Deliberately independent of the reader side's
    :func:`appliance.lds.mrz.bac_mrz_information`, so a test catches the two disagreeing."""
    info = "".join(v + check_digit(v) for v in (document_number, birth, expiry))
    seed = kseed_from_mrz(info)
    return derive_key(seed, 1), derive_key(seed, 2)


def _parse_bac_seed(data: bytes) -> tuple[str, str, str]:
    """``62 { 04 docNo } { 04 birth } { 04 expiry }`` (spec, PUT DATA)."""
    try:
        outer = parse_all(data)
        if len(outer) != 1 or outer[0][0] != 0x62:
            raise _Sw(A.SW_WRONG_DATA)
        parts = parse_all(outer[0][1])
        if len(parts) != 3 or any(t != 0x04 for t, _ in parts):
            raise _Sw(A.SW_WRONG_DATA)
        doc, birth, expiry = (v.decode("ascii") for _, v in parts)
        if not doc or any(c not in _MRZ_ALPHABET for c in doc + birth + expiry):
            raise _Sw(A.SW_WRONG_DATA)
        if len(birth) != 6 or len(expiry) != 6:
            raise _Sw(A.SW_WRONG_DATA)
    except (ProtocolError, UnicodeDecodeError, ValueError):
        raise _Sw(A.SW_WRONG_DATA) from None
    return doc, birth, expiry


# --- vpcd link --------------------------------------------------------------------------------


@dataclass
class Faults:
    """Fault injection. Counters are 1-based over UPDATE BINARY commands seen."""

    pull_on_update: int | None = None  # drop the connection instead of answering the N-th
    fail_on_update: int | None = None  # answer 6581 (memory failure) to the N-th
    corrupt_on_update: int | None = None  # silently store the N-th with its last byte flipped
    delay_s: float = 0.0  # answer every APDU this much later (slow card)
    # T=0 style transport (ISO/IEC 7816-3 §10.3.5 / 7816-4 §5.3.4): answer data as 61xx and
    # hand it out through GET RESPONSE; answer a READ BINARY whose Le runs past the end of the
    # file with 6Cxx (the exact length) instead of the shorter data.
    get_response: bool = False
    exact_le: bool = False


class VpcdCardEmulator:
    """Connect to vpcd as its virtual ICC and serve an :class:`EmrtdApplet`."""

    def __init__(
        self,
        applet: EmrtdApplet,
        host: str = "127.0.0.1",
        port: int = 35963,
        faults: Faults | None = None,
    ) -> None:
        self.applet = applet
        self.host = host
        self.port = port
        self.faults = faults or Faults()
        self.updates_seen = 0
        self.apdus_seen = 0
        self.pulled = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._pending = b""

    # -- lifecycle ---------------------------------------------------------------------------

    def connect(self, timeout: float = 5.0) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.settimeout(None)
        # spec "Latency trap": vpcd writes length and APDU in two sends; without NODELAY and
        # QUICKACK each APDU costs ~40 ms of Nagle + delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self.pulled.clear()
        self._stop.clear()

    def start(self, timeout: float = 5.0) -> VpcdCardEmulator:
        """Connect and serve in a daemon thread (tests, demos)."""
        self.connect(timeout)
        self._thread = threading.Thread(target=self.serve, name="vpcd-card", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the connection (for vpcd: the card is removed). Idempotent."""
        self._stop.set()
        self._close()
        t, self._thread = self._thread, None
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5)

    def pull(self) -> None:
        """Simulate the citizen pulling the card out now."""
        self.stop()

    def _close(self) -> None:
        s, self._sock = self._sock, None
        if s is not None:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
            self.pulled.set()

    # -- protocol ----------------------------------------------------------------------------

    def _recv_exact(self, sock: socket.socket, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            if hasattr(socket, "TCP_QUICKACK"):
                # Re-armed before every receive: the kernel clears it after each ACK.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            chunk = sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def serve(self) -> None:
        """Serve until vpcd closes the connection, :meth:`stop`, or a pull fault."""
        sock = self._sock
        if sock is None:
            raise DeviceError("emulator is not connected", device="card")
        try:
            while not self._stop.is_set():
                head = self._recv_exact(sock, 2)
                if head is None:
                    break
                (length,) = struct.unpack(">H", head)
                msg = self._recv_exact(sock, length) if length else b""
                if msg is None:
                    break
                reply = self._handle(msg)
                if reply is None:
                    if self.pulled.is_set() or self._stop.is_set():
                        break
                    continue
                sock.sendall(struct.pack(">H", len(reply)) + reply)
        except OSError as exc:
            if not self._stop.is_set():
                log.info("emulator: connection to vpcd ended: %s", exc)
        finally:
            self._close()

    def _handle(self, msg: bytes) -> bytes | None:
        if len(msg) == 1:
            code = msg[0]
            if code in (0, 1, 2):  # power off / on / reset: transient state is lost
                self.applet.reset()
                return None
            if code == 4:
                return self.applet.profile.atr_bytes
            log.warning("emulator: unknown vpcd control code %d", code)
            return None
        if len(msg) == 0:
            return None
        self.apdus_seen += 1
        if self.faults.delay_s:
            time.sleep(self.faults.delay_s)
        if len(msg) >= 2 and msg[1] == INS_UPDATE_BINARY:
            self.updates_seen += 1
            if self.faults.pull_on_update == self.updates_seen:
                log.info("emulator: fault: card pulled on UPDATE BINARY #%d", self.updates_seen)
                self._stop.set()
                self._close()
                return None
            if self.faults.fail_on_update == self.updates_seen:
                log.info("emulator: fault: 6581 on UPDATE BINARY #%d", self.updates_seen)
                return A.SW_MEMORY_FAILURE.to_bytes(2, "big")
            if self.faults.corrupt_on_update == self.updates_seen and msg[0] == 0x00:
                # A plain UPDATE BINARY (case 3) ends with its data: a weak EEPROM cell.
                log.info("emulator: fault: corrupting UPDATE BINARY #%d", self.updates_seen)
                msg = msg[:-1] + bytes((msg[-1] ^ 0x01,))
        if self.faults.get_response and msg[0] & 0x0C == 0 and msg[1] == 0xC0:
            return self._get_response(msg)
        resp = self.applet.process(msg)
        if self.faults.exact_le and len(msg) == 5 and msg[1] == INS_READ_BINARY:
            le = msg[4] or 256
            if resp[-2:] == b"\x90\x00" and len(resp) - 2 < le:
                return bytes((0x6C, len(resp) - 2))
        if self.faults.get_response and len(resp) > 2 and resp[-2:] == b"\x90\x00":
            self._pending = resp[:-2]
            return bytes((0x61, len(self._pending) & 0xFF))
        return resp

    def _get_response(self, msg: bytes) -> bytes:
        """GET RESPONSE ``00 C0 00 00 Le`` for data announced with 61xx."""
        if not self._pending:
            return A.SW_CONDITIONS.to_bytes(2, "big")
        le = (msg[4] or 256) if len(msg) == 5 else 256
        part, self._pending = self._pending[:le], self._pending[le:]
        if self._pending:
            return part + bytes((0x61, len(self._pending) & 0xFF))
        return part + b"\x90\x00"
