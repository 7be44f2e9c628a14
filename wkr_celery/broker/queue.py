"""The request queue of one service: enqueue, fetch, ack, give back, requeue, sweep.

Clients enqueue here (``publish.lua`` under the queue cap); worker processes fetch, wait for
work, ack and give back here; the supervisor and every worker's sweep requeue a dead worker's
messages here (the words are defined in docs/design.md). Each operation is one round trip, most
of them a Lua script; the asyncio client runs ``publish.lua`` on its own connection with the
arguments :func:`publish_call` builds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import redis

from .. import scripts
from ..keys import ServiceKeys
from .registry import as_str

__all__ = ["Fetched", "RequestQueue", "publish_call"]

_WAKE_CAP = 16
_DEATHS_TTL = 24 * 3600

Fetched = tuple[int, bytes, int]
"""One fetched message: inflight id, raw envelope, worker deaths it was part of."""


class RequestQueue:
    """Scripted operations on the request lists of service ``keys.name`` on the broker Redis."""

    def __init__(self, client: redis.Redis, keys: ServiceKeys) -> None:
        self.client = client
        self.keys = keys
        self._fetch = client.register_script(scripts.FETCH)
        self._return = client.register_script(scripts.RETURN)
        self._requeue = client.register_script(scripts.REQUEUE_DEAD)
        self._sweep = client.register_script(scripts.SWEEP)
        self._publish = client.register_script(scripts.PUBLISH)

    # Client side ---------------------------------------------------------------------------

    def publish(self, items: Sequence[tuple[int, str | bytes]], *, cap: int, wake: int) -> int:
        """Push ``(list index, envelope)`` items in order; returns how many fit under ``cap``."""
        keys, args = publish_call(self.keys, items, cap=cap, wake=wake)
        return int(self._publish(keys=keys, args=args))

    # Worker side ---------------------------------------------------------------------------

    def fetch(self, worker_id: str, count: int) -> list[Fetched]:
        """Move up to ``count`` messages into this worker's inflight hash, oldest first.

        A message held by a worker that died comes alone, with its death count.
        """
        k = self.keys
        flat = self._fetch(
            keys=[k.inflight(worker_id), k.seq, k.wake, k.suspect, k.deaths, *k.queues],
            args=[count, _WAKE_CAP],
        )
        return [(int(flat[i]), flat[i + 1], int(flat[i + 2])) for i in range(0, len(flat), 3)]

    def wait_for_work(self, timeout: float) -> bool:
        """Block until a wake token arrives or ``timeout`` passes (whole seconds, at least 1)."""
        return self.client.brpop([self.keys.wake], timeout=max(1, math.ceil(timeout))) is not None

    def ack(self, worker_id: str, ids: Sequence[int], suspects: Sequence[bytes] = ()) -> None:
        """Forget messages whose results are stored."""
        if not ids:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.hdel(self.keys.inflight(worker_id), *ids)
        if suspects:
            pipe.hdel(self.keys.deaths, *suspects)
        pipe.execute()

    def held(self, worker_id: str) -> list[int]:
        """Inflight ids in this worker's hash, whether or not a fetch reply reached it."""
        return [int(i) for i in self.client.hkeys(self.keys.inflight(worker_id))]

    def give_back(self, worker_id: str, ids: Sequence[int]) -> int:
        """Put unprocessed messages back at the head of their lists (graceful stop)."""
        if not ids:
            return 0
        k = self.keys
        return int(self._return(
            keys=[k.inflight(worker_id), k.wake, k.suspect, *k.queues],
            args=sorted(ids, reverse=True),
        ))

    # Requeueing ----------------------------------------------------------------------------

    def requeue_dead(self, worker_id: str, blamed: Sequence[int] | None = None) -> int:
        """Requeue everything a worker held and take it out of the registry: a dead worker's
        (``blamed``, default all, count a death) or a stopping one's leftovers (``blamed=()``)."""
        k = self.keys
        blame = ["*"] if blamed is None else [str(i) for i in blamed]
        return int(self._requeue(
            keys=[k.inflight(worker_id), k.suspect, k.deaths, k.wake, k.workers,
                  k.heartbeat(worker_id), *k.queues],
            args=[worker_id, _DEATHS_TTL, *blame],
        ))

    def sweep(self) -> dict[str, int]:
        """Requeue the messages of every registered worker whose heartbeat has expired."""
        k = self.keys
        flat = self._sweep(
            keys=[k.workers, k.suspect, k.deaths, k.wake, *k.queues],
            args=[k.heartbeat_prefix, k.inflight_prefix, _DEATHS_TTL],
        )
        return {as_str(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}

    def take_all(self) -> list[bytes]:
        """Take every queued message off the service's lists at once (a stopping service whose
        Redis keeps nothing answers them ``RequestLost``); messages held by workers stay."""
        lists = [*self.keys.queues, self.keys.suspect]
        pipe = self.client.pipeline(transaction=True)
        for name in lists:
            pipe.lrange(name, 0, -1)
        pipe.delete(*lists)
        taken = pipe.execute()[:-1]
        return [message for messages in taken for message in messages]

    def withdraw(self, queue: str, message: bytes) -> bool:
        """Take one exact envelope back from list ``queue`` (or the suspect list) if no worker
        has fetched it yet; atomic against ``fetch.lua``. Returns whether it was still there."""
        pipe = self.client.pipeline(transaction=False)
        # redis-py's hints say str; LREM compares the bytes it is given, which is what we need
        pipe.lrem(queue, 1, message)  # type: ignore[arg-type]
        pipe.lrem(self.keys.suspect, 1, message)  # type: ignore[arg-type]
        return sum(pipe.execute()) > 0

    # Shared --------------------------------------------------------------------------------

    def queue_length(self) -> int:
        """Messages waiting in the service's lists, suspects included (not those held)."""
        pipe = self.client.pipeline(transaction=False)
        for name in (*self.keys.queues, self.keys.suspect):
            pipe.llen(name)
        return int(sum(pipe.execute()))


def publish_call(keys: ServiceKeys, items: Sequence[tuple[int, str | bytes]], *, cap: int, wake: int
                 ) -> tuple[list[str], list[Any]]:
    """The keys and arguments of one ``PUBLISH`` script call; the asyncio client runs the same
    script with them on its own connection."""
    args: list[Any] = [cap, wake, _WAKE_CAP]
    for index, message in items:
        args.append(index)
        args.append(message)
    return [keys.wake, *keys.queues], args
