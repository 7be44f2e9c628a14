"""What a stopping service leaves behind on Redis.

* Requests nobody will serve: with an embedded Redis that keeps nothing across a stop (no AOF),
  each queued request's caller is told ``RequestLost`` at once, instead of waiting on an answer
  that cannot come. The answers are stored on the result Redis, which is about to stop too, so
  the stop waits (briefly) until the clients took them.
* Its name in the services list (``wkr:services``), which status tools, dashboards and clients
  that name no service read: the last worker of the name to stop gracefully, and a stopping
  supervisor once its workers are gone, take it off (:func:`unlist_if_unserved`).
"""

from __future__ import annotations

import logging
import time

import redis

from ..broker import RequestQueue, ResultStore, ServiceRegistry, StoredResult
from ..connections import REDIS_ERRORS
from ..errors import RequestLost
from ..keys import reply_key
from ..messages import encode_meta, failure_meta, now_iso, parse_request

__all__ = ["fail_queued", "unlist_if_unserved", "wait_taken"]

log = logging.getLogger("wkr_celery.server")


def unlist_if_unserved(registry: ServiceRegistry | None) -> None:
    """The service stops here: its name leaves the services list unless a worker of it still
    has a heartbeat (on another host, or one of ours still stopping). A broker that cannot be
    reached now, or one that refuses (a Redis user without the right, a key someone made
    another type), leaves it listed, which is said: it never stops the stop."""
    if registry is None:  # stopped before it reached the broker
        return
    name = registry.keys.name
    try:
        if registry.unlist():
            log.info("service %r unlisted: no live worker of it is left", name)
    except (*REDIS_ERRORS, redis.RedisError) as exc:
        log.warning("could not take service %r off the services list: %s", name, exc)


def fail_queued(queue: RequestQueue, results: ResultStore, expires: int,
                reason: str) -> list[str]:
    """Take every queued request off the service's lists and store ``RequestLost(reason)`` as
    its result; returns the reply lists written (one per client), one entry per request."""
    answers: list[StoredResult] = []
    done = now_iso()
    for raw in queue.take_all():
        request = parse_request(raw)
        if request.task_id is None:
            continue  # nobody could receive an answer to it
        meta = failure_meta(request.task_id, RequestLost(reason), None, done)
        answers.append((request.task_id, encode_meta(meta), request.client_id))
    if answers:
        results.store(answers, expires)
    return [reply_key(client_id) for _, _, client_id in answers if client_id is not None]


def wait_taken(results: ResultStore, reply_lists: list[str], timeout: float) -> bool:
    """Wait until the clients have popped these reply lists (a closed client never will), up to
    ``timeout`` seconds; returns whether they did."""
    names = sorted(set(reply_lists))
    deadline = time.monotonic() + timeout
    while names:
        names = results.untaken(names)
        if not names or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return not names
