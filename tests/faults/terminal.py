"""A console script run in a pseudo-terminal, as a user runs it: Ctrl+C is the byte 0x03 typed
into the terminal, which the kernel's terminal driver turns into SIGINT for the foreground
process group, whatever that group holds."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis as redis_py

from tests.helpers import ROOT, free_port, local_redis, wait_until
from tests.scripts import PtyProcess, script
from wkr_celery.client import WKRClient


class Terminal(PtyProcess):
    """``command`` (a console script or program on PATH) in a terminal of its own."""

    def __init__(self, command: Sequence[str], cwd: Path, env: dict[str, str] | None = None):
        executable = shutil.which(command[0])
        assert executable, f"{command[0]} is not on PATH; install the package (pip install -e .)"
        super().__init__([executable, *command[1:]], cwd, env)

    def close(self, timeout: float = 30.0) -> int:
        """Wait for the process (killing its group past ``timeout``); returns its exit code."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._close_terminal()
        return int(self.proc.returncode)


class TerminalService:
    """``wkr-serving-start`` as typed in a terminal, on embedded Redis ports of its own, two
    workers, logging to ``<tmp_path>/logs``."""

    def __init__(self, tmp_path: Path, worker: str, *extra: str,
                 env: dict[str, str] | None = None) -> None:
        self.name = f"f{uuid.uuid4().hex[:10]}"
        self.port_in, self.port_out = free_port(), free_port()
        self.log_dir = tmp_path / "logs"
        self.args = [worker, "-name", self.name, "-port_in", str(self.port_in),
                     "-port_out", str(self.port_out), "-num_worker", "2", "-batch_size", "8",
                     "-log_dir", str(self.log_dir), *extra]
        self.env = {**os.environ, **(env or {})}
        self.terminals: list[Terminal] = []
        self.clients: list[WKRClient] = []

    def start(self, wait: bool = True, nohup: bool = False, cwd: Path = ROOT) -> Terminal:
        """Typed in ``cwd`` (the project folder, where ``workers`` is); with ``nohup`` in front
        (coreutils' own, which ignores SIGHUP and execs the script) when asked."""
        command = ["wkr-serving-start", *self.args]
        if nohup:
            command = ["nohup", script("wkr-serving-start"), *self.args]
        terminal = Terminal(command, cwd=cwd, env=self.env)
        self.terminals.append(terminal)
        if not wait:
            return terminal
        try:
            wait_until(self.serving, 60, what="the service to serve")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; terminal:\n{terminal.output[-4000:]}") from None
        return terminal

    def serving(self) -> bool:
        try:
            with local_redis(self.port_in, socket_timeout=1) as probe:
                return len(probe.keys(f"wkr:{self.name}:hb:*")) == 2
        except redis_py.RedisError:
            return False

    def client(self, **kwargs: Any) -> WKRClient:
        kwargs.setdefault("name", self.name)
        kwargs.setdefault("connect_timeout", 30)
        client = WKRClient(broker_url=f"redis://127.0.0.1:{self.port_in}/0",
                           result_url=f"redis://127.0.0.1:{self.port_out}/0", **kwargs)
        self.clients.append(client)
        return client

    def log(self) -> str:
        path = self.log_dir / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def redis_answers(self, port: int) -> bool:
        try:
            with local_redis(port, socket_timeout=1, socket_connect_timeout=1) as probe:
                return bool(probe.ping())
        except redis_py.AuthenticationError:
            return True  # a Redis answers, with a password we were not given
        except redis_py.RedisError:
            return False

    def pids(self, pattern: str) -> list[int]:
        """Pids the log names in lines matching ``pattern`` with a ``(?P<pid>…)`` group."""
        return [int(m.group("pid")) for m in re.finditer(pattern, self.log())]

    def close(self) -> None:
        """Stop what still runs the way a user would (Ctrl+C), then reap it."""
        for client in self.clients:
            client.close()
        for terminal in self.terminals:
            if terminal.proc.poll() is None:
                terminal.press_ctrl_c()
            terminal.close(30)
