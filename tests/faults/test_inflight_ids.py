"""Inflight ids across a broker restarted empty: a worker still holds the ids it got before, so
the ids issued after must be new, or an ack of an old one removes a new message from its hash
(and a crash then loses it) and a forgotten old one makes ``reconcile`` run a new one twice."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis as redis_py

from tests.helpers import Service, wait_until
from wkr_celery.broker import RequestQueue
from wkr_celery.keys import ServiceKeys, task_meta_key
from wkr_celery.messages import build_request, decode_meta, encode_body, parse_request

from .conftest import OwnRedis


def _fetch_all(url: str, keys: ServiceKeys, worker_id: str, count: int) -> list[int]:
    """Push ``count`` messages and fetch them as ``worker_id`` through a queue of its own (a
    fresh process: it remembers no id)."""
    with redis_py.Redis.from_url(url) as client:
        client.lpush(keys.arrivals, *[f"m{n}" for n in range(count)])
        fetched = RequestQueue(client, keys).fetch(worker_id, count)
    assert len(fetched) == count
    return [inflight_id for inflight_id, _, _ in fetched]


@pytest.mark.timeout(30)
def test_ids_issued_after_an_empty_broker_restart_are_above_all_issued_before(
    own_redis: Callable[..., OwnRedis],
) -> None:
    broker = own_redis(persist=False)
    keys = ServiceKeys(f"f{uuid.uuid4().hex[:10]}")
    before = _fetch_all(broker.url, keys, "w1", 50)

    broker.restart()

    after = _fetch_all(broker.url, keys, "w1", 50)
    assert min(after) > max(before), (
        f"ids repeat after the restart: {sorted(set(before) & set(after))[:5]}")


def _envelope(task_id: str, n: int) -> bytes:
    """A foreign producer's request (no reply list): it needs no client to notice the restart."""
    return build_request(task_id, encode_body(n), queue="q", priority=3, client_id=None,
                         deadline=None, argsrepr=repr(n)).encode()


def _unaccounted(inspect: redis_py.Redis, keys: ServiceKeys, worker_id: str,
                 task_ids: list[str]) -> list[str]:
    """Those of ``task_ids`` that are neither answered nor anywhere on the broker (queued,
    landed or in the worker's inflight hash), read in one transaction: store.lua stores and acks
    in one step on one Redis, so every request is always in one of these places."""
    pipe = inspect.pipeline(transaction=True)
    for name in (*keys.queues, keys.suspect, keys.landing(worker_id)):
        pipe.lrange(name, 0, -1)
    pipe.hvals(keys.inflight(worker_id))
    pipe.mget([task_meta_key(t) for t in task_ids])
    *lists, answers = pipe.execute()
    held = {parse_request(raw).task_id for messages in lists for raw in messages}
    return [t for t, answer in zip(task_ids, answers) if answer is None and t not in held]


@pytest.mark.timeout(60)
def test_a_worker_holding_old_ids_across_an_empty_restart_never_drops_a_new_request(
    own_redis: Callable[..., OwnRedis], serve_on: Callable[..., Service]
) -> None:
    broker = own_redis(persist=False)
    # Half a second a batch of 2, 12 buffered: the worker holds its old ids for seconds.
    service = serve_on(broker.url, "tests.faults.workers.VerySlowDoubler", "-batch_size", "2",
                       "-prefetch", "6", "-num_worker", "1")
    (worker_id,) = service.live_workers()
    keys = service.queue.keys
    old = service.client()
    for n in range(20):
        old.encode(n)
    with redis_py.Redis.from_url(broker.url) as inspect:
        wait_until(lambda: inspect.hlen(keys.inflight(worker_id)) >= 12, timeout=20,
                   what="the worker to fetch a full buffer")
    broker.restart()  # the queued rest is lost; the worker holds what it fetched, old ids

    new = {uuid.uuid4().hex: n for n in range(6)}
    seen: list[list[str]] = []
    with redis_py.Redis.from_url(broker.url) as inspect:
        inspect.lpush(keys.arrivals, *[_envelope(t, n) for t, n in new.items()])

        def answered() -> bool:
            seen.append(_unaccounted(inspect, keys, worker_id, list(new)))
            return all(inspect.exists(task_meta_key(t)) for t in new)

        wait_until(answered, timeout=30, what="the new requests' answers")
        metas: list[dict[str, Any]] = [decode_meta(inspect.get(task_meta_key(t))) for t in new]
    lost = sorted({t for missing in seen for t in missing})
    assert not lost, (f"{len(lost)} new request(s) were answered by no one and held nowhere for "
                      "a while: an ack of an old id removed them from the inflight hash")
    assert [(m["status"], m["result"]) for m in metas] == [("SUCCESS", 2 * n)
                                                           for n in new.values()]
    assert len(seen) > 10, "the answers came before the check looked: it proved nothing"
