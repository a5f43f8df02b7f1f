"""A private pcscd + vpcd stack for tests, benchmarks and demos (no hardware, no system pcscd).

What holds for pcscd (pcsc-lite) and vsmartcard's vpcd on Debian 12:

* pcscd 1.9.9 ignores ``PCSCLITE_CSOCK_NAME``, so a second daemon refuses to start on the
  default socket. We use *socket activation* instead: we create and bind the Unix socket
  ourselves, hand it to pcscd as fd 3 with ``LISTEN_FDS=1`` and ``LISTEN_PID=<pcscd's pid>``
  (``sh -c 'LISTEN_PID=$$ exec pcscd ...'`` keeps the pid across ``exec``), and point clients at
  it with ``PCSCLITE_CSOCK_NAME``. Several stacks can run side by side.
* pcscd loads vpcd from a private ``reader.conf.d`` directory (``-c DIR``) that names a free
  TCP port. vpcd opens two slots: ``port`` and ``port + 1`` (readers "Virtual PCD 00 00" and
  "Virtual PCD 00 01"); both must be free.
* The emulator must not connect before vpcd listens, and must not *probe* the port (vpcd would
  take the probe for a card): :meth:`PcscTestStack.wait_listening` reads ``/proc/net/tcp``.

IMPORTANT for callers: libpcsclite reads ``PCSCLITE_CSOCK_NAME`` once per process, before its
first call. Export :attr:`PcscTestStack.env` into ``os.environ`` before the first pyscard call
(:meth:`PcscTestStack.export_env`), or pass it to a subprocess (the daemon under test).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from ...errors import DeviceError, DeviceTimeout
from ...procs import die_with_parent

if TYPE_CHECKING:
    from .emulator import VpcdCardEmulator

log = logging.getLogger(__name__)

VPCD_LIBPATH = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so"
PCSCD = "/usr/sbin/pcscd"
SOCKET_ENV = "PCSCLITE_CSOCK_NAME"


def _port_pair_free(port: int) -> bool:
    """True when TCP ``port`` and ``port + 1`` can both be bound on all interfaces."""
    socks: list[socket.socket] = []
    try:
        for p in (port, port + 1):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("", p))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def free_port_pair() -> int:
    """A TCP port ``p`` such that ``p`` and ``p + 1`` are free (vpcd uses one per slot)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            port = int(s.getsockname()[1])
        if port < 65534 and _port_pair_free(port):
            return port
    raise DeviceError("no free TCP port pair for vpcd", device="card")


def tcp_listening(port: int) -> bool:
    """Whether some socket listens on TCP ``port`` (IPv4 or IPv6), read from ``/proc/net``.

    Reading the kernel's table instead of connecting matters: vpcd takes any connection for a
    card (an emulator started before vpcd listens exits at once: seen with vsmartcard 0.9).
    """
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as fh:
                next(fh, None)
                for line in fh:
                    fields = line.split()
                    # fields[1] local address "HEX:PORT", fields[3] state; 0A = LISTEN.
                    if len(fields) > 3 and fields[1].endswith(want) and fields[3] == "0A":
                        return True
        except FileNotFoundError:
            continue
    return False


