"""``RedisHandler``: the job queue decentralize units pop from, on a real Redis."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from wkr_celery.client.helper import RedisHandler
from wkr_celery.redis_embedded import EmbeddedRedis


@pytest.fixture
def handler(redis_server: EmbeddedRedis) -> Iterator[RedisHandler]:
    with RedisHandler(f"q-{uuid.uuid4().hex[:8]}", "127.0.0.1", redis_server.port) as queue:
        yield queue


def test_jobs_come_out_in_the_order_they_were_pushed(handler: RedisHandler) -> None:
    for i in range(5):
        handler.push({"id": i})
    handler.push_many([{"id": 5}, {"id": 6}])
    assert len(handler) == 7
    assert [handler.pop()["id"] for _ in range(7)] == list(range(7))
    assert handler.pop() is None


def test_values_are_json_so_other_producers_can_lpush_them(
        handler: RedisHandler, redis_client: object) -> None:
    redis_client.lpush(handler.queue_key, '{"from": "elsewhere", "n": [1, 2]}')  # type: ignore[attr-defined]
    assert handler.pop() == {"from": "elsewhere", "n": [1, 2]}


def test_a_blocking_pop_waits_for_a_job_pushed_later(handler: RedisHandler,
                                                     redis_server: EmbeddedRedis) -> None:
    with RedisHandler(handler.queue_key, "127.0.0.1", redis_server.port) as producer:
        pushed = threading.Event()

        def push_soon() -> None:
            pushed.wait(5)
            producer.push("late job")

        thread = threading.Thread(target=push_soon)
        thread.start()
        pushed.set()
        assert handler.pop(timeout=10) == "late job"
        thread.join(5)


def test_a_blocking_pop_on_an_empty_queue_returns_none_after_its_timeout(
        handler: RedisHandler) -> None:
    started = time.monotonic()
    assert handler.pop(timeout=0.3) is None
    assert time.monotonic() - started >= 0.25


def test_msgpack_option_carries_numpy_arrays(redis_server: EmbeddedRedis) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    with RedisHandler(f"q-{uuid.uuid4().hex[:8]}", "127.0.0.1", redis_server.port,
                      serializer="msgpack") as queue:
        queue.push({"x": x, "id": 1})
        job = queue.pop()
    assert job["id"] == 1 and job["x"].dtype == np.float32
    np.testing.assert_array_equal(job["x"], x)


def test_an_unknown_serializer_is_refused() -> None:
    with pytest.raises(ValueError, match="pickle"):
        RedisHandler("q", serializer="pickle")
