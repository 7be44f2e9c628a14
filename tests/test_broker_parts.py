"""The three parts of :mod:`wkr_celery.broker` and the one send path, against a real Redis.

The scripts under them are pinned in ``test_lua_scripts.py``; these pin what the Python layer
adds: the one overload error every sender gives, taking back an exact envelope, the stopping
service's take-all, and the ``REVOKED`` result a revoke stores in Celery's form.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

from wkr_celery import codec
from wkr_celery.broker import (
    RequestQueue,
    ResultStore,
    ServiceRegistry,
    info_plan,
    last_failure_plan,
    live_workers_plan,
    ping_plan,
    queue_length_plan,
    run,
    run_async,
    services_plan,
    stored_plan,
    withdraw_plan,
)
from wkr_celery.broker.queue import WITHDRAW_CHUNK
from wkr_celery.client import TaskFuture
from wkr_celery.client.protocol import Requests
from wkr_celery.config import Settings
from wkr_celery.errors import InputError, ServiceOverloaded
from wkr_celery.keys import SERVICES, ServiceKeys, priority_step, task_meta_key
from wkr_celery.messages import encode_meta, now_iso, parse_request, revoked_meta
from wkr_celery.server.buffer import RequestBuffer
from wkr_celery.server.fetcher import Fetcher

from .helpers import wait_until

#: A heartbeat as a worker writes it (the registry lists no beat it cannot read).
BEAT = codec.dumps({"worker_id": "w1", "pid": 1, "requests": 0})


@pytest.fixture
def keys(redis_client: redis.Redis, service_name: str) -> Iterator[ServiceKeys]:
    yield ServiceKeys(service_name)
    for key in redis_client.scan_iter(f"*{service_name}*", count=1000):
        redis_client.delete(key)


def sender(keys: ServiceKeys, *, max_queue: int, reply_to: str | None = None) -> Requests:
    info = {"protocol": "obj", "max_queue": str(max_queue), "batch_size": "4"}
    return Requests(keys, info, reply_to=reply_to, timeout=None,
                    priority=priority_step("normal"), clock=lambda: 1.0e9)


def test_enqueue_takes_what_fits_under_the_cap_and_refuses_the_rest_with_one_error(
        redis_client: redis.Redis, keys: ServiceKeys) -> None:
    requests = sender(keys, max_queue=3, reply_to="c" * 32)
    made = [requests.make(i) for i in range(5)]

    sent = requests.enqueue(RequestQueue(redis_client, keys), made)

    assert [r.task_id for r in sent.accepted] == [r.task_id for r in made[:3]]
    assert [r.task_id for r in sent.refused] == [r.task_id for r in made[3:]]
    assert isinstance(sent.error, ServiceOverloaded)
    assert str(sent.error) == (f"service {keys.name!r} has 3 requests queued (-max_queue); "
                               "retry later")
    queued = [parse_request(raw) for raw in redis_client.lrange(requests.queue_of(made[0]), 0, -1)]
    assert sorted(m.task_id for m in queued) == sorted(r.task_id for r in made[:3])
    assert {m.client_id for m in queued} == {"c" * 32}


def test_a_sender_without_reply_list_enqueues_tasks_that_name_no_client(
        redis_client: redis.Redis, keys: ServiceKeys) -> None:
    requests = sender(keys, max_queue=0)
    sent = requests.enqueue(RequestQueue(redis_client, keys), [requests.make(7)])

    assert sent.error is None and len(sent.accepted) == 1
    (raw,) = redis_client.lrange(requests.queue_of(sent.accepted[0]), 0, -1)
    message = parse_request(raw)
    assert message.task_id == sent.accepted[0].task_id and not message.client_id
    assert message.payload == 7


def test_enqueue_checks_the_input_before_anything_is_sent(
        redis_client: redis.Redis, keys: ServiceKeys) -> None:
    requests = sender(keys, max_queue=0)
    requests.follow({"protocol": "npy", "input_shape": "3", "input_dtype": "float32"})

    with pytest.raises(InputError, match=f"service {keys.name!r}"):
        requests.make([1.0, 2.0, 3.0])
    assert RequestQueue(redis_client, keys).queue_length() == 0


def test_withdraw_takes_back_the_exact_envelope_once(
        redis_client: redis.Redis, keys: ServiceKeys) -> None:
    requests = sender(keys, max_queue=0)
    first, second = requests.make(1), requests.make(2)
    queue = RequestQueue(redis_client, keys)
    requests.enqueue(queue, [first, second])

    assert queue.withdraw(requests.queue_of(first), first.message)
    assert not queue.withdraw(requests.queue_of(first), first.message)
    assert [parse_request(raw).task_id for raw in redis_client.lrange(requests.queue_of(second), 0, -1)] == [
        second.task_id]


def test_take_all_empties_the_lists_and_leaves_what_a_worker_holds(
        redis_client: redis.Redis, keys: ServiceKeys) -> None:
    requests = sender(keys, max_queue=0)
    queue = RequestQueue(redis_client, keys)
    requests.enqueue(queue, [requests.make(i) for i in range(3)])
    (held,) = queue.fetch("w1", 1)

    taken = queue.take_all()

    assert len(taken) == 2 and held[1] not in taken
    assert queue.queue_length() == 0 and queue.held("w1") == [held[0]]


def test_reconcile_says_nothing_of_a_request_acked_while_it_looked(
        redis_client: redis.Redis, keys: ServiceKeys, caplog: pytest.LogCaptureFixture) -> None:
    """reconcile reads the inflight hash, then what the worker holds: a batch acked and
    forgotten between the two reads looks orphaned, and once made a warning of a connection
    lost and "0 request(s)" given back, every few seconds under load."""
    requests = sender(keys, max_queue=0)
    queue = RequestQueue(redis_client, keys)
    requests.enqueue(queue, [requests.make(i) for i in range(2)])
    fetched = queue.fetch("w1", 2)
    settings = Settings()
    fetcher = Fetcher(queue, "w1", RequestBuffer(4), settings, threading.Event(), 0.01)
    fetcher.held.update(i for i, _, _ in fetched)
    real_held = queue.held

    def held_then_acked(worker_id: str) -> list[int]:  # the writer acks right after the read
        ids = real_held(worker_id)
        queue.ack(worker_id, ids)
        fetcher.held.difference_update(ids)
        return ids

    queue.held = held_then_acked  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="wkr_celery.serving"):
        fetcher.reconcile()
    assert "gave back" not in caplog.text
    assert queue.queue_length() == 0, "an acked request was given back"

    queue.held = real_held  # type: ignore[method-assign]
    redis_client.hset(keys.inflight("w1"), 96, b"fetched, reply lost")  # source 0  # a real orphan
    with caplog.at_level(logging.WARNING, logger="wkr_celery.serving"):
        fetcher.reconcile()
    assert "gave back 1 request(s)" in caplog.text


def test_a_revoked_task_gets_celerys_revoked_result_stored_and_published(
        redis_client: redis.Redis, keys: ServiceKeys) -> None:
    store = ResultStore(redis_client, keys)
    task_id = uuid.uuid4().hex
    listener = redis_client.pubsub()
    try:
        listener.subscribe(task_meta_key(task_id))
        wait_until(lambda: listener.get_message(timeout=0.1), 5, what="the subscription")

        meta = store.store_revoked(task_id, expires=60)

        message = wait_until(lambda: listener.get_message(timeout=0.1), 5,
                             what="the published REVOKED result")
    finally:
        listener.close()
    assert store.read(task_id) == meta
    assert meta["status"] == "REVOKED" and meta["task_id"] == task_id
    assert meta["result"]["exc_type"] == "TaskRevokedError"
    assert message["data"] and 0 < redis_client.ttl(task_meta_key(task_id)) <= 60
    assert store.read(uuid.uuid4().hex) is None


def test_the_registry_reads_back_info_heartbeats_and_failures(
        redis_client: redis.Redis, keys: ServiceKeys) -> None:
    registry = ServiceRegistry(redis_client, keys)
    assert registry.info_deployed() is None and registry.live_workers() == {}

    assert registry.write_info({"protocol": "obj", "batch_size": 4}, "100.5")
    registry.heartbeat("w1", BEAT, ttl=30)
    registry.record_failure("worker 0 exited", ttl=30)

    assert registry.info_deployed() == "100.5"
    assert registry.info() == {"protocol": "obj", "batch_size": "4", "deployed": "100.5"}
    assert registry.live_workers() == {"w1": codec.loads(BEAT)}
    assert registry.last_failure() == "worker 0 exited"


def test_the_asyncio_client_reads_and_withdraws_through_the_same_plans_as_the_sync_parts(
        redis_client: redis.Redis, redis_url: str, keys: ServiceKeys) -> None:
    registry, queue = ServiceRegistry(redis_client, keys), RequestQueue(redis_client, keys)
    store = ResultStore(redis_client, keys)
    registry.write_info({"protocol": "obj", "batch_size": 4}, "100.5")
    registry.heartbeat("w1", BEAT, ttl=30)
    redis_client.sadd(keys.workers, "w2")  # registered, its heartbeat expired
    registry.record_failure("worker 0 exited", ttl=30)
    requests = sender(keys, max_queue=0)
    made = [requests.make(i) for i in range(3)]
    requests.enqueue(queue, made)
    answered = [uuid.uuid4().hex for _ in range(2)]
    store.store([(task_id, encode_meta(revoked_meta(task_id, now_iso())), None)
                 for task_id in answered], expires=60)
    asked = [answered[0], uuid.uuid4().hex, answered[1]]

    async def read_async() -> tuple[Any, ...]:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            return (await run_async(client, services_plan()),
                    await run_async(client, info_plan(keys)),
                    await run_async(client, live_workers_plan(keys)),
                    await run_async(client, last_failure_plan(keys)),
                    await run_async(client, queue_length_plan(keys)),
                    await run_async(client, stored_plan(asked)),
                    await run_async(client, ping_plan()),
                    await run_async(client, withdraw_plan(
                        keys, [(requests.queue_of(r), r.message) for r in made[:2]])))
        finally:
            await client.aclose()

    try:
        seen = asyncio.run(asyncio.wait_for(read_async(), 30))
    finally:
        redis_client.srem(SERVICES, keys.name)

    assert keys.name in seen[0]  # the Redis is shared: other tests' services are listed too
    assert seen[1:4] == (registry.info(), {"w1": codec.loads(BEAT)}, "worker 0 exited")
    assert seen[4] == 3 and seen[5] == [redis_client.get(task_meta_key(t)) for t in answered]
    assert seen[6] is True and seen[7] == 2  # both withdrawn, by the asyncio client
    assert queue.queue_length() == 1
    assert not queue.withdraw(requests.queue_of(made[0]), made[0].message)


def test_a_withdrawal_takes_back_a_backlog_newest_first_a_chunk_per_round_trip(
        redis_client: redis.Redis, keys: ServiceKeys) -> None:
    """What both clients run when callers cancel (``Requests.withdrawal``): the newest message
    first, where ``LREM`` finds it at the head of its list, and at most ``WITHDRAW_CHUNK``
    envelopes per round trip however many were cancelled."""
    queue, requests = RequestQueue(redis_client, keys), sender(keys, max_queue=0)
    made = [requests.make(i) for i in range(WITHDRAW_CHUNK + 100)]
    requests.enqueue(queue, made)
    plan, rounds, removed = requests.withdrawal(made[50:]), [], 0
    try:
        step = next(plan)
        while True:
            pipe = redis_client.pipeline(transaction=False)
            step(pipe)
            rounds.append([command[0][3] for command in pipe.command_stack[::2]])  # LREMs
            step = plan.send(pipe.execute())
    except StopIteration as done:
        removed = done.value
    assert removed == WITHDRAW_CHUNK + 50 and len(rounds) == 2
    assert rounds[0][0] == made[-1].message and rounds[-1][-1] == made[50].message
    left = redis_client.lrange(requests.queue_of(made[0]), 0, -1)
    assert [parse_request(raw).task_id for raw in left] == [r.task_id for r in reversed(made[:50])]
    assert run(redis_client, requests.withdrawal([])) == 0


def test_a_task_future_is_a_future_that_names_its_task() -> None:
    future = TaskFuture("abc")
    future.set_result(3)
    assert future.task_id == "abc" and future.result(timeout=0) == 3


def test_land_with_a_fetch_behind_it_takes_the_waiting_messages_even_without_the_script(
        redis_client: redis.Redis, keys: ServiceKeys) -> None:
    """``land(more=N)``: the message that wakes the worker goes to its landing list and up to N
    waiting behind it into its inflight hash, in one round trip; when the server lost its
    script cache (a restart), the fetch is loaded and still made."""
    queue = RequestQueue(redis_client, keys)
    requests = sender(keys, max_queue=0)
    for flush in (False, True):
        if flush:
            redis_client.script_flush()
        sent = [requests.make(i) for i in range(4)]
        requests.enqueue(queue, sent)
        landed, fetched = queue.land("w1", 1, more=2)
        assert landed is not None
        assert parse_request(landed).task_id == sent[0].task_id
        assert [parse_request(m).task_id for _, m, _ in fetched] == [r.task_id for r in sent[1:3]]
        assert redis_client.lrange(keys.landing("w1"), 0, -1) == [landed]
        assert sorted(int(i) for i in redis_client.hkeys(keys.inflight("w1"))) == sorted(
            i for i, _, _ in fetched)
        assert queue.queue_length() == 1
        queue.ack("w1", [i for i, _, _ in fetched], landed=[landed])
        queue.fetch("w1", 1)  # the fourth
        redis_client.delete(keys.inflight("w1"))
