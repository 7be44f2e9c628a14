"""The scenarios: one request at a time, a stream with N in flight, and a sweep over N.

Every answer is checked against ``numpy.tanh(x @ W)``, or for ``torch`` against torch run directly
in the harness on the same weights (atol 1e-4); a wrong, failed or missing
answer is counted, and a scenario with any is a failure. Latency is measured from just before
``submit`` to the moment the client holds the checked result, oldest request first, the way an
application consuming results in order sees it.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workers.linear import make_weights

from .model import TorchNet, read_stats
from .systems import CLASSES, Client, System, free_port

if TYPE_CHECKING:
    from wkr_celery.redis_embedded import EmbeddedRedis

ATOL = 1e-4
MAX_ERRORS = 3  # after this many failed results a scenario stops: it has failed anyway


@dataclass(frozen=True)
class Pool:
    """Inputs cycled through by every scenario, with their expected answers."""

    inputs: np.ndarray
    expected: np.ndarray

    @classmethod
    def make(cls, size: int = 1024, seed: int = 1, workload: str = "tiny") -> Pool:
        rng = np.random.default_rng(seed)
        if workload == "torch":  # the example's (16, 32) inputs, answers from torch itself
            net = TorchNet()
            inputs = rng.standard_normal((size, *net.shape)).astype(np.float32)
            return cls(inputs, net(inputs))
        inputs = rng.standard_normal((size, 512)).astype(np.float32)
        return cls(inputs, np.tanh(inputs @ make_weights()))


def percentiles(latencies_s: list[float]) -> dict[str, float]:
    if not latencies_s:
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan")}
    p50, p90, p99 = np.percentile(np.asarray(latencies_s) * 1000, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99)}


def cdf_points(latencies_s: list[float], points: int = 400) -> list[float]:
    """Sorted latencies in ms, thinned to at most ``points`` quantiles for the JSON and plot."""
    if not latencies_s:
        return []
    q = np.linspace(0, 100, min(points, len(latencies_s)))
    return [round(float(v), 4) for v in np.percentile(np.asarray(latencies_s) * 1000, q)]


def rss_mib(pids: list[int]) -> dict[str, float]:
    import psutil

    found = {}
    for pid in pids:
        try:
            found[str(pid)] = round(psutil.Process(pid).memory_info().rss / 2**20, 1)
        except psutil.Error:
            found[str(pid)] = float("nan")
    return found


class Checker:
    """Checks answers in vectorised chunks: per answer ``allclose`` would cost the client more
    CPU than wkr-celery's own client code (a third of its time, profiled) and skew the figures.
    Memory stays bounded: at most ``chunk`` answers are held."""

    def __init__(self, expected: np.ndarray, chunk: int = 1024) -> None:
        self.expected = expected
        self.chunk = chunk
        self.outs: list[np.ndarray] = []
        self.indices: list[int] = []
        self.wrong = 0

    def add(self, out: Any, index: int) -> None:
        out = np.asarray(out)
        if out.shape != self.expected.shape[1:]:
            self.wrong += 1
            return
        self.outs.append(out)
        self.indices.append(index)
        if len(self.outs) >= self.chunk:
            self.flush()

    def flush(self) -> int:
        if self.outs:
            error = np.abs(np.stack(self.outs) - self.expected[self.indices]).max(axis=1)
            self.wrong += int(np.count_nonzero(~(error <= ATOL)))  # NaN counts as wrong
            self.outs.clear()
            self.indices.clear()
        return self.wrong


class Run:
    """Sends requests through one client, checking every answer."""

    def __init__(self, client: Client, pool: Pool, timeout: float) -> None:
        self.client = client
        self.pool = pool
        self.timeout = timeout

    def drive(self, inflight: int, count: int | None = None,
              duration: float | None = None) -> dict[str, Any]:
        """Keep ``inflight`` requests out until ``count`` were sent or ``duration`` passed."""
        pool_size = len(self.pool.inputs)
        window: deque[tuple[Any, float, int]] = deque()
        latencies: list[float] = []
        missing = sent = 0
        checker = Checker(self.pool.expected)
        errors: list[str] = []
        clock = time.perf_counter
        start = clock()
        stop_at = start + duration if duration is not None else float("inf")
        while True:
            while (len(window) < inflight and (count is None or sent < count)
                   and clock() < stop_at and len(errors) < MAX_ERRORS):
                index = sent % pool_size
                sent_at = clock()
                window.append((self.client.submit(self.pool.inputs[index]), sent_at, index))
                sent += 1
            if not window:
                break
            handle, sent_at, index = window.popleft()
            if len(errors) >= MAX_ERRORS:
                missing += 1
                continue
            try:
                out = self.client.result(handle, self.timeout)
            except Exception as exc:  # a failed or missing answer: counted, the run goes on
                missing += 1
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            latencies.append(clock() - sent_at)
            checker.add(out, index)
        elapsed = clock() - start
        wrong = checker.flush()
        if wrong:
            errors.append(f"{wrong} wrong answer(s)")
        if count is not None and sent < count:
            missing += count - sent
        return {"sent": sent, "answered": len(latencies), "wrong": wrong, "missing": missing,
                "errors": errors, "elapsed_s": elapsed, "latencies": latencies,
                "throughput": len(latencies) / elapsed if elapsed > 0 else 0.0}


def one_at_a_time(run: Run, count: int, warmup: int) -> dict[str, Any]:
    run.drive(1, count=warmup)
    result = run.drive(1, count=count)
    latencies = result.pop("latencies")
    return {**result, **percentiles(latencies), "cdf_ms": cdf_points(latencies)}


def stream(run: Run, count: int, inflight: int, worker_pids: list[int],
           stats_dir: Path) -> dict[str, Any]:
    """The long stream: throughput, latency, batch sizes, simulated-GPU busy time, RSS."""
    pids = [os.getpid(), *worker_pids]
    rss_start = rss_mib(pids)
    before = read_stats(stats_dir)
    result = run.drive(inflight, count=count)
    after = read_stats(stats_dir)
    rss_end = rss_mib(pids)
    latencies = result.pop("latencies")
    elapsed = result["elapsed_s"]
    zero = (0.0, 0.0, 0.0, 0.0)
    busy = {str(pid): round((after[pid][0] - before.get(pid, zero)[0]) / elapsed, 4)
            for pid in after}
    slept = {str(pid): round((after[pid][3] - before.get(pid, zero)[3]) / elapsed, 4)
             for pid in after}
    batches = sum(after[p][1] - before.get(p, zero)[1] for p in after)
    inputs = sum(after[p][2] - before.get(p, zero)[2] for p in after)
    client = str(os.getpid())
    return {
        **result, **percentiles(latencies), "cdf_ms": cdf_points(latencies),
        "inflight": inflight, "mean_batch": inputs / batches if batches else float("nan"),
        "gpu_busy_per_worker": busy,
        "gpu_busy_mean": float(np.mean(list(busy.values()))) if busy else float("nan"),
        "gpu_slept_per_worker": slept,
        "rss_client_mib": [rss_start[client], rss_end[client]],
        "rss_workers_mib": {p: [rss_start[p], rss_end[p]] for p in rss_start if p != client},
    }


def sweep(run: Run, points: list[int], duration: float) -> list[dict[str, Any]]:
    rows = []
    for inflight in points:
        result = run.drive(inflight, duration=duration)
        latencies = result.pop("latencies")
        rows.append({"inflight": inflight, "throughput": result["throughput"],
                     **percentiles(latencies), "wrong": result["wrong"],
                     "missing": result["missing"], "errors": result["errors"]})
    return rows


@contextmanager
def started(key: str, workload: str, workers: int, work: Path,
            warmup: int) -> Iterator[tuple[EmbeddedRedis, System, Run]]:
    """System ``key`` on a fresh embedded Redis, its client warmed up by ``warmup`` requests;
    all of it stopped on the way out. (``benchmarks.pairs`` keeps its own copy: it must run
    against older trees, which may not have this.)"""
    from wkr_celery.redis_embedded import EmbeddedRedis

    server = EmbeddedRedis(free_port()).start()
    system = CLASSES[key](workload, workers, 32, server.url, work)
    client = None
    try:
        system.start(timeout=90)
        client = system.client()
        run = Run(client, Pool.make(workload=workload), 30.0)
        run.drive(64, count=warmup)
        yield server, system, run
    finally:
        if client is not None:
            client.close()
        system.stop()
        server.stop()
