"""The receiving half of :class:`AsyncWKRClient`: tasks on its event loop settle every request.

As in :mod:`.replies` for the sync client: workers push this client's answers onto its own reply
list, one ``BLPOP`` per wake-up serves however many requests are out, and answers are matched by
task id, so an answer that comes twice (or for a request given up on) finds nobody and is
dropped. A timer on the loop fails a request at its deadline. A watch task checks each Redis
once a second and carries out what :class:`~.verdicts.Judge` decides, as the sync client's
watch threads do: requests an empty restart (or a long broker outage) may have lost are put in
doubt (:mod:`.doubt`), and the result Redis gone past ``connect_timeout`` fails them all, so no
await waits forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

import redis.asyncio

from ..broker import run_async, stored_plan
from ..connections import REDIS_ERRORS
from ..errors import ServiceUnavailable, WKRError
from .async_interrupts import bounded, kept_alive
from .async_restarts import AsyncRedisWatch
from .doubt import Doubt
from .protocol import Outgoing, deadline_exceeded, read_reply
from .replies import LISTEN_SECONDS
from .verdicts import Judge, Verdict

__all__ = ["AsyncReplies", "Waiting"]

log = logging.getLogger("wkr_celery.client")

_DRAIN = 1000
_CLOSE_TOKEN = b"__wkr_close__"


class Waiting:
    """One request a client has out: what was sent, and the future its caller awaits."""

    __slots__ = ("request", "future", "timer", "published_at", "withdrawn")

    def __init__(self, request: Outgoing, future: asyncio.Future[Any]) -> None:
        self.request = request
        self.future = future
        self.timer: asyncio.TimerHandle | None = None
        #: ``time.monotonic()`` when the broker took it; a revoke must then ``LREM`` it.
        self.published_at: float | None = None
        self.withdrawn = False  # its caller stopped waiting


class AsyncReplies:
    """Requests a client has out, and the listener and watch tasks that settle them.

    ``grace`` reads the current :attr:`Doubt.grace` (from the workers' heartbeats, ``grace0``
    its value now); ``outage_limit`` is how long a Redis may be unreachable before the requests
    that depend on it count as gone.
    """

    def __init__(self, results: redis.asyncio.Redis, reply_key: str,
                 watches: list[AsyncRedisWatch], *, grace: Callable[[], Awaitable[float]],
                 grace0: float, outage_limit: float) -> None:
        self.pending: dict[str, Waiting] = {}
        self.watches = watches
        self._redis = results
        self._key = reply_key
        self._results = next(watch for watch in watches if watch.serves_results)
        self._grace = grace
        self._outage_limit = outage_limit
        self._doubt = Doubt(grace0)
        self._recovered = self._results.changes
        self._recover_due = False
        self._closed = False
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the listener and the watches, each kept alive through a Ctrl+C
        (:mod:`.async_interrupts`); an interrupted listener reads the stored results of what
        is pending first, as after a lost connection: it may have popped answers unread."""
        loops: list[Callable[[], Coroutine[Any, Any, None]]] = [self._listen_loop]
        loops += [partial(self._watch_loop, watch) for watch in self.watches]
        connections = [self._redis, *(watch.client for watch in self.watches)]
        self._tasks = []
        for index, run in enumerate(loops):
            self._tasks.append(kept_alive(run, mend=self._mend, closed=lambda: self._closed,
                                          replace=partial(self._tasks.__setitem__, index),
                                          connections=connections))

    def _mend(self) -> None:
        self._recover_due = True  # a watch interrupted mid-check gets a needless read: rare

    def expect(self, waiting: Waiting) -> None:
        """Register a request about to be sent; its deadline becomes a timer on the loop."""
        request = waiting.request
        self.pending[request.task_id] = waiting
        if request.expiry is not None:
            waiting.timer = asyncio.get_running_loop().call_later(
                max(0.0, request.expiry - time.monotonic()),
                self.fail, request.task_id, deadline_exceeded())

    def forget(self, task_id: str) -> Waiting | None:
        """Stop waiting for ``task_id``; its answer, if one comes, is dropped."""
        waiting = self.pending.pop(task_id, None)
        if waiting is not None and waiting.timer is not None:
            waiting.timer.cancel()
        return waiting

    def settle(self, task_id: str, result: Any = None, error: BaseException | None = None
               ) -> None:
        waiting = self.forget(task_id)
        if waiting is None or waiting.future.done():
            return  # answered already (duplicate delivery), withdrawn, or timed out
        if error is None:
            waiting.future.set_result(result)
        else:
            waiting.future.set_exception(error)

    def fail(self, task_id: str, error: BaseException) -> bool:
        """Fail a pending request; False when it was settled already."""
        if task_id not in self.pending:
            return False
        self.settle(task_id, error=error)
        return True

    async def close(self) -> None:
        """Stop the tasks, fail what is still pending, delete the reply list."""
        self._closed = True
        self._stop.set()
        try:
            await self._redis.rpush(self._key, _CLOSE_TOKEN)  # wakes the listener's BLPOP
        except REDIS_ERRORS:
            pass
        if self._tasks:
            _, running = await asyncio.wait(self._tasks, timeout=LISTEN_SECONDS + 11)
            for task in running:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        closed = WKRError("the client was closed before this request was answered")
        for task_id in list(self.pending):
            self.fail(task_id, closed)
        try:
            await self._redis.delete(self._key)
        except REDIS_ERRORS:
            pass

    # The listener task: the result Redis ----------------------------------------------------

    async def _listen_loop(self) -> None:
        delay = 0.05
        task = asyncio.current_task()
        while not self._closed:
            # A cancel that reaches a BLPOP read can be lost inside redis-py (the read goes on
            # and returns at its timeout): the loop then ran on, and asyncio.run, which cancels
            # every task when its main coroutine returns, waited for it for ever (a script that
            # left its client open never exited). The cancel is still counted on the task.
            if task is not None and getattr(task, "cancelling", lambda: 0)():
                raise asyncio.CancelledError
            with bounded():
                delay = await self._listen_once(delay)

    async def _listen_once(self, delay: float) -> float:
        """One pop of answers (the stored results first when due); returns the pause before
        the next try, doubled after each failure while the result Redis is away."""
        client, key, watch = self._redis, self._key, self._results
        try:
            if self._recover_due or watch.changes != self._recovered:
                await self._recover()
            first = await client.blpop([key], timeout=LISTEN_SECONDS)
            watch.reached()
            if first is None:
                return delay
            self._resolve(first[1])
            # The rest only when more requests are out (one at a time, nothing to drain).
            rest = (await client.lpop(key, _DRAIN) or []) if self.pending else []
        except REDIS_ERRORS as exc:
            if self._closed:
                return delay
            watch.failed(exc)  # logged once per outage, not once per retry
            self._recover_due = True
            await self._pause(delay)
            return min(delay * 2, 1.0)
        except redis.RedisError as exc:  # refused for good: see Replies._listen_once
            self._fail_all(ServiceUnavailable(
                f"could not read answers from {watch.name}: {exc}"),
                "answers cannot be read", quiet=False)
            await self._pause(LISTEN_SECONDS)
            return delay
        for data in rest:
            self._resolve(data)
        return 0.05

    def _fail_all(self, error: WKRError, why: str, *, quiet: bool) -> None:
        """:meth:`Replies._fail_all <.replies.Replies._fail_all>`: no answer can reach this
        client, so nobody waits."""
        failed = sum(self.fail(task_id, error) for task_id in list(self.pending))
        if failed and not quiet:
            log.error("%s; failed %d pending request(s) with %s: %s", why, failed,
                      type(error).__name__, error)

    def _resolve(self, data: Any) -> None:
        if data == _CLOSE_TOKEN:
            return
        reply = read_reply(data)
        if reply is not None:
            self._doubt.answered(reply.task_id)
            self.settle(reply.task_id, reply.result, reply.error)

    async def _recover(self) -> None:
        """Resolve pending requests from their stored results (``celery-task-meta-<id>``): a
        pop whose reply was lost with its connection took those answers off the list for good."""
        seen = self._results.changes
        for data in await run_async(self._redis, stored_plan(list(self.pending))):
            self._resolve(data)
        self._recover_due = False
        self._recovered = seen

    # The watch tasks: one per Redis ----------------------------------------------------------

    async def _watch_loop(self, watch: AsyncRedisWatch) -> None:
        judge = Judge(watch, self._outage_limit)
        while not await self._pause(LISTEN_SECONDS):
            with bounded():
                for verdict in judge.after_check(await watch.check(), time.monotonic()):
                    await self._carry_out(verdict)
            lost = self._doubt.due()
            failed = sum(self.fail(task_id, error) for task_id, error in lost.items())
            if failed:
                log.error("%d request(s) in doubt got no answer for %.0fs; failed with "
                          "RequestLost: %s", failed, self._doubt.grace, next(iter(lost.values())))

    async def _carry_out(self, verdict: Verdict) -> None:
        if verdict.kind == "read_grace":
            self._doubt.grace = await self._grace()
        elif verdict.kind == "follow_grace":
            if len(self._doubt):
                self._doubt.grace = max(self._doubt.grace, await self._grace())
        elif verdict.kind == "doubt":
            assert verdict.error is not None
            doubted = [task_id for task_id, waiting in self.pending.items()
                       if waiting.published_at is not None
                       and waiting.published_at <= verdict.before]
            self._doubt.add(doubted, verdict.error)
            self._recover_due = True  # an answer may be stored already: read it
            log.warning("%s; %d pending request(s) in doubt: answers still come for those a "
                        "worker already held, the rest fail with RequestLost after %.0fs "
                        "without one", verdict.why, len(doubted), self._doubt.grace)
        elif verdict.kind == "fail_all":
            assert verdict.error is not None
            self._fail_all(verdict.error, verdict.why, quiet=verdict.quiet)

    async def _pause(self, seconds: float) -> bool:
        """Wait ``seconds`` or until closed; True when closed."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except asyncio.TimeoutError:
            return False
        return True
