"""Test support: free ports, deadline-bounded waits, and services run as real processes."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from wkr_celery.broker import RequestQueue, ServiceRegistry
from wkr_celery.client import WKRClient
from wkr_celery.connections import redis_url, with_local_password
from wkr_celery.keys import ServiceKeys

from .scripts import script, user_env

ROOT = Path(__file__).resolve().parent.parent
_SIGTERM = signal.SIGTERM  # the Service.signal method shadows the module in its class body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def local_redis(port: int, **options: Any) -> redis.Redis:
    """A client of the Redis on 127.0.0.1:``port`` with the password a service of this user
    started it with, found as every client finds it (``connections.with_local_password``):
    how tests reach a service's embedded Redis."""
    return redis.Redis.from_url(with_local_password(redis_url(None, port=port)), **options)


def nothing_listens(port: int) -> bool:
    """True when no process accepts TCP connections on 127.0.0.1:``port``: a stopped Redis,
    whatever its password."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


class PortForward:
    """Forwards connections on a new loopback port to ``127.0.0.1:target``: a port published
    under another number, as a container's would be (``-p 18998:8998``)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                inbound, _ = self._listener.accept()
            except OSError:  # closed
                return
            outbound = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            outbound.settimeout(None)
            self._sockets += [inbound, outbound]
            for source, sink in ((inbound, outbound), (outbound, inbound)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            sock.close()

    def __enter__(self) -> PortForward:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        sink.close()


def stop_gracefully(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM (a graceful stop) unless it has exited; killed if it outlives 60 s. Its code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return int(proc.returncode)


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
               what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Service:
    """A ``wkr-serving-start`` process serving ``name`` on ``broker_url``."""

    name: str
    broker_url: str
    result_url: str
    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    clients: list[WKRClient] = field(default_factory=list)

    @property
    def queue(self) -> RequestQueue:
        return RequestQueue(redis.Redis.from_url(self.broker_url), ServiceKeys(self.name))

    @property
    def registry(self) -> ServiceRegistry:
        return ServiceRegistry(redis.Redis.from_url(self.broker_url), ServiceKeys(self.name))

    def live_workers(self) -> dict[str, dict[str, Any]]:
        return self.registry.live_workers()

    def wait_workers(self, count: int, timeout: float = 60.0) -> dict[str, dict[str, Any]]:
        return wait_until(lambda: (lambda live: live if len(live) >= count else None)(
            self.live_workers()), timeout, what=f"{count} live worker(s) of {self.name}"
            + f"; log:\n{self.log()}")

    def client(self, **kwargs: Any) -> WKRClient:
        kwargs.setdefault("connect_timeout", 30.0)
        client = WKRClient(name=self.name, broker_url=self.broker_url,
                           result_url=self.result_url, **kwargs)
        self.clients.append(client)
        return client

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = _SIGTERM, timeout: float = 60.0) -> int:
        for client in self.clients:
            client.close()
        self.clients.clear()
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"service {self.name} did not stop in {timeout}s") from None
        return int(self.proc.returncode)


def queued(service: Service, suspects: bool = True) -> int:
    """Requests waiting in the service's lists (not those a worker holds); without
    ``suspects``, only the queue lists: what ``publish.lua`` counts against ``-max_queue``."""
    keys = ServiceKeys(service.name)
    lists = (*keys.queues, keys.suspect) if suspects else keys.queues
    client = redis.Redis.from_url(service.broker_url)
    try:
        return sum(int(client.llen(name)) for name in lists)
    finally:
        client.close()


def wait_answering(http: httpx.Client, path: str, timeout: float, what: str) -> None:
    """Wait until ``GET path`` answers 200 (``/healthz``: the API is up; ``/readyz``: a worker
    serves too); a connection refused or reset counts as "not yet"."""
    def answering() -> bool:
        try:
            return http.get(path).status_code == 200
        except httpx.TransportError:
            return False
    wait_until(answering, timeout, what=what)


def start_service(
    name: str, broker_url: str, result_url: str, log_dir: Path,
    worker: str = "workers.linear.Worker", args: Sequence[str] = (),
    env: dict[str, str] | None = None, wait: int | None = None,
) -> Service:
    """Start ``wkr-serving-start`` in a subprocess; ``wait`` = live workers to wait for.

    The console script as a user types it in the checkout's root (where ``workers`` and
    ``tests`` are), with no ``PYTHONPATH``: every service a test starts goes through the door
    the docs give, so a flag or a worker path that only ``python -m`` accepts fails here."""
    log_path = log_dir / f"{name}.stdout"
    command = [script("wkr-serving-start"), worker, "-name", name,
               "-broker_url", broker_url, "-result_url", result_url, *args]
    service = Service(name, broker_url, result_url, list(args), log_path)
    with open(log_path, "wb") as out:
        service.proc = subprocess.Popen(command, cwd=ROOT, env=user_env(env), stdout=out,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if wait:
        service.wait_workers(wait)
    return service


def late_request_is_dropped_before_predict(client: WKRClient, results: redis.Redis
                                           ) -> dict[str, Any]:
    """Against ``VerySlowDoubler -batch_size 1``: a request queued behind a half-second batch
    with a 0.1 s deadline fails with ``DeadlineExceeded`` for its caller, and the worker stores
    that it dropped it before ``predict``. Returns that stored result."""
    from wkr_celery.errors import DeadlineExceeded
    from wkr_celery.keys import task_meta_key
    from wkr_celery.messages import decode_meta

    busy = client.encode(1)  # half a second in predict
    late = client.encode(2, timeout=0.1)
    try:
        late.result(timeout=10)
    except DeadlineExceeded:
        pass
    else:
        raise AssertionError("the late request was answered")
    assert busy.result(timeout=10) == 2
    task_id = late.task_id
    stored = wait_until(lambda: results.get(task_meta_key(task_id)), timeout=10,
                        what="the worker's answer to the late request")
    meta: dict[str, Any] = decode_meta(stored)
    assert meta["result"]["exc_type"] == "DeadlineExceeded", meta
    assert "before predict" in meta["result"]["exc_message"][0]
    return meta


GATE_WORKER = "tests.workers_for_tests.GateWorker"


class Gates:
    """Gate files under ``root`` for :data:`GATE_WORKER`: an input names one; ``predict``
    waits until it exists and marks ``<gate>.entered`` when it starts on the input."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def item(self, name: str, value: Any, *, open_: bool = True) -> dict[str, Any]:
        if open_:
            (self.root / name).touch()
        return {"gate": str(self.root / name), "value": value}

    def open(self, name: str) -> None:
        (self.root / name).touch()

    def entered(self, name: str) -> bool:
        return (self.root / f"{name}.entered").exists()
