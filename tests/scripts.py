"""The user's door: console scripts found on the venv's PATH, run from the folder the doc names.

A console script's ``sys.path`` starts with its own ``bin/`` folder, not the folder it is typed
in, so running it this way (and not as ``python -m`` with ``PYTHONPATH`` set) is what proves
that ``cd examples && wkr-… module.Class`` finds ``module``.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import shutil
import subprocess
import sys
import termios
import threading
from collections.abc import Sequence
from pathlib import Path

__all__ = ["BIN", "PtyProcess", "script", "user_env"]

#: The venv's ``bin/``: where ``pip install`` put the console scripts and ``python``.
BIN = Path(sys.executable).parent


def script(name: str) -> str:
    """The absolute path of console script ``name``; fails loudly when it is not installed."""
    found = shutil.which(name, path=str(BIN))
    if found is None:
        raise AssertionError(f"console script {name!r} is not in {BIN}: pip install -e . first")
    return found


def user_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a user whose venv is active: its ``bin/`` first, no ``PYTHONPATH``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(BIN.parent)
    return {**env, **(extra or {})}


class PtyProcess:
    """``argv`` in a new session whose controlling terminal is a fresh pseudo-terminal, as a
    user's shell runs a command: Ctrl+C is the byte 0x03 typed into it, which the kernel's
    terminal driver turns into SIGINT for the foreground process group, whatever it holds."""

    def __init__(self, argv: Sequence[str], cwd: Path, env: dict[str, str] | None) -> None:
        self._master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            list(argv), cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
            start_new_session=True, preexec_fn=_take_terminal)
        os.close(slave)
        self._hung_up = threading.Event()
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        master = self._master  # closing sets the attribute to -1; this thread keeps its fd
        while not self._hung_up.is_set():
            try:
                if not select.select([master], [], [], 0.1)[0]:
                    continue
                chunk = os.read(master, 65536)
            except (OSError, ValueError):  # EIO once every process holding it has exited
                return
            if not chunk:
                return
            self._chunks.append(chunk)

    @property
    def output(self) -> str:
        """What the terminal showed so far."""
        return b"".join(self._chunks).decode(errors="replace").replace("\r\n", "\n")

    def press_ctrl_c(self) -> None:
        if self.proc.poll() is None and self._master >= 0:
            os.write(self._master, b"\x03")

    def hang_up(self) -> None:
        """Close the terminal, as closing its window or losing its SSH session does: the
        kernel sends SIGHUP to the session leader, and the terminal reads and writes fail
        from then on. (The reader stops first: a read in progress would keep it open.)"""
        self._hung_up.set()
        self._reader.join(5)
        self._close_terminal()

    def _close_terminal(self) -> None:
        self._reader.join(5)  # it ends by itself once no process holds the terminal
        # A background process (`run_script.sh start`) may hold it for good: the reader is
        # told to stop before its fd is closed under it.
        self._hung_up.set()
        self._reader.join(5)
        if self._master >= 0:
            try:
                os.close(self._master)
            except OSError:
                pass
            self._master = -1


def _take_terminal() -> None:
    """In the child, after setsid: make the pty on stdin the controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
