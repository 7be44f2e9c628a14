"""Each Lua script in wkr_celery/lua/, called directly with its KEYS and ARGV against a real Redis.

These pin the scripts' contracts (what each reads, writes and returns) apart from the Python that
calls them, including paths the services rarely reach: a batch whose argument lists are longer
than one ``unpack`` can take.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.commands.core import Script

from wkr_celery import scripts
from wkr_celery.keys import ServiceKeys, reply_key, task_meta_key

from .helpers import wait_until

WAKE_CAP = 16
DEATHS_TTL = 3600


@pytest.fixture
def keys(redis_client: redis.Redis, service_name: str) -> Iterator[ServiceKeys]:
    yield ServiceKeys(service_name)
    for key in redis_client.scan_iter(f"*{service_name}*", count=1000):
        redis_client.delete(key)


@pytest.fixture
def script(redis_client: redis.Redis) -> Callable[[str], Script]:
    """``script("fetch")``: the script of that name, registered on the session Redis."""
    return lambda name: redis_client.register_script(scripts.load(name))


def inflight_id(seq: int, source: int) -> int:
    return seq * 8 + source


def fetch_keys(keys: ServiceKeys, worker: str) -> list[str]:
    return [keys.inflight(worker), keys.seq, keys.wake, keys.suspect, keys.deaths, *keys.queues]


def test_the_loader_puts_the_needed_library_in_front_of_a_script() -> None:
    library = scripts.load("lib/requeue")
    assert scripts.REQUEUE_DEAD.startswith(library)
    assert scripts.SWEEP.startswith(library)
    assert scripts.FETCH == scripts.load("fetch") and "local function requeue" not in scripts.FETCH


def test_fetch_takes_the_oldest_messages_in_serving_order_and_records_their_source(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    redis_client.lpush(keys.queues[1], b"n1", b"n2")
    redis_client.lpush(keys.queues[0], b"h1")

    got = script("fetch")(keys=fetch_keys(keys, "w1"), args=[2, WAKE_CAP])

    assert got == [inflight_id(1, 0), b"h1", 0, inflight_id(2, 1), b"n1", 0]
    assert redis_client.hgetall(keys.inflight("w1")) == {
        str(inflight_id(1, 0)).encode(): b"h1", str(inflight_id(2, 1)).encode(): b"n1"}
    assert redis_client.lrange(keys.queues[1], 0, -1) == [b"n2"]
    assert redis_client.lrange(keys.wake, 0, -1) == [b"1"], "work is left: another worker is woken"


def test_fetch_takes_a_suspect_alone_with_its_death_count(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    redis_client.lpush(keys.queues[0], b"ok")
    redis_client.lpush(keys.suspect, b"bad1", b"bad2")
    redis_client.hset(keys.deaths, b"bad1", 2)

    got = script("fetch")(keys=fetch_keys(keys, "w1"), args=[8, WAKE_CAP])

    assert got == [inflight_id(1, scripts.SUSPECT_SOURCE), b"bad1", 2]
    assert redis_client.llen(keys.queues[0]) == 1
    assert redis_client.llen(keys.wake) == 1, "another suspect waits"


def test_fetch_on_empty_lists_returns_nothing_and_writes_nothing(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    assert script("fetch")(keys=fetch_keys(keys, "w1"), args=[4, WAKE_CAP]) == []
    assert not redis_client.exists(keys.inflight("w1"), keys.seq, keys.wake)


def test_return_puts_messages_back_at_the_head_of_the_lists_they_came_from(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    redis_client.lpush(keys.queues[2], b"later")
    held = {inflight_id(1, 2): b"low1", inflight_id(2, 2): b"low2",
            inflight_id(3, scripts.SUSPECT_SOURCE): b"bad"}
    redis_client.hset(keys.inflight("w1"), mapping=held)  # type: ignore[arg-type]

    returned = script("return")(
        keys=[keys.inflight("w1"), keys.wake, keys.suspect, *keys.queues],
        args=[*sorted(held, reverse=True), inflight_id(9, 0)])

    assert returned == 3, "an id no longer held is skipped"
    assert redis_client.lrange(keys.queues[2], 0, -1) == [b"later", b"low2", b"low1"]
    assert redis_client.lrange(keys.suspect, 0, -1) == [b"bad"]
    assert not redis_client.exists(keys.inflight("w1"))
    assert redis_client.llen(keys.wake) == 1


def requeue_dead_keys(keys: ServiceKeys, worker: str) -> list[str]:
    return [keys.inflight(worker), keys.suspect, keys.deaths, keys.wake, keys.workers,
            keys.heartbeat(worker), *keys.queues]


def test_requeue_dead_counts_a_death_for_the_blamed_and_returns_the_rest(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    blamed, spared = inflight_id(1, 0), inflight_id(2, 1)
    redis_client.hset(keys.inflight("w1"), mapping={blamed: b"in-predict", spared: b"prefetched"})
    redis_client.sadd(keys.workers, "w1", "w2")
    redis_client.set(keys.heartbeat("w1"), b"{}")

    moved = script("requeue_dead")(keys=requeue_dead_keys(keys, "w1"),
                                   args=["w1", DEATHS_TTL, str(blamed)])

    assert moved == 2
    assert redis_client.lrange(keys.suspect, 0, -1) == [b"in-predict"]
    assert redis_client.hget(keys.deaths, b"in-predict") == b"1"
    assert 0 < redis_client.ttl(keys.deaths) <= DEATHS_TTL
    assert redis_client.lrange(keys.queues[1], 0, -1) == [b"prefetched"]
    assert redis_client.smembers(keys.workers) == {b"w2"}
    assert not redis_client.exists(keys.inflight("w1"), keys.heartbeat("w1"))
    assert redis_client.llen(keys.wake) == 1


def test_requeue_dead_with_star_blames_every_message(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    redis_client.hset(keys.inflight("w1"), mapping={inflight_id(1, 0): b"a", inflight_id(2, 3): b"b"})

    assert script("requeue_dead")(keys=requeue_dead_keys(keys, "w1"),
                                  args=["w1", DEATHS_TTL, "*"]) == 2

    assert sorted(redis_client.lrange(keys.suspect, 0, -1)) == [b"a", b"b"]
    assert redis_client.hgetall(keys.deaths) == {b"a": b"1", b"b": b"1"}
    assert all(redis_client.llen(q) == 0 for q in keys.queues)


def test_sweep_requeues_only_workers_whose_heartbeat_expired(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    redis_client.sadd(keys.workers, "gone", "alive")
    redis_client.set(keys.heartbeat("alive"), b"{}")
    redis_client.hset(keys.inflight("gone"), mapping={inflight_id(1, 0): b"x", inflight_id(2, 0): b"y"})
    redis_client.hset(keys.inflight("alive"), inflight_id(3, 0), b"z")

    swept = script("sweep")(keys=[keys.workers, keys.suspect, keys.deaths, keys.wake, *keys.queues],
                            args=[keys.heartbeat_prefix, keys.inflight_prefix, DEATHS_TTL])

    assert swept == [b"gone", 2]
    assert sorted(redis_client.lrange(keys.suspect, 0, -1)) == [b"x", b"y"]
    assert redis_client.smembers(keys.workers) == {b"alive"}
    assert redis_client.hgetall(keys.inflight("alive")) == {str(inflight_id(3, 0)).encode(): b"z"}


def test_publish_pushes_in_order_and_wakes_workers(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    accepted = script("publish")(keys=[keys.wake, *keys.queues],
                                 args=[0, 3, 1, 0, b"a", 2, b"b", 0, b"c"])

    assert accepted == 3
    assert redis_client.lrange(keys.queues[0], 0, -1) == [b"c", b"a"]
    assert redis_client.lrange(keys.queues[2], 0, -1) == [b"b"]
    assert redis_client.llen(keys.wake) == 2, "three tokens pushed, trimmed to indexes 0..1"


def test_publish_refuses_the_tail_past_the_cap(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    redis_client.lpush(keys.queues[1], b"waiting")

    accepted = script("publish")(keys=[keys.wake, *keys.queues],
                                 args=[3, 1, WAKE_CAP, 0, b"a", 0, b"b", 0, b"c"])

    assert accepted == 2
    assert redis_client.lrange(keys.queues[0], 0, -1) == [b"b", b"a"]
    full = script("publish")(keys=[keys.wake, *keys.queues], args=[3, 1, WAKE_CAP, 0, b"d"])
    assert full == 0 and redis_client.llen(keys.queues[0]) == 2


def store_call(keys: ServiceKeys, worker: str, results: list[tuple[str, bytes, int]],
               replies: list[str], acks: list[int], suspects: list[bytes], expires: int = 60
               ) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of one store.lua call: ``results`` are (task id, data, reply target)."""
    call_keys = [keys.inflight(worker), keys.deaths, *(task_meta_key(t) for t, _, _ in results),
                 *replies]
    args: list[Any] = [expires, len(results), len(acks), len(suspects),
                          *(d for _, d, _ in results), *(r for _, _, r in results),
                          *acks, *suspects]
    return call_keys, args


