"""The request queue of one service: enqueue, fetch, ack, give back, requeue, sweep.

Clients enqueue here (``publish.lua`` under the queue cap); worker processes fetch, wait for
work, ack and give back here; the supervisor and every worker's sweep requeue a dead worker's
messages here (the words are defined in docs/design.md). Each operation is one round trip, most
of them a Lua script; the asyncio client runs ``publish.lua`` on its own connection with the
arguments :func:`publish_call` builds, and withdraws requests and counts the queue with the
plans (:mod:`.plan`) that :meth:`RequestQueue.withdraw` and :meth:`RequestQueue.queue_length`
run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import redis
from redis.exceptions import NoScriptError, ResponseError

from .. import scripts
from ..connections import REDIS_ERRORS
from ..keys import ServiceKeys
from .lane import Lane
from .plan import Plan, ping_plan, run
from .registry import as_str

__all__ = ["Fetched", "RequestQueue", "cap_plan", "publish_call", "queue_length_plan", "withdraw_plan"]

_DEATHS_TTL = 24 * 3600
#: Envelopes one round trip of :func:`withdraw_plan` takes back (two ``LREM`` each).
WITHDRAW_CHUNK = 500

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
        self._lane = Lane(client)  # publish, land and fetch: the latency path
        self._blmove = True  # Redis 6.2 and later; else BRPOPLPUSH, its older spelling
        #: The highest inflight id each worker fetched through this queue: ``fetch.lua`` issues
        #: it only higher ones, even from a counter a broker restarted empty has lost.
        self._highest: dict[str, int] = {}

    # Client side ---------------------------------------------------------------------------

    def publish(self, items: Sequence[tuple[int, str | bytes]], *, cap: int) -> int:
        """Push ``(list index, envelope)`` items in order; returns how many fit under the
        service's cap (``cap`` where its info names none)."""
        keys, args = publish_call(self.keys, items, cap=cap)
        return int(self._lane.run_script(self._publish, keys, args))

    def cap(self, fallback: int) -> int:
        """:func:`cap_plan`. Never raises into the publish path, where a retry would publish
        the accepted requests twice."""
        try:
            return run(self.client, cap_plan(self.keys, fallback))
        except REDIS_ERRORS:
            return fallback

    # Worker side ---------------------------------------------------------------------------

    def fetch(self, worker_id: str, count: int) -> list[Fetched]:
        """Move up to ``count`` messages into this worker's inflight hash, oldest first.

        A message held by a worker that died comes alone, with its death count. Ids are never
        one this worker got before, even after the broker restarted empty (see ``fetch.lua``):
        an ack or a blame of an old id can never name a new message.
        """
        keys, args = self._fetch_call(worker_id, count)
        return self._fetched(worker_id, self._lane.run_script(self._fetch, keys, args))

    def land(self, worker_id: str, timeout: float, more: int = 0
             ) -> tuple[bytes | None, list[Fetched]]:
        """An idle worker blocks on the arrivals list itself, up to ``timeout`` (whole seconds,
        at least 1): the oldest message there moves into its landing list (``BLMOVE``, atomic,
        so a worker that dies holding it has it requeued) and comes back, ready to predict with
        no further round trip. :data:`~wkr_celery.scripts.NUDGE` means work waits on another
        list: fetch it.

        With ``more`` > 0 a :meth:`fetch` of up to ``more`` messages is pipelined behind the
        ``BLMOVE``: Redis runs it the moment the ``BLMOVE`` returns, in the same round trip, so
        a worker woken in a stream takes what queued behind the message that woke it as one
        batch instead of predicting that message alone. Returns ``(landed, fetched)``.
        """
        wait = max(1, math.ceil(timeout))
        if not more:
            try:
                return self._move(self._lane.execute, worker_id, wait), []
            except ResponseError as exc:
                if not self._lacks_blmove(exc):
                    raise
            return self._move(self._lane.execute, worker_id, wait), []
        pipe = self.client.pipeline(transaction=False)
        self._move(pipe.execute_command, worker_id, wait)
        keys, args = self._fetch_call(worker_id, more)
        pipe.evalsha(self._fetch.sha, len(keys), *keys, *args)
        landed, flat = pipe.execute(raise_on_error=False)
        if isinstance(landed, ResponseError):
            if not self._lacks_blmove(landed):
                raise landed
            landed = None  # the fetch behind it still ran: keep what it moved
        if isinstance(flat, NoScriptError):  # a broker restarted empty: load it and fetch
            return landed, self.fetch(worker_id, more)
        if isinstance(flat, Exception):
            raise flat
        return landed, self._fetched(worker_id, flat)

    def _move(self, execute: Callable[..., Any], worker_id: str, wait: int) -> Any:
        """``BLMOVE`` (``BRPOPLPUSH`` on a server without it) from the arrivals list into
        ``worker_id``'s landing list, by ``execute`` (the lane's, or a pipeline's)."""
        k = self.keys
        if self._blmove:
            return execute("BLMOVE", k.arrivals, k.landing(worker_id), "RIGHT", "LEFT", wait)
        return execute("BRPOPLPUSH", k.arrivals, k.landing(worker_id), wait)

    def _lacks_blmove(self, error: ResponseError) -> bool:
        """Whether ``error`` says the server has no ``BLMOVE`` (Redis < 6.2); if so, its older
        spelling is used from now on."""
        if self._blmove and "unknown command" in str(error).lower():
            self._blmove = False
            return True
        return False

    def _fetch_call(self, worker_id: str, count: int) -> tuple[list[str], list[int]]:
        k = self.keys
        return ([k.inflight(worker_id), k.seq, k.suspect, k.deaths, *k.queues],
                [count, self._highest.get(worker_id, 0)])

    def _fetched(self, worker_id: str, flat: list[Any]) -> list[Fetched]:
        fetched = [(int(flat[i]), flat[i + 1], int(flat[i + 2])) for i in range(0, len(flat), 3)]
        if fetched:
            self._highest[worker_id] = max(self._highest.get(worker_id, 0),
                                           *(i for i, _, _ in fetched))
        return fetched

    def drop_nudge(self, worker_id: str) -> None:
        """Take a landed nudge off this worker's landing list."""
        self.client.lrem(self.keys.landing(worker_id), -1, scripts.NUDGE)  # type: ignore[arg-type]

    def landed(self, worker_id: str) -> list[bytes]:
        """What this worker's landing list holds, oldest first."""
        messages: list[bytes] = self.client.lrange(self.keys.landing(worker_id), 0, -1)  # type: ignore[assignment]
        return messages[::-1]

    def ack(self, worker_id: str, ids: Sequence[int], suspects: Sequence[bytes] = (),
            landed: Sequence[bytes] = ()) -> None:
        """Forget messages whose results are stored: inflight ids and landed messages."""
        if not ids and not landed:
            return
        pipe = self.client.pipeline(transaction=False)
        if ids:
            pipe.hdel(self.keys.inflight(worker_id), *ids)
        if suspects:
            pipe.hdel(self.keys.deaths, *suspects)
        for message in landed:
            pipe.lrem(self.keys.landing(worker_id), -1, message)  # type: ignore[arg-type]
        pipe.execute()

    def held(self, worker_id: str) -> list[int]:
        """Inflight ids in this worker's hash, whether or not a fetch reply reached it."""
        return [int(i) for i in self.client.hkeys(self.keys.inflight(worker_id))]

    def give_back(self, worker_id: str, ids: Sequence[int], landed: Sequence[bytes] = ()) -> int:
        """Put unprocessed messages back at the head of their lists (graceful stop): inflight
        ids, and landed messages (by value) onto the arrivals list."""
        if not ids and not landed:
            return 0
        k = self.keys
        return int(self._return(
            keys=[k.inflight(worker_id), k.landing(worker_id), k.suspect, *k.queues],
            args=[len(ids), *sorted(ids, reverse=True), *landed],
        ))

    # Requeueing ----------------------------------------------------------------------------

    def requeue_dead(self, worker_id: str, blamed: Sequence[int] | None = None) -> int:
        """Requeue everything a worker held and take it out of the registry: a dead worker's
        (``blamed``, default all, count a death) or a stopping one's leftovers (``blamed=()``)."""
        k = self.keys
        blame = ["*"] if blamed is None else [str(i) for i in blamed]
        return int(self._requeue(
            keys=[k.inflight(worker_id), k.landing(worker_id), k.suspect, k.deaths, k.workers,
                  k.heartbeat(worker_id), *k.queues],
            args=[worker_id, _DEATHS_TTL, *blame],
        ))

    def sweep(self) -> dict[str, int]:
        """Requeue the messages of every registered worker whose heartbeat has expired."""
        k = self.keys
        flat = self._sweep(
            keys=[k.workers, k.suspect, k.deaths, *k.queues],
            args=[k.heartbeat_prefix, k.inflight_prefix, k.landing_prefix, _DEATHS_TTL],
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
        return run(self.client, withdraw_plan(self.keys, [(queue, message)])) > 0

    # Shared --------------------------------------------------------------------------------

    def queue_length(self) -> int:
        """Messages waiting in the service's lists, suspects included (not those held)."""
        return run(self.client, queue_length_plan(self.keys))

    def ping(self) -> bool:
        """Whether the broker Redis answers (raises the connection error when it does not)."""
        return run(self.client, ping_plan())


def withdraw_plan(keys: ServiceKeys, envelopes: Sequence[tuple[str, bytes]]) -> Plan[int]:
    """:meth:`RequestQueue.withdraw` of each ``(queue, envelope)``, :data:`WITHDRAW_CHUNK` per
    round trip (one for a few); returns how many were still queued.

    ``LREM`` scans a list from its head, where ``publish.lua`` pushes the newest message: a
    sender that lists its envelopes newest first (``Requests.withdrawal``) has each found near
    the head, so taking back a backlog costs time in its length, not in its square."""
    def step(chunk: Sequence[tuple[str, bytes]], pipe: Any) -> None:
        for queue, message in chunk:
            # LREM compares the exact bytes it is given, which is what we need
            pipe.lrem(queue, 1, message)
            pipe.lrem(keys.suspect, 1, message)
    removed = 0
    for start in range(0, len(envelopes), WITHDRAW_CHUNK):
        replies = yield partial(step, envelopes[start:start + WITHDRAW_CHUNK])
        removed += sum(replies)
    return removed


def queue_length_plan(keys: ServiceKeys) -> Plan[int]:
    """:meth:`RequestQueue.queue_length`."""
    def step(pipe: Any) -> None:
        for name in (*keys.queues, keys.suspect):
            pipe.llen(name)
    lengths = yield step
    return int(sum(lengths))


def cap_plan(keys: ServiceKeys, fallback: int) -> Plan[int]:
    """The service's queue cap as its info says now (what ``publish.lua`` enforced), else
    ``fallback`` (no info, or a value that is not a number): read to name the cap in a
    refusal."""
    (stored,) = yield lambda pipe: pipe.hget(keys.info, "max_queue")
    try:
        return int(stored) if stored is not None else fallback
    except ValueError:
        return fallback


def publish_call(keys: ServiceKeys, items: Sequence[tuple[int, str | bytes]], *, cap: int
                 ) -> tuple[list[str], list[Any]]:
    """The keys and arguments of one ``PUBLISH`` script call; the asyncio client runs the same
    script with them on its own connection. ``cap`` counts only where the service info names
    none: the script reads the service's own ``max_queue`` (see publish.lua)."""
    args: list[Any] = [cap]
    for index, message in items:
        args.append(index)
        args.append(message)
    return [*keys.queues, keys.info, keys.totals], args
