"""What a stopping service does with requests nobody will serve: with an embedded Redis that
keeps nothing across a stop (no AOF), each queued request's caller is told ``RequestLost`` at
once, instead of waiting on an answer that cannot come. The answers are stored on the result
Redis, which is about to stop too, so the stop waits (briefly) until the clients took them."""

from __future__ import annotations

import time

import redis

from ..broker import Broker
from ..errors import RequestLost
from ..keys import reply_key
from ..messages import encode_meta, failure_meta, now_iso, parse_request

__all__ = ["fail_queued", "wait_taken"]


def fail_queued(broker: Broker, backend: redis.Redis, expires: int,
                reason: str) -> list[str]:
    """Take every queued request off the service's lists and store ``RequestLost(reason)`` as
    its result; returns the reply lists written (one per client), one entry per request."""
    keys = broker.keys
    lists = [*keys.queues, keys.suspect]
    pipe = broker.client.pipeline(transaction=True)
    for name in lists:
        pipe.lrange(name, 0, -1)
    pipe.delete(*lists)
    taken = pipe.execute()[:-1]
    results: list[tuple[str, bytes, str | None]] = []
    done = now_iso()
    for raw in (message for messages in taken for message in messages):
        request = parse_request(raw)
        if request.task_id is None:
            continue  # nobody could receive an answer to it
        meta = failure_meta(request.task_id, RequestLost(reason), None, done)
        results.append((request.task_id, encode_meta(meta), request.client_id))
    if results:
        broker.store_results(backend, results, expires)
    return [reply_key(client_id) for _, _, client_id in results if client_id is not None]


def wait_taken(backend: redis.Redis, reply_lists: list[str], timeout: float) -> bool:
    """Wait until the clients have popped these reply lists (a closed client never will), up to
    ``timeout`` seconds; returns whether they did."""
    names = sorted(set(reply_lists))
    deadline = time.monotonic() + timeout
    while names:
        pipe = backend.pipeline(transaction=False)
        for name in names:
            pipe.exists(name)
        names = [name for name, left in zip(names, pipe.execute()) if left]
        if not names or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return not names
