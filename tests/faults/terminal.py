"""A console script run in a pseudo-terminal, as a user runs it: Ctrl+C is the byte 0x03 typed
into the terminal, which the kernel's terminal driver turns into SIGINT for the foreground
process group, whatever that group holds."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path


class Terminal:
    """``command`` in a new session whose controlling terminal is a fresh pty."""

    def __init__(self, command: Sequence[str], cwd: Path, env: dict[str, str] | None = None):
        executable = shutil.which(command[0])
        assert executable, f"{command[0]} is not on PATH; install the package (pip install -e .)"
        self._master, slave = os.openpty()
        self.proc = subprocess.Popen(
            [executable, *command[1:]], cwd=cwd, env=env, stdin=slave, stdout=slave,
            stderr=slave, start_new_session=True,
            # The new session's first terminal opened becomes its controlling terminal.
            preexec_fn=lambda: os.close(os.open(os.ttyname(0), os.O_RDWR)),
        )
        os.close(slave)
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # EIO once every process holding the pty has exited
                return
            if not data:
                return
            self._chunks.append(data)

    @property
    def output(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")

    def press_ctrl_c(self) -> None:
        os.write(self._master, b"\x03")

    def close(self, timeout: float = 30.0) -> int:
        """Wait for the process (killing its group past ``timeout``); returns its exit code."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._reader.join(5)
        if self._master >= 0:
            os.close(self._master)
            self._master = -1
        return int(self.proc.returncode)
