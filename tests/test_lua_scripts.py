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
from wkr_celery.keys import SERVICES, ServiceKeys, reply_key, task_meta_key

from .helpers import wait_until

DEATHS_TTL = 3600
NUDGE = scripts.NUDGE


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
    return [keys.inflight(worker), keys.seq, keys.suspect, keys.deaths, *keys.queues]


def test_the_loader_puts_the_needed_library_in_front_of_a_script() -> None:
    lists_and_nudge = scripts.load("lib/keys") + "\n" + scripts.load("lib/nudge") + "\n"
    library = lists_and_nudge + scripts.load("lib/requeue") + "\n"
    assert scripts.REQUEUE_DEAD.startswith(library)
    assert scripts.SWEEP.startswith(library)
    assert "local function requeue" not in scripts.FETCH
    assert scripts.FETCH.startswith(lists_and_nudge)


def test_fetch_takes_the_oldest_messages_in_serving_order_and_records_their_source(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    redis_client.lpush(keys.queues[1], b"n1", b"n2")
    redis_client.lpush(keys.queues[0], b"h1")
    redis_client.set(keys.seq, 0)

    got = script("fetch")(keys=fetch_keys(keys, "w1"), args=[2])

    assert got == [inflight_id(1, 0), b"h1", 0, inflight_id(2, 1), b"n1", 0]
    assert redis_client.hgetall(keys.inflight("w1")) == {
        str(inflight_id(1, 0)).encode(): b"h1", str(inflight_id(2, 1)).encode(): b"n1"}
    assert redis_client.lrange(keys.queues[1], 0, -1) == [b"n2"], (
        "work is left on the arrivals list, which wakes an idle worker by itself: no nudge")


def test_fetch_drops_nudges_and_nudges_idle_peers_when_work_is_left_elsewhere(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    redis_client.lpush(keys.arrivals, NUDGE, b"n1", NUDGE, NUDGE, b"n2")
    redis_client.lpush(keys.queues[2], b"low1", b"low2")

    got = script("fetch")(keys=fetch_keys(keys, "w1"), args=[3])

    assert [m for m in got[1::3]] == [b"n1", b"n2", b"low1"], "nudges are no messages"
    assert redis_client.lrange(keys.queues[2], 0, -1) == [b"low2"]
    assert redis_client.lrange(keys.arrivals, 0, -1) == [NUDGE], (
        "work is left on another list: an idle worker blocked on the arrivals list is nudged")


def test_fetch_takes_a_suspect_alone_with_its_death_count(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    redis_client.lpush(keys.queues[0], b"ok")
    redis_client.lpush(keys.suspect, b"bad1", b"bad2")
    redis_client.hset(keys.deaths, b"bad1", 2)
    redis_client.set(keys.seq, 0)

    got = script("fetch")(keys=fetch_keys(keys, "w1"), args=[8])

    assert got == [inflight_id(1, scripts.SUSPECT_SOURCE), b"bad1", 2]
    assert redis_client.llen(keys.queues[0]) == 1
    assert redis_client.lrange(keys.arrivals, 0, -1) == [NUDGE], "another suspect waits"


def _broker_micros(client: redis.Redis) -> int:
    """The broker's clock in microseconds since 2024-01-01 (fetch.lua's epoch)."""
    seconds, micros = client.time()
    return (seconds - 1704067200) * 1_000_000 + micros


def test_fetch_starts_a_missing_counter_from_the_broker_clock_with_exact_ids(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    redis_client.lpush(keys.arrivals, b"n1", b"n2", b"n3")
    before = _broker_micros(redis_client)

    got = script("fetch")(keys=fetch_keys(keys, "w1"), args=[3])

    after = _broker_micros(redis_client)
    ids = got[0::3]
    assert before < ids[0] // 8 <= after + 1, (before, ids, after)
    assert ids == [inflight_id(ids[0] // 8 + j, 1) for j in range(3)]
    assert max(ids) < 2**53 // 8, "ids stay far below 2^53, where doubles stop being exact"
    assert redis_client.hkeys(keys.inflight("w1")) == [str(i).encode() for i in ids], (
        "fields are written as plain integers, never with an exponent")
    assert int(redis_client.get(keys.seq)) == ids[-1] // 8


def test_fetch_never_issues_a_worker_an_id_at_or_below_the_highest_it_got(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    redis_client.lpush(keys.arrivals, b"n1", b"n2")
    redis_client.set(keys.seq, 5)  # a counter restarted below what the worker holds
    highest = inflight_id(1000, scripts.SUSPECT_SOURCE)

    got = script("fetch")(keys=fetch_keys(keys, "w1"), args=[2, highest])

    assert got[0::3] == [inflight_id(1001, 1), inflight_id(1002, 1)]
    assert redis_client.get(keys.seq) == b"1002"


def test_fetch_on_empty_lists_returns_nothing_and_writes_nothing(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    assert script("fetch")(keys=fetch_keys(keys, "w1"), args=[4]) == []
    assert not redis_client.exists(keys.inflight("w1"), keys.seq, *keys.queues)


def test_return_puts_messages_back_at_the_head_of_the_lists_they_came_from(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    redis_client.lpush(keys.queues[2], b"later")
    held = {inflight_id(1, 2): b"low1", inflight_id(2, 2): b"low2",
            inflight_id(3, scripts.SUSPECT_SOURCE): b"bad"}
    redis_client.hset(keys.inflight("w1"), mapping=held)  # type: ignore[arg-type]

    redis_client.lpush(keys.landing("w1"), b"landed")
    ids = [*sorted(held, reverse=True), inflight_id(9, 0)]

    returned = script("return")(
        keys=[keys.inflight("w1"), keys.landing("w1"), keys.suspect, *keys.queues],
        args=[len(ids), *ids, b"landed", b"not-landed"])

    assert returned == 4, "an id no longer held, a message no longer landed, are skipped"
    assert redis_client.lrange(keys.queues[2], 0, -1) == [b"later", b"low2", b"low1"]
    assert redis_client.lrange(keys.suspect, 0, -1) == [b"bad"]
    assert redis_client.lrange(keys.arrivals, 0, -1) == [b"landed"], (
        "a landed message goes back to the head of the arrivals list, which wakes a worker")
    assert not redis_client.exists(keys.inflight("w1"), keys.landing("w1"))


def requeue_dead_keys(keys: ServiceKeys, worker: str) -> list[str]:
    return [keys.inflight(worker), keys.landing(worker), keys.suspect, keys.deaths, keys.workers,
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


def test_requeue_dead_blames_ids_longer_than_lua_prints_without_an_exponent(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    seq = _broker_micros(redis_client)  # what fetch.lua issues: 15 digits once times 8
    blamed, spared = inflight_id(seq, 0), inflight_id(seq + 1, 1)
    redis_client.hset(keys.inflight("w1"), mapping={blamed: b"in-predict", spared: b"prefetched"})

    script("requeue_dead")(keys=requeue_dead_keys(keys, "w1"),
                           args=["w1", DEATHS_TTL, str(blamed)])

    assert redis_client.lrange(keys.suspect, 0, -1) == [b"in-predict"]
    assert redis_client.lrange(keys.queues[1], 0, -1) == [b"prefetched"]


def test_requeue_dead_covers_the_landing_list_blamed_by_the_landed_id(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    redis_client.hset(keys.inflight("w1"), inflight_id(1, 0), b"prefetched")
    redis_client.lpush(keys.landing("w1"), b"landed-first", NUDGE, b"landed-then")
    redis_client.lpush(keys.landing("w2"), b"in-predict")
    redis_client.lpush(keys.queues[2], b"low")

    spared = script("requeue_dead")(keys=requeue_dead_keys(keys, "w1"),
                                    args=["w1", DEATHS_TTL, str(inflight_id(1, 0))])
    blamed = script("requeue_dead")(keys=requeue_dead_keys(keys, "w2"),
                                    args=["w2", DEATHS_TTL, str(scripts.LANDED_ID)])

    assert (spared, blamed) == (3, 1), "the nudge is no message"
    assert redis_client.lrange(keys.arrivals, 0, -1) == [b"landed-then", b"landed-first"], (
        "landed messages go back to the head of the arrivals list, oldest nearest it")
    assert redis_client.lrange(keys.suspect, 0, -1) == [b"prefetched", b"in-predict"]
    assert redis_client.hgetall(keys.deaths) == {b"prefetched": b"1", b"in-predict": b"1"}
    assert not redis_client.exists(keys.landing("w1"), keys.landing("w2"), keys.inflight("w1"))


def test_requeue_dead_with_star_blames_every_message(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    redis_client.hset(keys.inflight("w1"), mapping={inflight_id(1, 0): b"a", inflight_id(2, 3): b"b"})

    assert script("requeue_dead")(keys=requeue_dead_keys(keys, "w1"),
                                  args=["w1", DEATHS_TTL, "*"]) == 2

    assert sorted(redis_client.lrange(keys.suspect, 0, -1)) == [b"a", b"b"]
    assert redis_client.hgetall(keys.deaths) == {b"a": b"1", b"b": b"1"}
    assert [redis_client.lrange(q, 0, -1) for q in keys.queues] == [[], [NUDGE], [], []], (
        "no message back on a queue list; idle workers nudged to serve the suspects")


def test_sweep_requeues_only_workers_whose_heartbeat_expired(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    redis_client.sadd(keys.workers, "gone", "alive")
    redis_client.set(keys.heartbeat("alive"), b"{}")
    redis_client.hset(keys.inflight("gone"), mapping={inflight_id(1, 0): b"x", inflight_id(2, 0): b"y"})
    redis_client.hset(keys.inflight("alive"), inflight_id(3, 0), b"z")

    redis_client.lpush(keys.landing("gone"), b"w")
    redis_client.lpush(keys.landing("alive"), b"v")

    swept = script("sweep")(keys=[keys.workers, keys.suspect, keys.deaths, *keys.queues],
                            args=[keys.heartbeat_prefix, keys.inflight_prefix,
                                  keys.landing_prefix, DEATHS_TTL])

    assert swept == [b"gone", 3]
    assert sorted(redis_client.lrange(keys.suspect, 0, -1)) == [b"w", b"x", b"y"]
    assert redis_client.lrange(keys.landing("alive"), 0, -1) == [b"v"]
    assert redis_client.lrange(keys.arrivals, 0, -1) == [NUDGE], "suspects wait: idle peers nudged"
    assert redis_client.smembers(keys.workers) == {b"alive"}
    assert redis_client.hgetall(keys.inflight("alive")) == {str(inflight_id(3, 0)).encode(): b"z"}


def test_publish_pushes_in_order_and_nudges_idle_workers_only_for_other_lists(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    publish_keys = [*keys.queues, keys.info, keys.totals]
    accepted = script("publish")(keys=publish_keys, args=[0, 0, b"a", 2, b"b", 0, b"c"])

    assert accepted == 3
    assert redis_client.lrange(keys.queues[0], 0, -1) == [b"c", b"a"]
    assert redis_client.lrange(keys.queues[2], 0, -1) == [b"b"]
    assert redis_client.lrange(keys.arrivals, 0, -1) == [NUDGE], "one nudge, however many sent"

    assert script("publish")(keys=[*keys.queues, keys.info, keys.totals], args=[0, 1, b"n"]) == 1
    assert script("publish")(keys=[*keys.queues, keys.info, keys.totals], args=[0, 0, b"d"]) == 1
    assert redis_client.lrange(keys.arrivals, 0, -1) == [b"n", NUDGE], (
        "a non-empty arrivals list has no worker blocked on it: no second nudge")


def test_publish_pushes_runs_longer_than_one_lpush_takes_in_order_and_to_their_lists(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    # Each run of messages for one list goes out in LPUSHes of at most 1,000 (Lua's unpack
    # limit is 8,000 values); 8,500 + 3 + 1,200 crosses both a slice and a list boundary.
    plan = [(1, f"n{i}".encode()) for i in range(8500)] + [
        (0, f"h{i}".encode()) for i in range(3)] + [(1, f"m{i}".encode()) for i in range(1200)]
    args: list[object] = [0]
    for index, message in plan:
        args += [index, message]
    publish_keys = [*keys.queues, keys.info, keys.totals]
    assert script("publish")(keys=publish_keys, args=args) == len(plan)
    for index in (0, 1):
        oldest_first = redis_client.lrange(keys.queues[index], 0, -1)[::-1]
        assert oldest_first == [m for i, m in plan if i == index]
    capped = script("publish")(keys=publish_keys, args=[9703 + 999] + args[1:2003])
    assert capped == 999  # 9,703 waiting, room for 999 of the 1,001 sent


def test_publish_refuses_the_tail_past_the_cap_and_counts_what_it_refused(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    redis_client.lpush(keys.queues[1], b"waiting")

    publish_keys = [*keys.queues, keys.info, keys.totals]
    accepted = script("publish")(keys=publish_keys, args=[3, 0, b"a", 0, b"b", 0, b"c"])

    assert accepted == 2
    assert redis_client.lrange(keys.queues[0], 0, -1) == [b"b", b"a"]
    full = script("publish")(keys=[*keys.queues, keys.info, keys.totals], args=[3, 0, b"d"])
    assert full == 0 and redis_client.llen(keys.queues[0]) == 2
    assert redis_client.hget(keys.totals, "refused") == b"2"  # c, then d: counted for /metrics
    redis_client.set(keys.totals, b"not a hash")  # spoiled: the count is lost, not the publish
    assert script("publish")(keys=[*keys.queues, keys.info, keys.totals], args=[4, 0, b"e"]) == 1


def test_publish_holds_to_the_services_own_cap_and_survives_a_spoiled_one(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    """The cap in the info hash wins over the sender's (a client connected across a restart
    with another -max_queue); an info key someone made another type leaves the sender's."""
    publish = script("publish")
    redis_client.hset(keys.info, "max_queue", 1)
    assert publish(keys=[*keys.queues, keys.info, keys.totals], args=[3, 0, b"a", 0, b"b"]) == 1
    redis_client.delete(keys.info, *keys.queues)
    redis_client.set(keys.info, b"not a hash")
    assert publish(keys=[*keys.queues, keys.info, keys.totals], args=[1, 0, b"a", 0, b"b"]) == 1


def store_call(keys: ServiceKeys, worker: str, results: list[tuple[str, bytes, int]],
               replies: list[str], acks: list[int], suspects: list[bytes], expires: int = 60,
               landed: tuple[bytes, ...] = ()) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of one store.lua call: ``results`` are (task id, data, reply target)."""
    call_keys = [keys.inflight(worker), keys.deaths, keys.landing(worker),
                 *(task_meta_key(t) for t, _, _ in results), *replies]
    args: list[Any] = [expires, len(results), len(acks), len(suspects), len(landed),
                       *(d for _, d, _ in results), *(r for _, _, r in results),
                       *acks, *suspects, *landed]
    return call_keys, args


def test_store_sets_results_publishes_a_foreign_one_and_acks(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    ours, foreign = f"t-{uuid.uuid4().hex}", f"t-{uuid.uuid4().hex}"
    reply = reply_key(f"{keys.name}-client")
    redis_client.hset(keys.inflight("w1"), mapping={1: b"m1", 2: b"m2", 3: b"kept"})
    redis_client.hset(keys.deaths, mapping={b"m2": 1, b"other": 1})
    redis_client.lpush(keys.landing("w1"), b"landed-acked", b"landed-next")
    listener = redis_client.pubsub()
    listener.subscribe(task_meta_key(foreign))
    wait_until(lambda: listener.get_message(timeout=0.1), timeout=10, what="the subscription")
    try:
        call_keys, args = store_call(keys, "w1", [(ours, b"r1", 1), (foreign, b"r2", 0)],
                                     [reply], acks=[1, 2], suspects=[b"m2"], expires=30,
                                     landed=(b"landed-acked",))
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
        assert redis_client.lrange(keys.landing("w1"), 0, -1) == [b"landed-next"], (
            "a landed message is acked by value: one landed since stays")
    finally:
        listener.close()
        redis_client.delete(task_meta_key(ours), task_meta_key(foreign), reply)


def test_store_skips_a_reply_key_of_another_type_and_still_stores_and_acks(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    """A reply key someone made a string once failed the whole script (WRONGTYPE): the worker
    died with its batch unacked, and so did every worker that fetched it again."""
    taken, good = reply_key(f"{keys.name}-taken"), reply_key(f"{keys.name}-good")
    first, second = f"t-{uuid.uuid4().hex}", f"t-{uuid.uuid4().hex}"
    redis_client.set(taken, b"not a list")
    redis_client.hset(keys.inflight("w1"), mapping={1: b"m1", 2: b"m2"})
    try:
        call_keys, args = store_call(keys, "w1", [(first, b"r1", 1), (second, b"r2", 2)],
                                     [taken, good], acks=[1, 2], suspects=[])
        assert script("store")(keys=call_keys, args=args) == 2

        assert redis_client.get(task_meta_key(first)) == b"r1"  # recovery reads it there
        assert redis_client.get(task_meta_key(second)) == b"r2"
        assert redis_client.get(taken) == b"not a list"
        assert redis_client.lrange(good, 0, -1) == [b"r2"]
        assert not redis_client.exists(keys.inflight("w1"))
    finally:
        redis_client.delete(taken, good, task_meta_key(first), task_meta_key(second))


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


def test_unlist_takes_the_name_off_only_when_no_registered_worker_has_a_heartbeat(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    unlist = script("unlist")
    call = {"keys": [SERVICES, keys.workers], "args": [keys.name, keys.heartbeat_prefix]}
    redis_client.sadd(SERVICES, keys.name, "other")
    redis_client.sadd(keys.workers, "killed", "elsewhere")  # killed: its heartbeat expired
    redis_client.set(keys.heartbeat("elsewhere"), b"{}")
    assert unlist(**call) == 0  # another host still serves the name
    assert redis_client.sismember(SERVICES, keys.name)
    redis_client.delete(keys.heartbeat("elsewhere"))
    assert unlist(**call) == 1
    assert redis_client.smembers(SERVICES) >= {b"other"}
    assert not redis_client.sismember(SERVICES, keys.name)
    redis_client.srem(SERVICES, "other")


def test_write_info_keeps_the_newest_deploys_info_unless_told_that_deploy_is_gone(
        redis_client: redis.Redis, keys: ServiceKeys, script: Callable[[str], Script]) -> None:
    write = script("write_info")

    def call(deployed: str, orphan: str = "", **info: str) -> int:
        fields = [w for k, v in {**info, "deployed": deployed}.items() for w in (k, v)]
        return int(write(keys=[keys.info, SERVICES], args=[keys.name, deployed, orphan, *fields]))

    redis_client.srem(SERVICES, keys.name)
    assert call("100.5", input_shape="[4]", max_queue="9") == 1
    assert redis_client.sismember(SERVICES, keys.name)
    assert call("200.25", max_queue="0") == 1  # newer: replaces it whole
    assert redis_client.hgetall(keys.info) == {b"max_queue": b"0", b"deployed": b"200.25"}
    assert call("100.5", input_shape="[4]") == 0  # older: the newer deploy's stands
    assert call("100.5", orphan="150", input_shape="[4]") == 0  # gone, but not the one named
    assert redis_client.hget(keys.info, "deployed") == b"200.25"
    assert call("100.5", orphan="200.25", input_shape="[4]") == 1  # the named one is gone
    assert redis_client.hgetall(keys.info) == {b"input_shape": b"[4]", b"deployed": b"100.5"}
    assert call("100.5", input_shape="[5]") == 1  # the same deploy writes again
    redis_client.hset(keys.info, "deployed", "not a number")
    assert call("50") == 1  # no deploy a version wrote: replaced
    redis_client.delete(keys.info)
    redis_client.rpush(keys.info, "spoiled")
    assert call("60", max_queue="1") == 1  # another type: deleted, then written
    assert redis_client.hgetall(keys.info) == {b"max_queue": b"1", b"deployed": b"60"}
