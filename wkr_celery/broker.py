"""Broker operations on one service's keys, each one round trip, most of them a Lua script.

Worker processes fetch, store, ack, give back and heartbeat here; the supervisor requeues a dead
worker's messages here; clients publish here (the words are defined in docs/design.md). No other
code runs the scripts on a service's keys but the asyncio client, which runs ``publish.lua``
with the arguments :func:`publish_call` builds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from . import scripts
from .keys import SERVICES, ServiceKeys, reply_key, task_meta_key

__all__ = ["Broker", "Fetched", "as_str", "publish_call"]

_WAKE_CAP = 16
_DEATHS_TTL = 24 * 3600

Fetched = tuple[int, bytes, int]
"""One fetched message: inflight id, raw envelope, worker deaths it was part of."""


class Broker:
    """Scripted operations on the broker Redis for service ``keys.name``."""

    def __init__(self, client: redis.Redis, keys: ServiceKeys) -> None:
        self.client = client
        self.keys = keys
        self._fetch = client.register_script(scripts.FETCH)
        self._return = client.register_script(scripts.RETURN)
        self._requeue = client.register_script(scripts.REQUEUE_DEAD)
        self._sweep = client.register_script(scripts.SWEEP)
        self._publish = client.register_script(scripts.PUBLISH)
        self._store = client.register_script(scripts.STORE)

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

    def store_results(
        self,
        backend: redis.Redis,
        results: Sequence[tuple[str, bytes, str | None]],
        expires: int,
        *,
        ack: tuple[str, Sequence[int], Sequence[bytes]] | None = None,
    ) -> None:
        """Store ``(task_id, encoded meta, client id or None)`` results on ``backend`` in one
        command: each client's results go onto its reply list, a foreign producer's are
        ``PUBLISH``ed. With ``ack`` = (worker id, ids, suspects), also forget those messages, which
        is only right when ``backend`` is this broker's Redis."""
        targets: dict[str, int] = {}
        keys: list[Any] = [self.keys.inflight(ack[0]) if ack else "", self.keys.deaths]
        datas: list[Any] = []
        where: list[int] = []
        for task_id, data, client_id in results:
            keys.append(task_meta_key(task_id))
            datas.append(data)
            where.append(0 if client_id is None
                         else targets.setdefault(client_id, len(targets) + 1))
        keys.extend(reply_key(client_id) for client_id in targets)
        ids, suspects = (ack[1], ack[2]) if ack else ((), ())
        self._store(keys=keys, args=[expires, len(results), len(ids), len(suspects), *datas,
                                     *where, *ids, *suspects], client=backend)

    def give_back(self, worker_id: str, ids: Sequence[int]) -> int:
        """Put unprocessed messages back at the head of their lists (graceful stop)."""
        if not ids:
            return 0
        k = self.keys
        return int(self._return(
            keys=[k.inflight(worker_id), k.wake, k.suspect, *k.queues],
            args=sorted(ids, reverse=True),
        ))

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

    def heartbeat(self, worker_id: str, status: bytes, ttl: float) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.keys.heartbeat(worker_id), status, px=int(ttl * 1000))
        pipe.sadd(self.keys.workers, worker_id)
        pipe.sadd(SERVICES, self.keys.name)
        pipe.execute()

    def write_info(self, info: Mapping[str, Any]) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.keys.info, mapping={k: str(v) for k, v in info.items()})
        pipe.sadd(SERVICES, self.keys.name)
        pipe.execute()

    def record_failure(self, text: str, ttl: float) -> None:
        """Keep why the last worker died (supervisor side); the service is listed, so a client
        that names no service finds it and reports this instead of "no service"."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.keys.failure, text, ex=max(1, int(ttl)))
        pipe.sadd(SERVICES, self.keys.name)
        pipe.execute()

    # Shared --------------------------------------------------------------------------------

    def info(self) -> dict[str, str]:
        return {as_str(k): as_str(v) for k, v in self.client.hgetall(self.keys.info).items()}

    def write_scaling(self, state: Mapping[str, Any], ttl: float) -> None:
        """The supervisor's elastic-worker state; it expires when no supervisor renews it."""
        pipe = self.client.pipeline()
        pipe.hset(self.keys.scaling, mapping={k: str(v) for k, v in state.items()})
        pipe.expire(self.keys.scaling, max(1, math.ceil(ttl)))
        pipe.execute()

    def scaling(self) -> dict[str, str]:
        """What :meth:`write_scaling` wrote; empty when the service is not elastic."""
        return {as_str(k): as_str(v) for k, v in self.client.hgetall(self.keys.scaling).items()}

    def last_failure(self) -> str:
        """The last worker failure the supervisor recorded, or ``""``."""
        value = self.client.get(self.keys.failure)
        return as_str(value) if value is not None else ""

    def live_workers(self) -> dict[str, bytes]:
        """Heartbeat payloads of workers alive now, by worker id."""
        ids = sorted(as_str(w) for w in self.client.smembers(self.keys.workers))
        if not ids:
            return {}
        beats = self.client.mget([self.keys.heartbeat(w) for w in ids])
        return {w: b for w, b in zip(ids, beats) if isinstance(b, bytes)}

    def queue_length(self) -> int:
        pipe = self.client.pipeline(transaction=False)
        for name in (*self.keys.queues, self.keys.suspect):
            pipe.llen(name)
        return int(sum(pipe.execute()))

    # Client side ---------------------------------------------------------------------------

    def publish(self, items: Sequence[tuple[int, str | bytes]], *, cap: int, wake: int) -> int:
        """Push ``(list index, envelope)`` items in order; returns how many fit under ``cap``."""
        keys, args = publish_call(self.keys, items, cap=cap, wake=wake)
        return int(self._publish(keys=keys, args=args))


def publish_call(keys: ServiceKeys, items: Sequence[tuple[int, str | bytes]], *, cap: int, wake: int
                 ) -> tuple[list[str], list[Any]]:
    """The keys and arguments of one ``PUBLISH`` script call; the asyncio client runs the same
    script with them on its own connection."""
    args: list[Any] = [cap, wake, _WAKE_CAP]
    for index, message in items:
        args.append(index)
        args.append(message)
    return [keys.wake, *keys.queues], args


def as_str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
