"""The systems under test, each behind the same small interface.

A system starts its worker processes (``start``), hands out a client with ``submit(x) -> handle``
and ``result(handle, timeout) -> array`` (``client``), names its worker pids (``worker_pids``)
and stops everything it started (``stop``, safe to call twice, even after a failed start).
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

import redis

from .model import read_stats

ROOT = Path(__file__).resolve().parent.parent
BLAS_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
SYSTEMS = ("wkr", "celery", "batches", "naive", "coalesce")
LABELS = {"wkr": "wkr-celery", "celery": "celery", "batches": "celery-batches",
          "naive": "naive-redis", "coalesce": "coalescing-redis"}


class Client(Protocol):
    def submit(self, x: Any) -> Any: ...
    def result(self, handle: Any, timeout: float) -> Any: ...
    def close(self) -> None: ...


class System:
    """Worker processes of one system on one Redis, for one workload."""

    key = ""

    def __init__(self, workload: str, workers: int, batch_size: int, url: str,
                 run_dir: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.extra_args = extra_args  # more flags for the service (wkr: -http_port ...)
        self.workload = workload
        self.workers = workers
        self.batch_size = batch_size
        self.url = url
        self.run_dir = run_dir
        self.stats_dir = run_dir / "stats"
        self.stats_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen[bytes]] = []

    # Subclasses -----------------------------------------------------------------------------

    def start(self, timeout: float) -> None:
        raise NotImplementedError

    def client(self) -> Client:
        raise NotImplementedError

    # Shared ---------------------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        """The worker environment. One BLAS thread per process for every system, as
        wkr-serving-start sets for its workers: a core-sized pool per process oversubscribes
        two cores and would handicap the peers."""
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        blas = {v: os.environ.get(v, "1") for v in BLAS_VARIABLES}
        return {**os.environ, **blas, "PYTHONPATH": path, "BENCH_STATS_DIR": str(self.stats_dir),
                "BENCH_WORKLOAD": self.workload, **extra}

    def spawn(self, command: list[str], log_name: str, **env: str) -> None:
        log = open(self.run_dir / log_name, "ab")  # noqa: SIM115 - closed with the process
        try:
            proc = subprocess.Popen(command, cwd=ROOT, env=self.env(**env), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        finally:
            log.close()
        self.procs.append(proc)

    def wait_ready_files(self, timeout: float) -> None:
        """Wait for ``ready-<pid>`` files from as many workers as were asked for."""
        deadline = time.monotonic() + timeout
        while len(list(self.stats_dir.glob("ready-*"))) < self.workers:
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{LABELS[self.key]}: workers not ready in {timeout:.0f}s; "
                                   f"see {self.run_dir}")
            time.sleep(0.05)

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{LABELS[self.key]}: process {proc.args!r} exited with "
                                   f"{proc.returncode}; see logs in {self.run_dir}")

    def worker_pids(self) -> list[int]:
        return sorted(read_stats(self.stats_dir))

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM everything started, then SIGKILL each process group still there."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # the group: a supervisor's worker children go too
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if proc.poll() is None:
                proc.wait(10)
        self.procs.clear()


class WKRSystem(System):
    key = "wkr"

    def start(self, timeout: float) -> None:
        from .model import MODEL_DIR_ENV
        from .workers import WORKER_CLASSES

        self.name = f"bench{uuid.uuid4().hex[:6]}"
        model_dir = os.environ.get(MODEL_DIR_ENV, "") if self.workload == "torch" else ""
        self.spawn([sys.executable, "-m", "wkr_celery.server.cli", WORKER_CLASSES[self.workload],
                    *self.extra_args,
                    "-name", self.name, "-protocol", "npy", "-batch_size", str(self.batch_size),
                    "-num_worker", str(self.workers), "-broker_url", self.url,
                    "-result_url", self.url, "-log_dir", str(self.run_dir),
                    "-model_dir", model_dir], "wkr.log")
        from wkr_celery.broker import Broker
        from wkr_celery.keys import ServiceKeys

        broker = Broker(redis.Redis.from_url(self.url), ServiceKeys(self.name))
        deadline = time.monotonic() + timeout
        try:
            while len(broker.live_workers()) < self.workers:
                self.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"wkr-celery: {self.workers} workers not live in "
                                       f"{timeout:.0f}s; see {self.run_dir}")
                time.sleep(0.05)
        finally:
            broker.client.close()

    def client(self) -> Client:
        return client_for(self.key, self.url, self.name)

    def service_pid(self) -> int:
        """The supervisor's pid (``wkr-serving-start`` itself, parent of the workers)."""
        return self.procs[0].pid


