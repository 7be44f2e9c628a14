"""The client watches each Redis on its own and fails only the requests that are really gone.

With the broker and the result Redis on two servers, an outage of the broker never stops answers
flowing from the result Redis, and a broker restarted empty fails only the requests it really
lost, those still queued: requests a worker had already fetched are answered as usual. A service
that goes away for good is reported once, and its callers are told within ``connect_timeout``.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from concurrent.futures import Future

import pytest
import redis as redis_py

from tests.helpers import Service, wait_until
from wkr_celery.client import WKRClient
from wkr_celery.errors import RequestLost
from wkr_celery.keys import task_meta_key
from wkr_celery.messages import parse_request

from .conftest import OwnRedis

#: Half a second a batch: requests wait in the queue and in the worker's buffer.
WORKER = "tests.faults.workers.VerySlowDoubler"
ARGS = ("-batch_size", "2", "-num_worker", "1", "-visibility_timeout", "2")


def _fetched(service: Service, at_least: int) -> set[str]:
    """Task ids in the worker's inflight hash, once it holds ``at_least`` requests."""
    queue = service.queue
    (worker_id,) = service.live_workers()
    key = queue.keys.inflight(worker_id)
    wait_until(lambda: queue.client.hlen(key) >= at_least, timeout=20,
               what=f"the worker to fetch {at_least} requests")
    return {str(parse_request(raw).task_id) for raw in queue.client.hvals(key)}


def _stored(results: OwnRedis, futures: list[Future]) -> list[bool]:
    """Whether the worker stored an answer for each request, read on the result Redis."""
    with redis_py.Redis.from_url(results.url) as inspect:
        return [bool(inspect.exists(task_meta_key(f.task_id))) for f in futures]  # type: ignore[attr-defined]


def _drain(client: WKRClient) -> None:
    """One more request through the one worker: once it is answered, every request the worker
    held before it is predicted and stored (it serves its buffer in order)."""
    assert client.encode(1000).result(timeout=30) == 2000


@pytest.mark.timeout(90)
def test_broker_restart_without_aof_delivers_what_workers_held_and_fails_only_queued_requests(
    own_redis: Callable[..., OwnRedis], serve_on: Callable[..., Service]
) -> None:
    broker, results = own_redis(persist=False), own_redis(persist=False)
    service = serve_on(broker.url, WORKER, *ARGS, wait=1, result_url=results.url)
    client = service.client()
    futures = [client.encode(n) for n in range(16)]
    held = _fetched(service, at_least=4)
    assert service.queue.queue_length() > 0, "nothing was still queued; the test proves nothing"

    broker.restart()
    open_after_restart = {n for n, f in enumerate(futures) if not f.done()}

    wait_until(lambda: all(f.done() for f in futures), timeout=30,
               what="every caller to be answered or told its request was lost")
    _drain(client)
    stored = _stored(results, futures)
    for n, (future, answer_stored) in enumerate(zip(futures, stored)):
        error = future.exception()
        if answer_stored:
            assert error is None, f"request {n} was answered by the worker but failed: {error!r}"
            assert future.result() == 2 * n
        else:
            assert isinstance(error, RequestLost), f"request {n}: {error!r}"
            assert "restarted without persistence" in str(error)
    held_ids = [n for n, f in enumerate(futures) if f.task_id in held]  # type: ignore[attr-defined]
    assert held_ids and all(futures[n].result() == 2 * n for n in held_ids)
    assert open_after_restart & set(held_ids), "the worker answered all it held before the restart"
    assert not all(stored), "the restart lost no queued request; the test proved nothing"


@pytest.mark.timeout(90)
def test_broker_outage_does_not_stop_answers_from_the_result_redis(
    own_redis: Callable[..., OwnRedis], serve_on: Callable[..., Service],
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker, results = own_redis(persist=True), own_redis(persist=False)
    service = serve_on(broker.url, WORKER, *ARGS, wait=1, result_url=results.url)
    client = service.client()
    caplog.set_level(logging.WARNING, logger="wkr_celery.client")
    futures = [client.encode(n) for n in range(12)]
    _fetched(service, at_least=4)

    broker.stop()
    answered_at_stop = sum(f.done() for f in futures)
    wait_until(lambda: sum(f.done() for f in futures) > answered_at_stop, timeout=20,
               what="an answer from the result Redis while the broker is down")
    wait_until(lambda: any("broker Redis" in r.getMessage() for r in caplog.records),
               timeout=10, what="the client to notice the broker outage")
    broker.server.start()

    wait_until(lambda: all(f.done() for f in futures), timeout=40, what="every answer")
    assert [f.result() for f in futures] == [2 * n for n in range(12)]
    _drain(client)
    messages = [r.getMessage() for r in caplog.records if r.name == "wkr_celery.client"]
    down = [m for m in messages if "unreachable" in m]
    back = [m for m in messages if "reachable again" in m]
    assert len(down) == 1 and f":{broker.port}" in down[0], messages
    assert len(back) == 1 and "broker Redis" in back[0], messages
    assert not any("result Redis" in m for m in messages), messages


@pytest.mark.timeout(90)
def test_service_gone_is_reported_once_and_its_callers_told_promptly(
    own_redis: Callable[..., OwnRedis], serve_on: Callable[..., Service],
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis = own_redis(persist=False)
    service = serve_on(redis.url, WORKER, *ARGS, wait=1)
    caplog.set_level(logging.WARNING, logger="wkr_celery.client")
    with WKRClient(name=service.name, broker_url=redis.url, connect_timeout=3) as client:
        futures = [client.encode(n) for n in range(12)]
        _fetched(service, at_least=4)
        assert service.proc is not None
        # The service stops (gracefully: it gives back what it buffered), then its Redis goes.
        service.proc.send_signal(signal.SIGTERM)
        assert service.proc.wait(30) == 0, service.log()[-4000:]
        redis.stop()

        wait_until(lambda: all(f.done() for f in futures), timeout=20,
                   what="every caller to be answered or told the service is gone")
        errors = [f.exception() for f in futures]
        assert any(e is None for e in errors), "nothing was answered before the stop"
        gone = [e for e in errors if e is not None]
        assert gone and all(isinstance(e, RequestLost) for e in gone), gone
        assert "unreachable" in str(gone[0]) and f":{redis.port}" in str(gone[0])
        # The client fails its callers first, then logs that the service is gone.
        wait_until(lambda: any("is gone" in r.getMessage() for r in caplog.records
                               if r.name == "wkr_celery.client"), timeout=5,
                   what="the client's error that the service is gone")
        mine = [r for r in caplog.records if r.name == "wkr_celery.client"]  # not a child's
        outage_warnings = [r for r in mine if "is unreachable" in r.getMessage()]
        gone_errors = [r for r in mine if "is gone" in r.getMessage()]
    assert len(outage_warnings) == 1, [r.getMessage() for r in caplog.records]
    assert len(gone_errors) == 1, [r.getMessage() for r in caplog.records]