class PcscTestStack:
    """Start a private pcscd with vpcd on a free port; stop it and clean up.

    Use as a context manager. Attributes once started: ``socket_path`` (the pcscd socket),
    ``vpcd_port`` (the emulator connects here for reader slot 0), ``env`` (what a client
    process needs), ``reader_name`` (the PC/SC name of slot 0).
    """

    def __init__(
        self,
        *,
        vpcd_port: int | None = None,
        workdir: Path | None = None,
        debug: bool = False,
        die_with_parent: bool = False,
    ) -> None:
        # die_with_parent: pcscd gets SIGTERM when the starting thread dies, even by kill -9
        # (the daemon's simulated kit uses it; tests stop the stack themselves).
        self._die_with_parent = die_with_parent
        self._requested_port = vpcd_port
        self._workdir_arg = workdir
        self._debug = debug
        self._tmp: Path | None = None
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Path | None = None
        self.socket_path: Path | None = None
        self.vpcd_port = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> PcscTestStack:
        for exe in (PCSCD, VPCD_LIBPATH):
            if not Path(exe).exists():
                raise DeviceError(
                    f"{exe} is missing: install Debian's pcscd and vsmartcard-vpcd", device="card"
                )
        self._tmp = Path(tempfile.mkdtemp(prefix="pcscstack-", dir=self._workdir_arg))
        conf = self._tmp / "reader.conf.d"
        conf.mkdir()
        self.vpcd_port = self._requested_port or free_port_pair()
        # reader.conf format (pcscd(8)): DEVICENAME "/dev/null:PORT" makes vpcd listen (server
        # mode) on PORT for slot 0 and PORT+1 for slot 1.
        (conf / "vpcd").write_text(
            'FRIENDLYNAME "Virtual PCD"\n'
            f"DEVICENAME   /dev/null:0x{self.vpcd_port:04X}\n"
            f"LIBPATH      {VPCD_LIBPATH}\n"
            f"CHANNELID    0x{self.vpcd_port:04X}\n",
            encoding="ascii",
        )
        # Every pcscd instance writes /run/pcscd/pcscd.pid, so the directory must exist.
        Path("/run/pcscd").mkdir(parents=True, exist_ok=True)
        # AF_UNIX paths are limited to 107 bytes (unix(7)): a deep work directory (a kiosk's
        # state dir, pytest's tmp) would not fit, so the socket lives in its own short dir.
        self._sock_dir = Path(tempfile.mkdtemp(prefix="pcsc-"))
        self.socket_path = self._sock_dir / "pcscd.comm"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.socket_path))
        sock.listen(64)
        # pcscd's own socket is world-connectable too; a test stack run by root must accept
        # a daemon under test that runs as another user.
        os.chmod(self.socket_path, 0o666)  # noqa: S103
        self._sock = sock
        fd = sock.fileno()
        flags = "-f -d -a" if self._debug else "-f"
        # sd_listen_fds(3): the passed socket must be fd 3 and LISTEN_PID the daemon's own pid;
        # `exec` keeps the shell's pid, and the redirection moves our fd to 3 (bash, because dash
        # only parses single-digit descriptors in redirections).
        move = "" if fd == 3 else f" 3<&{fd} {fd}<&-"
        script = f'export LISTEN_PID=$$ LISTEN_FDS=1; exec {PCSCD} {flags} -c "$1"{move}'
        self._log_file = self._tmp / "pcscd.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
        with open(self._log_file, "wb") as logfh:
            self._proc = subprocess.Popen(
                ["/bin/bash", "-c", script, "bash", str(conf)],
                pass_fds=(fd,),
                stdin=subprocess.DEVNULL,
                stdout=logfh,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent if self._die_with_parent else None,  # noqa: PLW1509
            )
        # pcscd runs in its own session (a test's Ctrl-C must not reach it first): make sure
        # an interpreter that exits on an exception still stops it.
        atexit.register(self.stop)
        try:
            self.wait_listening(timeout)
        except BaseException:
            self.stop()
            raise
        log.info("pcsc test stack up: socket %s, vpcd port %d", self.socket_path, self.vpcd_port)
        return self

    def wait_listening(self, timeout: float = 10.0) -> None:
        """Block until vpcd listens on its port (pcscd loaded the driver)."""
        deadline = time.monotonic() + timeout
        while not tcp_listening(self.vpcd_port):
            if self._proc is not None and self._proc.poll() is not None:
                raise DeviceError(
                    f"pcscd exited with {self._proc.returncode}: {self.log_tail()}",
                    device="card",
                )
            if time.monotonic() > deadline:
                raise DeviceTimeout(
                    f"vpcd did not listen on port {self.vpcd_port} within {timeout} s",
                    device="card",
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop pcscd, close and unlink the socket, remove the work directory. Idempotent."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        sock_dir = getattr(self, "_sock_dir", None)
        if sock_dir is not None:
            shutil.rmtree(sock_dir, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> PcscTestStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what clients need -------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def env(self) -> dict[str, str]:
        """Environment a PC/SC client process needs to reach this stack."""
        if self.socket_path is None:
            raise DeviceError("test stack not started", device="card")
        return {SOCKET_ENV: str(self.socket_path)}

    def export_env(self) -> None:
        """Put :attr:`env` into ``os.environ``: call before this process's first pyscard call."""
        os.environ.update(self.env)

    @property
    def reader_name(self) -> str:
        """PC/SC name of slot 0 (the one listening on :attr:`vpcd_port`)."""
        return "Virtual PCD 00 00"

    def log_tail(self, n: int = 2000) -> str:
        if self._log_file is None or not self._log_file.exists():
            return ""
        return self._log_file.read_bytes()[-n:].decode("utf-8", "replace")


class SimulatedCard:
    """A private stack with the emulated blank card inserted: what ``[simulation] card = true``
    and demos need in one object.

    :meth:`start` exports ``PCSCLITE_CSOCK_NAME`` into this process, so call it before the
    process's first pyscard call (before the daemon creates its devices). ``insert_blank()``
    swaps in a fresh blank card (the next citizen's card) without a new connection.
    """

    def __init__(self, profile: str = "cccd-applet", profile_dir: Path | None = None) -> None:
        self._profile_name = profile
        self._profile_dir = profile_dir
        self.stack = PcscTestStack()
        self.emulator: VpcdCardEmulator | None = None

    def start(self) -> SimulatedCard:
        from .emulator import EmrtdApplet, VpcdCardEmulator
        from .profile import load_profile

        profile = load_profile(self._profile_name, self._profile_dir)
        self.stack.start()
        self.stack.export_env()
        try:
            self.emulator = VpcdCardEmulator(
                EmrtdApplet(profile), port=self.stack.vpcd_port
            ).start()
        except BaseException:
            self.stack.stop()
            raise
        return self

    def insert_blank(self) -> None:
        from .emulator import EmrtdApplet

        if self.emulator is None:
            raise DeviceError("simulated card not started", device="card")
        self.emulator.applet = EmrtdApplet(self.emulator.applet.profile)

    def stop(self) -> None:
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None
        self.stack.stop()
