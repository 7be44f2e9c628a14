"""A broker outage with a separate result Redis: answers the worker computes meanwhile still reach
their callers (the acks wait, not the answers), and once the broker is back nothing is lost and
nothing is predicted twice."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis as redis_py

from tests.helpers import Service, nothing_listens, wait_until
from wkr_celery.broker import RequestQueue
from wkr_celery.connections import REDIS_ERRORS
from wkr_celery.keys import ServiceKeys
from wkr_celery.messages import parse_request
from wkr_celery.server.acks import PendingAcks
from wkr_celery.server.request import Request

from .conftest import OwnRedis

#: Half a second a batch of 2, 8 prefetched: the worker holds seconds of work when the broker
#: goes down.
WORKER = "tests.faults.workers.VerySlowDoubler"
ARGS = ("-batch_size", "2", "-prefetch", "4", "-num_worker", "1")


def _held(inspect: redis_py.Redis, keys: ServiceKeys, worker_id: str) -> set[str | None]:
    """Task ids the worker holds on the broker: its inflight hash and its landing list."""
    pipe = inspect.pipeline(transaction=True)
    pipe.hvals(keys.inflight(worker_id))
    pipe.lrange(keys.landing(worker_id), 0, -1)
    values, landed = pipe.execute()
    return {parse_request(raw).task_id for raw in [*values, *landed]}


@pytest.mark.timeout(90)
def test_broker_outage_holds_back_no_computed_answer_and_loses_or_repeats_nothing(
    own_redis: Callable[..., OwnRedis], serve_on: Callable[..., Service]
) -> None:
    broker, results = own_redis(persist=True), own_redis(persist=False)
    service = serve_on(broker.url, WORKER, *ARGS, result_url=results.url)
    (worker_id,) = service.live_workers()
    keys = ServiceKeys(service.name)
    client = service.client()
    futures = [client.encode(n) for n in range(16)]
    with redis_py.Redis.from_url(broker.url) as inspect:
        wait_until(lambda: inspect.hlen(keys.inflight(worker_id)) >= 8, timeout=20,
                   what="the worker to fetch a full buffer")
        held = _held(inspect, keys, worker_id)

    broker.stop()
    mine = [f for f in futures if f.task_id in held]  # type: ignore[attr-defined]
    open_at_stop = sum(not f.done() for f in mine)
    assert open_at_stop >= 4, "the worker had answered what it held: the test proves nothing"
    wait_until(lambda: all(f.done() for f in mine), timeout=20,
               what=f"the answers of all {len(mine)} requests the worker held, while the broker "
                    f"is down; log:\n{service.log()[-3000:]}")
    assert nothing_listens(broker.port), "the broker came back before the answers"
    assert [f.result() for f in mine] == [2 * futures.index(f) for f in mine]

    broker.server.start()
    wait_until(lambda: all(f.done() for f in futures), timeout=40,
               what="every answer after the broker is back")
    assert [f.result() for f in futures] == [2 * n for n in range(16)]
    with redis_py.Redis.from_url(broker.url) as inspect:
        wait_until(lambda: not _held(inspect, keys, worker_id), timeout=10,
                   what="the acks held back by the outage to reach the broker")
    assert service.queue.queue_length() == 0
    status = wait_until(lambda: (lambda s: s if s and s["requests"] >= 16 and not s["buffered"]
                                 else None)(service.live_workers().get(worker_id)), timeout=10,
                        what="the same worker's heartbeat counting every request")
    assert status["requests"] == 16, "a request was predicted twice"


def _request(inflight_id: int, raw: bytes) -> Request:
    return Request(inflight_id, raw, 0, None, None, None, None, None, 0.0)


@pytest.mark.timeout(30)
def test_pending_acks_wait_out_a_broker_outage_and_are_forgotten_only_once_acked(
    own_redis: Callable[..., OwnRedis],
) -> None:
    broker = own_redis(persist=True)
    keys = ServiceKeys("acks")
    forgotten: list[list[int]] = []
    with redis_py.Redis.from_url(broker.url, socket_timeout=2) as client:
        client.hset(keys.inflight("w1"), mapping={16: b"a", 24: b"b", 32: b"c"})
        client.lpush(keys.landing("w1"), b"landed")
        acks = PendingAcks(RequestQueue(client, keys), "w1",
                           lambda requests: forgotten.append([r.id for r in requests]))
        acks.add([_request(16, b"a")])
        assert acks.flush() == 1 and forgotten == [[16]]

        broker.stop()
        acks.add([_request(24, b"b"), _request(6, b"landed")])
        acks.try_flush()  # logged, not raised
        acks.add([_request(32, b"c")])
        with pytest.raises(REDIS_ERRORS):
            acks.flush()
        assert len(acks) == 3 and forgotten == [[16]], "forgotten before the broker acked them"

        broker.server.start()

        def flushed() -> bool:
            try:
                return acks.flush() == 3
            except REDIS_ERRORS:  # a connection from before the outage
                return False

        wait_until(flushed, timeout=10, what="the acks after the outage")
        assert forgotten == [[16], [24, 6, 32]], "acked together, oldest first"
        assert not client.exists(keys.inflight("w1"), keys.landing("w1"))
        assert len(acks) == 0 and acks.flush() == 0
