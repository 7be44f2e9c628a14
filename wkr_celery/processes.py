"""Child processes the framework supervises (workers, decentralize units, REST, Flower).

Every child asks the kernel for SIGTERM when its parent dies, so none keeps running
unsupervised, and every stop is bounded: SIGTERM, wait until a deadline, then SIGKILL.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import time

__all__ = ["die_with_parent", "send", "wait_or_kill"]

log = logging.getLogger("wkr_celery.processes")

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """``preexec_fn``: the child gets SIGTERM (a graceful stop) when its parent dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def send(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    """Signal ``proc`` if it still runs; a process that just exited is not an error."""
    if proc is not None and proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def wait_or_kill(proc: subprocess.Popen[bytes], deadline: float, what: str) -> int:
    """Wait for ``proc`` until ``deadline`` (monotonic); past it, kill it. Returns its exit code."""
    try:
        return proc.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        log.error("%s did not stop in time; killing it", what)
        proc.kill()
        return proc.wait(10)
