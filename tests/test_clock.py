"""Deadlines hold when hosts' clocks disagree: both sides use the broker Redis's clock.

A skewed host is simulated with ``WKR_TEST_CLOCK_OFFSET`` (seconds added to every wall-clock
read of the package, which all go through ``clock.wall_time``; the first test pins that).
"""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.helpers import ROOT, Service, late_request_is_dropped_before_predict
from wkr_celery import clock
from wkr_celery.client import AsyncWKRClient
from wkr_celery.clock import TEST_OFFSET_ENV, RedisClock, wall_time

HOUR = 3600.0

# Calls that read the host's wall clock; only clock.py may make them.
_WALL_CLOCK_CALLS = {("time", "time"), ("time", "time_ns"), ("datetime", "now"),
                     ("datetime", "utcnow"), ("datetime", "today"), ("date", "today")}


def _wall_clock_reads(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and (node.func.value.id, node.func.attr) in _WALL_CLOCK_CALLS):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: "
                         f"{node.func.value.id}.{node.func.attr}()")
    return found


def test_every_wall_clock_read_of_the_package_goes_through_wall_time() -> None:
    package = ROOT / "wkr_celery"
    reads = [r for path in sorted(package.rglob("*.py")) if path.name != "clock.py"
             for r in _wall_clock_reads(path)]
    assert reads == [], "read the wall clock through wkr_celery.clock.wall_time: " + str(reads)


@pytest.fixture
def skew_this_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[float], None]]:
    def skew(seconds: float) -> None:
        monkeypatch.setenv(TEST_OFFSET_ENV, str(seconds))
        clock._test_offset.cache_clear()

    yield skew
    monkeypatch.delenv(TEST_OFFSET_ENV, raising=False)
    clock._test_offset.cache_clear()


def test_redis_clock_reads_redis_time_whatever_this_hosts_clock_says(
    redis_client: redis.Redis, skew_this_process: Callable[[float], None]
) -> None:
    skew_this_process(-HOUR)
    assert abs(wall_time() - (_redis_time(redis_client) - HOUR)) < 1.0
    redis_clock = RedisClock(redis_client)
    redis_clock.sync()
    assert abs(redis_clock.now() - _redis_time(redis_client)) < 0.5


def _redis_time(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return float(seconds + micros / 1e6)


@pytest.mark.timeout(60)
def test_requests_with_a_timeout_are_served_when_worker_and_client_clocks_are_hours_apart(
    make_service: Callable[..., Service], skew_this_process: Callable[[float], None]
) -> None:
    # On their own clocks, the worker (an hour ahead) would see every deadline of the client
    # (half an hour behind) as an hour and a half past.
    service = make_service("tests.faults.workers.Doubler",
                           env={TEST_OFFSET_ENV: str(HOUR)})
    skew_this_process(-HOUR / 2)
    client = service.client()
    futures = [client.encode(n, timeout=10) for n in range(50)]
    assert [f.result(timeout=20) for f in futures] == [2 * n for n in range(50)]

    async def from_asyncio() -> list[int]:
        async with AsyncWKRClient(name=service.name, broker_url=service.broker_url,
                                  connect_timeout=30) as aclient:
            return list(await asyncio.gather(*(aclient.encode(n, timeout=10)
                                               for n in range(50))))

    assert asyncio.run(asyncio.wait_for(from_asyncio(), 30)) == [2 * n for n in range(50)]


@pytest.mark.timeout(60)
def test_a_worker_whose_clock_is_behind_still_drops_a_request_past_its_deadline(
    make_service: Callable[..., Service], redis_client: redis.Redis,
    skew_this_process: Callable[[float], None],
) -> None:
    # On its own clock, the worker (an hour behind) would see the deadline as an hour ahead
    # and predict the late request.
    service = make_service("tests.faults.workers.VerySlowDoubler", "-batch_size", "1",
                           env={TEST_OFFSET_ENV: str(-HOUR)})
    skew_this_process(HOUR / 2)
    client = service.client()
    late_request_is_dropped_before_predict(client, redis_client)
