"""The receiving half of :class:`WKRClient`: threads that settle every future.

Workers push each client's answers onto that client's own reply list, so one ``BLPOP`` per
wake-up serves however many requests are out; answers are matched to futures by task id. An
answer that arrives twice (a worker paused past the visibility timeout, then resumed) finds no
pending future the second time and is dropped, so no caller is answered twice.

The listener thread talks to the result Redis only. Each Redis also has a watch thread of its
own (:class:`~.restarts.RedisWatch`), so the broker being down never stops answers flowing from
a healthy result Redis. The watches carry out what :class:`~.verdicts.Judge` decides
about an outage or an empty restart:

* a Redis restarted without persistence puts the requests published before the restart *in
  doubt* (:mod:`.doubt`): answers still come for those a worker already held; the rest fail
  with ``RequestLost`` once the service has gone a grace period without answering any of them;
* the broker unreachable for ``connect_timeout`` puts the requests published before the outage
  in doubt the same way;
* the result Redis unreachable for ``connect_timeout`` fails every pending request with
  ``RequestLost``: no answer can reach the client, the service has gone away.

A timer thread of its own fails requests past their deadline, on time even while the listener
waits on an unreachable Redis (up to its socket timeout), so no future waits past its timeout.

One request at a time, the caller's own thread pops its answer (:meth:`Replies.read_alone`),
saving the hand-off from the listener to the caller. Only one thread reads the reply list at a
time (the caller takes the reading turn only while the listener has nothing to read), the
caller looks every :data:`_POLL_SECONDS` whether another thread settled its future (deadline,
``RequestLost``, ``close()``, a cancel), and anything unusual (an error, a recovery due, a
reply late) hands the list back to the listener, which then works as before.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any

import redis

from ..broker import Lane, run, stored_plan
from ..connections import REDIS_ERRORS
from ..errors import ServiceUnavailable, WKRError
from .doubt import Doubt
from .protocol import deadline_exceeded, read_reply
from .restarts import RedisWatch
from .verdicts import Judge, Verdict

__all__ = ["Replies", "LISTEN_SECONDS"]

log = logging.getLogger("wkr_celery.client")

#: Longest block of the listener; also how often each Redis is checked for a restart.
LISTEN_SECONDS = 1.0
_DRAIN = 1000
_CLOSE_TOKEN = b"__wkr_close__"
#: How often a caller reading its own answer looks whether another thread settled its future.
_POLL_SECONDS = 0.02
#: How much later than its ``BLPOP`` timeout a reply may come before the caller gives up on it.
_REPLY_MARGIN = 1.0


class Replies:
    """Futures of the requests a client has out, and the threads that settle them.

    ``grace`` returns the current :attr:`Doubt.grace`; ``outage_limit`` is how long a Redis
    may be unreachable before the requests that depend on it count as gone.
    """

    def __init__(self, result_redis: redis.Redis, reply_key: str,
                 watches: list[tuple[str, RedisWatch]], *,
                 grace: Callable[[], float], outage_limit: float) -> None:
        self.pending: dict[str, Future[Any]] = {}
        self.watches = watches
        self._redis = result_redis
        self._lane = Lane(result_redis)  # the listener's and a lone caller's reads, in turn
        self._key = reply_key
        self._results = next(watch for _, watch in watches if watch.serves_results)
        self._grace = grace
        self._outage_limit = outage_limit
        self._doubt = Doubt(grace())
        self._deadlines: list[tuple[float, str]] = []
        self._deadline_lock = threading.Lock()
        self._recovered = self._results.changes
        self._recover_due = False
        self._closed = threading.Event()
        self._threads = [threading.Thread(target=self._listen_loop, daemon=True,
                                          name="wkr-client-listen")]
        self._threads += [threading.Thread(target=self._watch_loop, args=(watch,), daemon=True,
                                           name=f"wkr-client-watch-{watch.role.split()[0]}")
                          for _, watch in watches]
        self._deadline_wake = threading.Event()
        self._reading = threading.Lock()  # held by whichever thread pops the reply list
        self._reader: int | None = None  # that thread's ident, while it holds the turn
        self._listen_wake = threading.Event()
        self._threads.append(threading.Thread(target=self._deadline_loop, daemon=True,
                                              name="wkr-client-deadlines"))

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def expect(self, task_id: str, future: Future[Any], expiry: float | None) -> None:
        """Register a request about to be sent; ``expiry`` is its monotonic deadline."""
        self.pending[task_id] = future
        if expiry is not None:
            with self._deadline_lock:
                heapq.heappush(self._deadlines, (expiry, task_id))
                if self._deadlines[0][1] == task_id:  # sooner than the timer waits for
                    self._deadline_wake.set()

    def published(self, task_ids: list[str], when: float) -> None:
        """Note when requests reached the broker: a Redis restart after it may have lost them."""
        for task_id in task_ids:
            future = self.pending.get(task_id)
            if future is not None:
                future._wkr_published = when  # type: ignore[attr-defined]

    def fail(self, task_id: str, error: WKRError) -> bool:
        """Fail a pending request; False when it was settled already."""
        future = self.pending.pop(task_id, None)
        if future is None:
            return False
        _settle(future, error=error)
        return True

    def close(self) -> None:
        """Stop the threads, cancel what is still pending, delete the reply list."""
        self._closed.set()
        self._deadline_wake.set()
        self._listen_wake.set()
        try:
            self._redis.rpush(self._key, _CLOSE_TOKEN)
        except REDIS_ERRORS:
            pass
        for thread in self._threads:  # a finalizer may run this on one of them (client.py)
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(LISTEN_SECONDS + 11)
        for task_id in list(self.pending):
            future = self.pending.pop(task_id, None)
            if future is not None:
                future.cancel()
        try:
            self._redis.delete(self._key)
        except REDIS_ERRORS:
            pass

    # The listener thread: the result Redis only ---------------------------------------------

    def wake_listener(self) -> None:
        """Requests were sent: the listener reads for them unless their caller reads first.

        Whoever holds the reading turn reads them, or wakes the listener when it lets go."""
        if not self._reading.locked():
            self._listen_wake.set()

    def _listen_loop(self) -> None:
        """Pop the reply list while requests are out and no caller reads for itself; between
        times wait to be woken (:meth:`wake_listener`), failing expired requests meanwhile."""
        delay = 0.05
        while not self._closed.is_set():
            wait = self._expire()
            if not self.pending or not self._reading.acquire(blocking=False):
                self._listen_wake.wait(wait)
                self._listen_wake.clear()
                continue
            self._reader = threading.get_ident()
            try:
                while self.pending and not self._closed.is_set():
                    delay = self._listen_once(delay)
            finally:
                self._reader = None
                self._reading.release()

    def _listen_once(self, delay: float) -> float:
        """One ``BLPOP`` (and a drain when more requests are out); returns the next retry delay."""
        lane, key, watch = self._lane, self._key, self._results
        wait = self._expire()
        try:
            if self._recover_due or watch.changes != self._recovered:
                self._recover()
            first = lane.execute("BLPOP", key, wait)
            watch.reached()
            if first is None:
                return delay
            # The oldest answer first, before another round trip; the rest only when
            # more requests are out (one at a time, there is nothing to drain).
            self._resolve(first[1])
            rest = (lane.execute("LPOP", key, _DRAIN) or []) if self.pending else []
        except REDIS_ERRORS as exc:
            if self._closed.is_set():
                return delay
            watch.failed(exc)  # logged once per outage, not once per retry
            self._recover_due = True
            self._closed.wait(delay)
            return min(delay * 2, LISTEN_SECONDS)
        except redis.RedisError as exc:
            # Refused for good (an ACL user without blocking commands): no answer can be read,
            # so nobody waits for one; the listener lives on and tells the next callers too.
            self._fail_all(ServiceUnavailable(f"could not read answers from {watch.name}: "
                                              f"{exc}"), "answers cannot be read", quiet=False)
            return delay
        for data in rest:
            self._resolve(data)
        return 0.05

    def reading_here(self) -> bool:
        """Whether this thread holds the reading turn: true in a done callback it runs, where
        waiting for another answer would wait for ever, nobody else reading meanwhile."""
        return self._reader == threading.get_ident()

    # The caller's own thread, one request at a time ------------------------------------------

    def read_alone(self, future: Future[Any], timeout: float | None) -> None:
        """Pop the answer to ``future``, the only request out, on the caller's thread.

        Returns when ``future`` is settled (by this thread or another), after ``timeout``, or
        as soon as anything needs the listener (other reads, a recovery, an error); the caller
        then waits on the future as usual.
        """
        if len(self.pending) != 1 or not self._reading.acquire(blocking=False):
            return
        give_up = None if timeout is None else time.monotonic() + timeout
        self._reader = threading.get_ident()
        try:
            while not future.done() and not self._closed.is_set():
                wait = self._expire()
                if give_up is not None:
                    wait = min(wait, give_up - time.monotonic())
                if wait < 0.01 or not self._pop_alone(future, wait):
                    return
        finally:
            self._reader = None
            self._reading.release()
            if self.pending:  # what is still out is the listener's again (wake_listener saw
                self._listen_wake.set()  # the turn taken, so it left the waking to us)

    def _pop_alone(self, future: Future[Any], wait: float) -> bool:
        """One ``BLPOP`` of at most ``wait`` seconds on a connection of this thread's own;
        False when the listener should take over."""
        if self._recover_due or self._results.changes != self._recovered:
            return False  # reading stored results after an outage is the listener's job
        with self._lane.held() as connection:
            if connection is None:
                return False
            reply, clean = None, False
            try:
                connection.send_command("BLPOP", self._key, wait)
                late = time.monotonic() + wait + _REPLY_MARGIN
                while not connection.can_read(timeout=_POLL_SECONDS):
                    if future.done() or self._closed.is_set() or time.monotonic() > late:
                        return False  # settled elsewhere, closing, or the Redis went silent
                reply = connection.read_response()
                clean = True
            except (redis.RedisError, OSError):
                return False
            finally:
                if not clean:  # the BLPOP may still answer on it: drop it; a popped answer is
                    connection.disconnect()  # still stored, and the listener reads it
                    self._recover_due = True
        self._results.reached()
        if reply is not None:
            self._resolve(reply[1])
        return True

    def _resolve(self, data: Any) -> None:
        """Settle the future ``data`` (a stored Celery result) answers; bytes from Redis."""
        if data == _CLOSE_TOKEN:
            return
        reply = read_reply(data)
        if reply is None:
            return
        future = self.pending.pop(reply.task_id, None)
        if future is None:
            return  # answered already (duplicate delivery) or given up on
        self._doubt.answered(reply.task_id)
        _settle(future, result=reply.result, error=reply.error)

    def _recover(self) -> None:
        """Resolve pending requests from their stored results (``celery-task-meta-<id>``).

        A pop from the reply list whose reply was lost (the connection dropped, or Redis
        restarted with AOF) took those answers off the list for good; the stored copies remain.
        """
        seen = self._results.changes
        for data in run(self._redis, stored_plan(list(self.pending))):
            self._resolve(data)
        self._recover_due = False
        self._recovered = seen

    def _deadline_loop(self) -> None:
        """The timer thread: the listener may be blocked on an unreachable Redis while
        deadlines pass."""
        while not self._closed.is_set():
            wait = self._expire()
            self._deadline_wake.wait(wait)
            self._deadline_wake.clear()

    def _expire(self) -> float:
        """Fail requests past their deadline, and those in doubt past the grace; returns how
        long the listener may block."""
        lost = self._doubt.due()
        if lost:
            failed = sum(self.fail(task_id, error) for task_id, error in lost.items())
            if failed:
                log.error("%d request(s) in doubt got no answer for %.0fs; failed with "
                          "RequestLost: %s", failed, self._doubt.grace, next(iter(lost.values())))
        now = time.monotonic()
        expired: list[str] = []
        with self._deadline_lock:
            while self._deadlines and self._deadlines[0][0] <= now:
                expired.append(heapq.heappop(self._deadlines)[1])
            wait = (max(0.01, min(LISTEN_SECONDS, self._deadlines[0][0] - now))
                    if self._deadlines else LISTEN_SECONDS)
        # Failed outside the lock: a done callback runs here, and may send again with a
        # deadline of its own (expect() takes the lock); one sooner than ``wait`` wakes us.
        for task_id in expired:
            self.fail(task_id, deadline_exceeded())
        return wait

    # The watch threads: one per Redis ---------------------------------------------------------

    def _watch_loop(self, watch: RedisWatch) -> None:
        judge = Judge(watch, self._outage_limit)
        while not self._closed.wait(LISTEN_SECONDS):
            for verdict in judge.after_check(watch.check(), time.monotonic()):
                self._carry_out(verdict)

    def _carry_out(self, verdict: Verdict) -> None:
        if verdict.kind == "read_grace":
            self._doubt.grace = self._grace()
        elif verdict.kind == "follow_grace":
            self._refresh_grace()
        elif verdict.kind == "doubt":
            assert verdict.error is not None
            self._doubt_published_before(verdict.before, verdict.error, verdict.why)
        elif verdict.kind == "fail_all":
            assert verdict.error is not None
            self._fail_all(verdict.error, verdict.why, quiet=verdict.quiet)

    def _refresh_grace(self) -> None:
        """While requests are in doubt, follow the workers' batch durations (heartbeats on the
        broker; so only the broker's watch thread asks, and never waits on the result Redis)."""
        if len(self._doubt):
            self._doubt.grace = max(self._doubt.grace, self._grace())

    def _doubt_published_before(self, cutoff: float, error: WKRError, why: str) -> None:
        """Put requests published before ``cutoff`` in doubt; their answers may still come."""
        doubted = [task_id for task_id, future in list(self.pending.items())
                   if getattr(future, "_wkr_published", cutoff + 1) <= cutoff]
        self._doubt.add(doubted, error)
        self._recover_due = True  # an answer may be stored already; read it from the result side
        log.warning("%s; %d pending request(s) in doubt: answers still come for those a worker "
                    "already held, the rest fail with RequestLost after %.0fs without one",
                    why, len(doubted), self._doubt.grace)

    def _fail_all(self, error: WKRError, why: str, *, quiet: bool) -> None:
        """No answer can reach this client (the result Redis is gone, or refuses to give them),
        so nobody waits."""
        failed = sum(self.fail(task_id, error) for task_id in list(self.pending))
        if failed and not quiet:
            log.error("%s; failed %d pending request(s) with %s: %s", why, failed,
                      type(error).__name__, error)


def _settle(future: Future[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    """Resolve ``future`` unless its caller cancelled it."""
    try:
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
    except InvalidStateError:
        pass  # the caller cancelled it
