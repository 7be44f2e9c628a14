"""Redis restarted under load: everyone reconnects; with AOF nothing is lost; without it, the
callers whose requests were lost are told so (``RequestLost``) instead of waiting forever."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import wait

import pytest
import redis as redis_py

from tests.helpers import Service, wait_until
from wkr_celery.client import WKRClient
from wkr_celery.errors import RequestLost

from .conftest import OwnRedis

WORKER = "tests.faults.workers.SlowDoubler"


def _noticed(server: OwnRedis) -> Callable[[list, WKRClient], bool]:
    """Settled once every earlier caller is answered or told, and the client has seen the
    restart (the answers may all have come through: results popped before it were not lost)."""

    def settled(before: list, client: WKRClient) -> bool:
        with redis_py.Redis.from_url(server.url) as inspect:
            run_id = inspect.info("server")["run_id"]
        return all(f.done() for f in before) and any(
            watch.run_id == run_id for _, watch in client._replies.watches)

    return settled


def _restart_under_load(
    redis: OwnRedis, service: Service, *,
    settle: Callable[[list, WKRClient], object] = lambda before, client: True,
) -> tuple[list, list, set[str]]:
    """Queue work, restart Redis while it drains, then send more; returns both batches.

    ``settle`` is waited for before the second batch (the client counts requests published
    within two seconds of an empty restart as lost, since Redis reports uptime in seconds).
    """
    client = service.client()
    before = [client.encode(n) for n in range(600)]
    wait_until(lambda: any(f.done() for f in before), timeout=20, what="the first answers")
    assert service.queue.queue_length() > 100, "the queue drained before the restart"
    worker_ids = set(service.live_workers())
    redis.restart()
    wait_until(lambda: set(service.live_workers()) == worker_ids, timeout=20,
               what="the same workers heartbeating on the restarted Redis")
    wait_until(lambda: settle(before, client), timeout=20, what="the restart to settle")
    after = [client.encode(n) for n in range(600, 700)]
    return before, after, worker_ids


@pytest.mark.timeout(90)
def test_redis_restart_with_aof_loses_no_queued_request(
    own_redis: Callable[..., OwnRedis], serve_on: Callable[..., Service]
) -> None:
    redis = own_redis(persist=True)
    service = serve_on(redis.url, WORKER, "-batch_size", "4", "-num_worker", "2", wait=2)
    before, after, worker_ids = _restart_under_load(redis, service)
    finished, unfinished = wait(before + after, timeout=45)
    queue = service.queue
    assert not unfinished, (
        f"{len(unfinished)} unanswered; queue {queue.queue_length()}; inflight "
        f"{ {w: queue.client.hlen(queue.keys.inflight(w)) for w in worker_ids} }; "
        f"workers {service.live_workers()}")
    assert [f.result() for f in before] == [2 * n for n in range(600)]
    assert [f.result() for f in after] == [2 * n for n in range(600, 700)]
    assert set(service.live_workers()) == worker_ids, "a worker was restarted, not reconnected"
    log = service.log()
    assert "Connection to broker lost" in log  # Celery's consumer saw it, and said it in a line:
    assert "Traceback" not in log, log[-4000:]  # a handled event is no stack trace


@pytest.mark.timeout(90)
def test_redis_restart_without_persistence_fails_lost_requests_with_request_lost(
    own_redis: Callable[..., OwnRedis], serve_on: Callable[..., Service]
) -> None:
    redis = own_redis(persist=False)
    service = serve_on(redis.url, WORKER, "-batch_size", "4", "-num_worker", "2", wait=2)
    before, after, worker_ids = _restart_under_load(
        redis, service, settle=lambda before, client: any(
            f.done() and isinstance(f.exception(), RequestLost) for f in before))
    finished, unfinished = wait(before + after, timeout=45)
    assert not unfinished, (
        f"callers left waiting: {[n for n, f in enumerate(before) if not f.done()][:50]} of "
        f"those sent before, {sum(not f.done() for f in after)} of those after; "
        f"queue {service.queue.queue_length()}; log:\n{service.log()[-4000:]}")
    lost = [f.exception() for f in before if f.exception() is not None]
    assert lost, "the restart lost no request; the test proved nothing"
    assert all(isinstance(e, RequestLost) for e in lost), lost[:3]
    assert "restarted without persistence" in str(lost[0])
    answered = [(n, f.result()) for n, f in enumerate(before) if f.exception() is None]
    assert all(result == 2 * n for n, result in answered)
    assert [f.result() for f in after] == [2 * n for n in range(600, 700)]
    # A client that arrives after the restart finds the service (its info was written again).
    newcomer = service.client()
    assert newcomer.encode(21).result(timeout=20) == 42
    assert set(service.live_workers()) == worker_ids, "a worker was restarted, not reconnected"


@pytest.mark.timeout(90)
def test_result_redis_restart_without_persistence_leaves_no_caller_waiting(
    own_redis: Callable[..., OwnRedis], serve_on: Callable[..., Service]
) -> None:
    broker, results = own_redis(persist=False), own_redis(persist=False)
    service = serve_on(broker.url, WORKER, "-batch_size", "4", "-num_worker", "2", wait=2,
                       result_url=results.url)
    before, after, _ = _restart_under_load(results, service, settle=_noticed(results))
    finished, unfinished = wait(before + after, timeout=45)
    assert not unfinished, f"{len(unfinished)} callers were left waiting"
    for n, future in enumerate(before):
        assert isinstance(future.exception(), RequestLost) or future.result() == 2 * n
    assert [f.result() for f in after] == [2 * n for n in range(600, 700)]
