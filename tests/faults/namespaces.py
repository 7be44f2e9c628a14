"""Hosts made of Linux network namespaces, for tests of one service spread over several hosts.

Each host is a network namespace with one veth into a bridge that lives in a namespace of its
own, an address on a private subnet and no other route: traffic stays between the namespaces
the test made, and the root namespace's network is never touched. A host's processes also get
a UTS namespace of their own, so each host has its own hostname, as real hosts do (Celery node
names and worker heartbeats carry it). :meth:`Network.close` kills every process of every host
and deletes every namespace (the veths and the bridge go with them); the fixture that makes a
network calls it also when the test fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.helpers import ROOT, wait_until
from wkr_celery.redis_embedded import redis_server_binary

SUBNET = "10.213.0"
REDIS_PORT = 6379
_IP_TIMEOUT = 15.0


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here (so the tests skip), or None: then they must work."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CI runs the suite as root)"
    missing = [tool for tool in ("ip", "unshare", "hostname") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found (iproute2, util-linux, hostname)"
    return None


def ip(*args: str) -> str:
    """Run ``ip args``; a failure fails the test loudly with what ``ip`` said."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=_IP_TIMEOUT)
    if done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)} failed ({done.returncode}): "
                             f"{done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


@dataclass
class Host:
    """One simulated host: a network namespace, its address, its own hostname."""

    name: str
    netns: str
    address: str
    log_dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def hostname(self) -> str:
        return self.netns

    def popen(self, argv: Sequence[str], *, log: str, env: dict[str, str] | None = None,
              stdout: int | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` on this host (its namespace, its hostname) from the repository root,
        output to ``<log_dir>/<log>`` unless ``stdout`` is given."""
        command = ["ip", "netns", "exec", self.netns, "unshare", "--uts", "--",
                   "sh", "-c", 'hostname "$0" && exec "$@"', self.hostname, *argv]
        full_env = {**os.environ, **(env or {})}
        with open(self.log_dir / log, "ab") as out:
            proc = subprocess.Popen(command, cwd=ROOT, env=full_env,
                                    stdout=out if stdout is None else stdout,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def pids(self) -> list[int]:
        """Every process in this host's namespace, whoever started it."""
        return [int(p) for p in ip("netns", "pids", self.netns).split()]

    def kill_all(self, timeout: float = 10.0) -> list[int]:
        """SIGKILL every process of this host, until none is left; returns their pids."""
        killed: list[int] = []

        def none_left() -> bool:  # the kernel tears them down: kill until the namespace is empty
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
            for proc in self.procs:
                proc.poll()  # reap our own children, so no zombie is listed
            return not pids

        wait_until(none_left, timeout, interval=0.02,
                   what=f"every process of {self.name} to die of SIGKILL")
        for proc in self.procs:
            if proc.poll() is None:  # started just now, not yet in the namespace when listed
                proc.kill()
                killed.append(proc.pid)
            proc.wait(timeout)
        return killed

    def link(self, up: bool) -> None:
        """Bring this host's network link up or down (its processes keep running)."""
        ip("-n", self.netns, "link", "set", "eth0", "up" if up else "down")


class Network:
    """Hosts ``names`` on one bridge; :meth:`close` removes every trace."""

    def __init__(self, names: Sequence[str], log_dir: Path) -> None:
        self.tag = f"wkr{secrets.token_hex(3)}"
        self.bridge_ns = f"{self.tag}-net"
        self.hosts: dict[str, Host] = {}
        self._made: list[str] = []
        try:
            self._netns(self.bridge_ns)
            ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            ip("-n", self.bridge_ns, "link", "set", "br0", "up")
            for index, name in enumerate(names, start=1):
                self.hosts[name] = self._host(name, index, log_dir)
        except BaseException:
            self.close()
            raise

    def _netns(self, netns: str) -> None:
        ip("netns", "add", netns)
        self._made.append(netns)
        ip("-n", netns, "link", "set", "lo", "up")

    def _host(self, name: str, index: int, log_dir: Path) -> Host:
        netns = f"{self.tag}-{name}"
        self._netns(netns)
        port = f"p{index}"
        ip("-n", self.bridge_ns, "link", "add", port, "type", "veth",
           "peer", "name", "eth0", "netns", netns)
        ip("-n", self.bridge_ns, "link", "set", port, "master", "br0", "up")
        address = f"{SUBNET}.{index}"
        ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", netns, "link", "set", "eth0", "up")
        return Host(name, netns, address, log_dir)

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def close(self) -> None:
        errors = []
        for host in reversed(self.hosts.values()):  # Redis last: no reconnect noise
            try:
                host.kill_all()
            except (AssertionError, subprocess.SubprocessError, OSError) as exc:
                errors.append(str(exc))
        for netns in reversed(self._made):
            try:
                ip("netns", "del", netns)
            except (AssertionError, subprocess.SubprocessError) as exc:
                errors.append(str(exc))
        self._made.clear()
        if errors:
            raise AssertionError("tearing the network down failed: " + "; ".join(errors))


@dataclass
class HostRedis:
    """redis-server on a host's address (with a password), plus a Unix socket through which
    the test, outside every namespace, watches the keys without using any host's network."""

    host: Host
    password: str
    socket_path: Path

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{self.host.address}:{REDIS_PORT}/0"

    def watcher(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket_path), password=self.password,
                           socket_timeout=10)


def start_redis(host: Host, data_dir: Path) -> HostRedis:
    password = secrets.token_hex(8)
    served = HostRedis(host, password, data_dir / "redis.sock")
    host.popen([redis_server_binary(), "--bind", host.address, "--port", str(REDIS_PORT),
                "--requirepass", password, "--unixsocket", str(served.socket_path),
                "--unixsocketperm", "700", "--dir", str(data_dir), "--save", "",
                "--appendonly", "no", "--daemonize", "no"], log="redis.log")
    watcher = served.watcher()
    try:
        wait_until(lambda: answers_ping(watcher), timeout=15, what=f"redis-server on {host.name}")
    finally:
        watcher.close()
    return served


def answers_ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
