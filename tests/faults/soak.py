"""Soak test, run by hand (not in CI): ``python -m tests.faults.soak --minutes 10``.

Starts a Redis of its own and a ``workers.linear`` service (2 workers, protocol npy), sends a
steady load from one client for the given time, checks every answer against numpy, and prints
figures every ``--report`` seconds: requests, errors, client and worker RSS, Redis keys (all,
and without stored results) and Redis memory. Results expire after ``--result-expires``
seconds, so the stored-result count plateaus instead of growing for the whole run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import redis

from tests.helpers import Service, free_port, start_service
from wkr_celery.errors import WKRError
from wkr_celery.keys import TASK_META_PREFIX
from wkr_celery.redis_embedded import EmbeddedRedis
from workers.linear import IN_DIM, make_weights

MB = 1024 * 1024


def _figures(service: Service, inspect: redis.Redis) -> dict[str, Any]:
    pids = [beat["pid"] for beat in service.live_workers().values()]
    worker_rss = [psutil.Process(pid).memory_info().rss / MB for pid in pids
                  if psutil.pid_exists(pid)]
    results = sum(1 for _ in inspect.scan_iter(f"{TASK_META_PREFIX}*", count=1000))
    keys = int(inspect.dbsize())
    return {
        "client_rss_mb": psutil.Process().memory_info().rss / MB,
        "worker_rss_mb": worker_rss,
        "redis_keys": keys,
        "redis_keys_without_results": keys - results,
        "redis_used_mb": int(inspect.info("memory")["used_memory"]) / MB,
    }


def _mb(values: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def _line(elapsed: float, sent: int, errors: int, fig: dict[str, Any]) -> str:
    workers = "/".join(f"{r:.0f}" for r in fig["worker_rss_mb"])
    return (f"{elapsed:7.0f}s  requests {sent:>9}  errors {errors:>5}  "
            f"client RSS {fig['client_rss_mb']:6.1f} MB  worker RSS {workers} MB  "
            f"Redis keys {fig['redis_keys']:>7} ({fig['redis_keys_without_results']} without "
            f"results)  Redis memory {fig['redis_used_mb']:.1f} MB")


def soak(minutes: float, rate: float, report: float, result_expires: int) -> int:
    weights = make_weights()
    rng = np.random.default_rng(0)
    chunk = max(1, int(rate / 10))  # ten chunks a second
    with tempfile.TemporaryDirectory(prefix="wkr-soak-") as tmp, \
            EmbeddedRedis(free_port()) as server:
        service = start_service(
            "soak", server.url, server.url, Path(tmp), "workers.linear.Worker",
            ["-protocol", "npy", "-num_worker", "2", "-result_expires", str(result_expires)],
            wait=2)
        inspect = redis.Redis.from_url(server.url)
        try:
            client = service.client()
            sent = errors = wrong = 0
            start = time.monotonic()
            first = _figures(service, inspect)
            print(_line(0, 0, 0, first), flush=True)
            next_report = start + report
            while (now := time.monotonic()) < start + minutes * 60:
                xs = rng.standard_normal((chunk, IN_DIM)).astype(np.float32)
                futures = [client.encode(x) for x in xs]
                expected = np.tanh(xs @ weights)
                for future, want in zip(futures, expected, strict=True):
                    try:
                        got = future.result(timeout=60)
                    except WKRError as exc:
                        errors += 1
                        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
                        continue
                    if not np.allclose(got, want, atol=1e-5):
                        wrong += 1
                sent += chunk
                time.sleep(max(0.0, sent / rate - (time.monotonic() - start)))  # pacing
                if now >= next_report:
                    print(_line(now - start, sent, errors + wrong, _figures(service, inspect)),
                          flush=True)
                    next_report += report
            last = _figures(service, inspect)
            elapsed = time.monotonic() - start
            print(_line(elapsed, sent, errors + wrong, last), flush=True)
            print(f"\nsoak: {elapsed / 60:.1f} min, {sent} requests, {errors} errors, "
                  f"{wrong} wrong answers, pending {client.pending}")
            print(f"client RSS {first['client_rss_mb']:.1f} -> {last['client_rss_mb']:.1f} MB; "
                  f"worker RSS {_mb(first['worker_rss_mb'])} -> {_mb(last['worker_rss_mb'])} MB; "
                  f"Redis keys without results {first['redis_keys_without_results']} -> "
                  f"{last['redis_keys_without_results']}")
            return 1 if errors or wrong else 0
        finally:
            service.stop()
            inspect.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second")
    parser.add_argument("--report", type=float, default=30.0, help="seconds between lines")
    parser.add_argument("--result-expires", type=int, default=60)
    args = parser.parse_args(argv)
    return soak(args.minutes, args.rate, args.report, args.result_expires)


if __name__ == "__main__":
    sys.exit(main())