def test_store_sets_results_publishes_a_foreign_one_and_acks(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    ours, foreign = f"t-{uuid.uuid4().hex}", f"t-{uuid.uuid4().hex}"
    reply = reply_key(f"{keys.name}-client")
    redis_client.hset(keys.inflight("w1"), mapping={1: b"m1", 2: b"m2", 3: b"kept"})
    redis_client.hset(keys.deaths, mapping={b"m2": 1, b"other": 1})
    listener = redis_client.pubsub()
    listener.subscribe(task_meta_key(foreign))
    wait_until(lambda: listener.get_message(timeout=0.1), timeout=10, what="the subscription")
    try:
        call_keys, args = store_call(keys, "w1", [(ours, b"r1", 1), (foreign, b"r2", 0)],
                                     [reply], acks=[1, 2], suspects=[b"m2"], expires=30)
        assert script("store")(keys=call_keys, args=args) == 2

        assert redis_client.get(task_meta_key(ours)) == b"r1"
        assert redis_client.get(task_meta_key(foreign)) == b"r2"
        assert 0 < redis_client.ttl(task_meta_key(ours)) <= 30
        assert redis_client.lrange(reply, 0, -1) == [b"r1"]
        assert 0 < redis_client.ttl(reply) <= 30
        published = wait_until(lambda: listener.get_message(timeout=0.1), timeout=10,
                               what="the foreign result published")
        assert published["data"] == b"r2"
        assert redis_client.hgetall(keys.inflight("w1")) == {b"3": b"kept"}
        assert redis_client.hgetall(keys.deaths) == {b"other": b"1"}
    finally:
        listener.close()
        redis_client.delete(task_meta_key(ours), task_meta_key(foreign), reply)


def test_store_slices_argument_lists_longer_than_one_unpack(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    """10,000 results for one client and 10,000 acks: past unpack's ~8,000 values, so only the
    slicing in store.lua lets the RPUSH and HDEL through."""
    n = 10_000
    reply = reply_key(f"{keys.name}-client")
    task_ids = [f"t-{keys.name}-{i}" for i in range(n)]
    redis_client.hset(keys.inflight("w1"), mapping={i: f"m{i}" for i in range(n + 1)})
    suspects = [f"s{i}".encode() for i in range(n)]
    redis_client.hset(keys.deaths, mapping={s: 1 for s in suspects})
    try:
        call_keys, args = store_call(keys, "w1", [(t, f"r{i}".encode(), 1)
                                                  for i, t in enumerate(task_ids)],
                                     [reply], acks=list(range(n)), suspects=suspects)
        assert script("store")(keys=call_keys, args=args) == n

        assert redis_client.lrange(reply, 0, -1) == [f"r{i}".encode() for i in range(n)]
        assert redis_client.hgetall(keys.inflight("w1")) == {str(n).encode(): f"m{n}".encode()}
        assert not redis_client.exists(keys.deaths)
        assert redis_client.get(task_ids[-1]) is None  # result keys are the meta keys, not ids
        assert redis_client.get(task_meta_key(task_ids[-1])) == f"r{n - 1}".encode()
    finally:
        for start in range(0, n, 1000):
            redis_client.delete(*(task_meta_key(t) for t in task_ids[start:start + 1000]))
        redis_client.delete(reply)


def test_renew_and_release_owner_act_only_on_our_own_token(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    owner, status = f"wkr:{keys.name}:owner", f"wkr:{keys.name}:status"
    renew, release = script("renew_owner"), script("release_owner")
    redis_client.set(owner, "ours", ex=5)
    redis_client.set(status, "{}")

    assert renew(keys=[owner], args=["theirs", 100]) == 0
    assert redis_client.ttl(owner) <= 5
    assert renew(keys=[owner], args=["ours", 100]) == 1
    assert redis_client.ttl(owner) > 5

    assert release(keys=[owner, status], args=["theirs"]) == 0
    assert redis_client.exists(owner, status) == 2
    assert release(keys=[owner, status], args=["ours"]) == 2
    assert not redis_client.exists(owner, status)