class _WKRClient:
    def __init__(self, client: Any) -> None:
        self.inner = client

    def submit(self, x: Any) -> Any:
        return self.inner.encode(x)

    def result(self, handle: Any, timeout: float) -> Any:
        return handle.result(timeout)

    def close(self) -> None:
        self.inner.close()


class CelerySystem(System):
    """Plain Celery: one task per input, Redis broker and result backend, solo pool."""

    key = "celery"
    task = "benchmarks.predict_one"
    prefetch = 4

    def start(self, timeout: float) -> None:
        for i in range(self.workers):
            self.spawn([sys.executable, "-m", "celery", "-A", "benchmarks.celery_peer", "worker",
                        "--pool", "solo", "-Q", "bench", "-n", f"{self.key}{i}@%h",
                        "-l", "WARNING", "--without-gossip", "--without-mingle",
                        "--without-heartbeat"], f"{self.key}-{i}.log",
                       BENCH_BROKER=self.url, BENCH_BACKEND=self.url,
                       BENCH_BATCH=str(self.batch_size), BENCH_PREFETCH=str(self.prefetch))
        self.wait_ready_files(timeout)

    def client(self) -> Client:
        from .celery_peer import make_app

        return _CeleryClient(make_app(self.url, self.url), self.task)


class BatchesSystem(CelerySystem):
    """celery-batches: flush_every = batch size, flush_interval 10 ms, results stored per input."""

    key = "batches"
    task = "benchmarks.predict_batch"
    prefetch = 256  # the worker must hold a whole batch (and more) to flush by count


class _CeleryClient:
    def __init__(self, app: Any, task: str) -> None:
        self.app = app
        self.task = task

    def submit(self, x: Any) -> Any:
        # argsrepr given, as a tuned client would: Celery otherwise formats the whole array
        # with numpy's repr for every message (half the client's time when profiled).
        return self.app.send_task(self.task, args=(x,), queue="bench",
                                  argsrepr="(<ndarray>,)", kwargsrepr="{}")

    def result(self, handle: Any, timeout: float) -> Any:
        return handle.get(timeout=timeout)

    def close(self) -> None:
        # Free finished AsyncResults now, while Redis still answers: their __del__ talks to
        # the result store, and after it is gone each one retries for seconds.
        gc.collect()
        consumer = getattr(self.app.backend, "result_consumer", None)
        if consumer is not None:
            consumer.stop()
        self.app.close()


class NaiveSystem(System):
    key = "naive"

    def start(self, timeout: float) -> None:
        for i in range(self.workers):
            self.spawn([sys.executable, "-m", "benchmarks.naive", self.url, self.workload,
                        str(self.batch_size)], f"naive-{i}.log")
        self.wait_ready_files(timeout)

    def client(self) -> Client:
        return client_for(self.key, self.url)


class CoalescingSystem(NaiveSystem):
    """The naive loop's workers; the client gathers its submits into one LPUSH per pump."""

    key = "coalesce"

    def client(self) -> Client:
        return client_for(self.key, self.url)


CLASSES: dict[str, type[System]] = {"wkr": WKRSystem, "celery": CelerySystem,
                                    "batches": BatchesSystem, "naive": NaiveSystem,
                                    "coalesce": CoalescingSystem}


def client_for(key: str, url: str, service: str = "") -> Client:
    """A client of system ``key`` on Redis ``url``; any process can make one (the many-clients
    scenario does, in each client process). ``service``: wkr-celery's service name."""
    if key == "wkr":
        from wkr_celery.client import WKRClient

        return _WKRClient(WKRClient(name=service, broker_url=url, result_url=url,
                                    connect_timeout=30))
    if key in ("naive", "coalesce"):
        from .naive import CoalescingClient, NaiveClient

        return CoalescingClient(url) if key == "coalesce" else NaiveClient(url)
    raise ValueError(f"no standalone client for system {key!r}; choose wkr, naive or coalesce")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
