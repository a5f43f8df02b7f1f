"""Child processes that must not outlive their parent (simulators, a private pcscd).

``die_with_parent`` is a ``preexec_fn`` that asks the kernel to send SIGKILL to the child when
the thread that started it dies (prctl(2), PR_SET_PDEATHSIG), so even ``kill -9`` of the daemon
leaves no emulator or pcscd behind. Start such children from the main thread: the signal
follows the *thread*, not the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import signal

PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def die_with_parent() -> None:
    # SIGKILL, not SIGTERM: a simulator blocked writing to a pty nobody reads any more would
    # never act on SIGTERM (seen in the enrollment fault runs: 5-7 orphans per 100 kills).
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
