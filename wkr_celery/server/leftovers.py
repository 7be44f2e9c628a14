"""What a stopping service does with requests nobody will serve: with an embedded Redis that
keeps nothing across a stop (no AOF), each queued request's caller is told ``RequestLost`` at
once, instead of waiting on an answer that cannot come."""

from __future__ import annotations

import redis

from ..broker import Broker
from ..errors import RequestLost
from ..messages import encode_meta, failure_meta, now_iso, parse_request

__all__ = ["fail_queued"]


def fail_queued(broker: Broker, backend: redis.Redis, expires: int, reason: str) -> int:
    """Take every queued request off the service's lists and store ``RequestLost(reason)`` as
    its result; returns how many callers were told."""
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
    return len(results)
