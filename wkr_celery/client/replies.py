"""The receiving half of :class:`WKRClient`: one listener thread settles every future.

Workers push each client's answers onto that client's own reply list, so one ``BLPOP`` per
wake-up serves however many requests are out; answers are matched to futures by task id. An
answer that arrives twice (a worker paused past the visibility timeout, then resumed) finds no
pending future the second time and is dropped, so no caller is answered twice. The listener
also fails requests a Redis restarted without persistence has lost, and a timer thread of its own
fails requests past their deadline, on time even while the listener waits on an unreachable
Redis; so no future waits forever, nor past its timeout.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from concurrent.futures import Future, InvalidStateError
from typing import Any

import redis

from ..codec import loads
from ..connections import REDIS_ERRORS, redacted
from ..errors import DeadlineExceeded, RequestLost, WKRError
from ..keys import task_meta_key
from ..messages import error_of
from .restarts import RestartWatch

__all__ = ["Replies", "LISTEN_SECONDS"]

log = logging.getLogger("wkr_celery.client")

#: Longest block of the listener; also how often it checks deadlines and Redis restarts.
LISTEN_SECONDS = 1.0
_DRAIN = 1000
_CLOSE_TOKEN = b"__wkr_close__"


class Replies:
    """Futures of the requests a client has out, and the thread that settles them."""

    def __init__(self, result_redis: redis.Redis, reply_key: str,
                 watches: list[tuple[str, RestartWatch]]) -> None:
        self.pending: dict[str, Future[Any]] = {}
        self.watches = watches
        self._redis = result_redis
        self._key = reply_key
        self._deadlines: list[tuple[float, str]] = []
        self._deadline_lock = threading.Lock()
        self._watch_due = 0.0
        self._recover_due = False
        self._closed = False
        self._thread = threading.Thread(target=self._listen_loop, daemon=True,
                                        name="wkr-client-listen")
        self._deadline_wake = threading.Event()
        self._timer = threading.Thread(target=self._deadline_loop, daemon=True,
                                       name="wkr-client-deadlines")

    def start(self) -> None:
        self._thread.start()
        self._timer.start()

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

    def fail(self, task_id: str, error: WKRError) -> None:
        future = self.pending.pop(task_id, None)
        if future is not None:
            _settle(future, error=error)

    def close(self) -> None:
        """Stop the listener, cancel what is still pending, delete the reply list."""
        self._closed = True
        self._deadline_wake.set()
        try:
            self._redis.rpush(self._key, _CLOSE_TOKEN)
        except REDIS_ERRORS:
            pass
        self._thread.join(LISTEN_SECONDS + 11)
        self._timer.join(LISTEN_SECONDS + 1)
        for task_id in list(self.pending):
            future = self.pending.pop(task_id, None)
            if future is not None:
                future.cancel()
        try:
            self._redis.delete(self._key)
        except REDIS_ERRORS:
            pass

    # The listener thread -------------------------------------------------------------------

    def _listen_loop(self) -> None:
        client = self._redis
        key = self._key
        delay = 0.05
        while not self._closed:
            wait = self._expire_deadlines()
            try:
                self._check_restarts()
                if self._recover_due:
                    self._recover()
                first = client.blpop([key], timeout=wait)
                if first is None:
                    continue
                # The oldest answer first, before another round trip; the rest only when
                # more requests are out (one at a time, there is nothing to drain).
                self._resolve(first[1])
                rest = (client.lpop(key, _DRAIN) or []) if self.pending else []
            except REDIS_ERRORS as exc:
                if self._closed:
                    return
                log.warning("result Redis unreachable (%s); retrying", exc)
                self._recover_due = True
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.05
            for data in rest:
                self._resolve(data)

    def _resolve(self, data: Any) -> None:
        """Settle the future ``data`` (a stored Celery result) answers; bytes from Redis."""
        if data == _CLOSE_TOKEN:
            return
        try:
            meta = loads(data)
            task_id = meta["task_id"]
        except Exception:  # a reply we cannot read answers nobody; say so and go on
            log.error("dropped an unreadable reply of %d bytes", len(data))
            return
        future = self.pending.pop(task_id, None)
        if future is None:
            return  # answered already (duplicate delivery) or given up on
        if meta.get("status") == "SUCCESS":
            _settle(future, result=meta.get("result"))
        else:
            _settle(future, error=error_of(meta))

    def _check_restarts(self) -> None:
        """Once a second: fail requests a Redis restarted without persistence has lost."""
        now = time.monotonic()
        if now < self._watch_due:
            return
        self._watch_due = now + LISTEN_SECONDS
        for url, watch in self.watches:
            restarts = watch.restarts
            cutoff = watch.lost_before()
            if watch.restarts != restarts:
                self._recover_due = True
            if cutoff is None:
                continue
            lost = [task_id for task_id, future in list(self.pending.items())
                    if getattr(future, "_wkr_published", cutoff + 1) <= cutoff]
            log.error("Redis %s restarted without persistence; %d pending request(s) lost",
                      redacted(url), len(lost))
            error = RequestLost(
                f"Redis {redacted(url)} restarted without persistence (AOF off) and lost this "
                "request or its result; send it again (start Redis with AOF, e.g. "
                "-redis_persist on, to keep queued requests across restarts)")
            for task_id in lost:
                self.fail(task_id, error)

    def _recover(self) -> None:
        """Resolve pending requests from their stored results (``celery-task-meta-<id>``).

        A pop from the reply list whose reply was lost (the connection dropped, or Redis
        restarted with AOF) took those answers off the list for good; the stored copies remain.
        """
        task_ids = list(self.pending)
        for start in range(0, len(task_ids), _DRAIN):
            chunk = task_ids[start:start + _DRAIN]
            for data in self._redis.mget([task_meta_key(t) for t in chunk]):
                if isinstance(data, bytes):
                    self._resolve(data)
        self._recover_due = False

    def _deadline_loop(self) -> None:
        """The timer thread: a listener blocked on an unreachable Redis (up to its socket
        timeout) must not hold up the callers whose deadlines pass meanwhile."""
        while not self._closed:
            wait = self._expire_deadlines()
            self._deadline_wake.wait(wait)
            self._deadline_wake.clear()

    def _expire_deadlines(self) -> float:
        """Fail requests past their deadline; returns how long the listener may block."""
        now = time.monotonic()
        with self._deadline_lock:
            while self._deadlines and self._deadlines[0][0] <= now:
                _, task_id = heapq.heappop(self._deadlines)
                self.fail(task_id, DeadlineExceeded("no result before the request's timeout"))
            if self._deadlines:
                return max(0.01, min(LISTEN_SECONDS, self._deadlines[0][0] - now))
        return LISTEN_SECONDS


def _settle(future: Future[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    """Resolve ``future`` unless its caller cancelled it."""
    try:
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
    except InvalidStateError:
        pass  # the caller cancelled it
