"""Time that every host agrees on: the broker Redis's clock (``TIME``), carried by a local
monotonic clock between readings.

A request's deadline crosses hosts: a client on one host sets it, a worker on another checks it.
If each read its own wall clock, a host whose clock is an hour off would drop every request as
late, or predict ones long expired. So both sides write and read deadlines on one clock, the
broker Redis's: a :class:`RedisClock` reads ``TIME`` now and then and adds the monotonic time
elapsed since, so neither a skewed host clock nor one stepped while running moves it.
Heartbeats and sweeps need no clock here at all: a heartbeat is a key whose TTL Redis counts.

:func:`wall_time` is this host's own wall clock, for what stays on one host (log lines,
uptime figures, result dates). ``WKR_TEST_CLOCK_OFFSET`` (seconds, for tests only) shifts it,
to prove that nothing above depends on it; every wall-clock read in the package goes through
:func:`wall_time`, and a test pins that.
"""

from __future__ import annotations

import functools
import logging
import os
import time

import redis

__all__ = ["RedisClock", "wall_time", "TEST_OFFSET_ENV"]

log = logging.getLogger("wkr_celery.clock")

#: Environment variable that skews :func:`wall_time` by this many seconds. Tests only.
TEST_OFFSET_ENV = "WKR_TEST_CLOCK_OFFSET"

#: How often a :class:`RedisClock` reads ``TIME`` again: bounds the drift between the local
#: monotonic clock and Redis's (a few parts per million) and follows a Redis clock that was set.
RESYNC_SECONDS = 30.0


@functools.cache
def _test_offset() -> float:
    return float(os.environ.get(TEST_OFFSET_ENV) or 0.0)


def wall_time() -> float:
    """This host's wall clock in epoch seconds; never compare it with another host's."""
    return time.time() + _test_offset()


class RedisClock:
    """The broker Redis's wall clock as read from this process, in epoch seconds.

    ``client`` reads ``TIME`` in :meth:`sync`; an asyncio caller passes none, reads ``TIME``
    itself and hands the reply to :meth:`record`.
    """

    def __init__(self, client: redis.Redis | None = None) -> None:
        self._client = client
        self._base: tuple[float, float] | None = None  # (Redis time, local monotonic) at sync

    @property
    def due(self) -> bool:
        """No reading yet, or the last is older than ``RESYNC_SECONDS``."""
        return self._base is None or time.monotonic() - self._base[1] >= RESYNC_SECONDS

    def record(self, reply: tuple[int, int], before: float, after: float) -> None:
        """A ``TIME`` reply, read between monotonic times ``before`` and ``after``: taken as of
        the round trip's middle."""
        seconds, micros = reply
        self._base = (seconds + micros / 1e6, (before + after) / 2)

    def sync(self) -> None:
        """Read ``TIME`` (one round trip)."""
        assert self._client is not None, "an asyncio caller reads TIME itself: record()"
        before = time.monotonic()
        reply = self._client.time()
        self.record(reply, before, time.monotonic())

    def sync_if_due(self) -> None:
        """Read ``TIME`` again when :attr:`due`; an unreachable Redis keeps the last reading
        (it goes on counting)."""
        if not self.due:
            return
        try:
            self.sync()
        except (redis.RedisError, OSError) as exc:
            log.debug("could not read the Redis clock: %s", exc)

    def now(self) -> float:
        """Redis's time now; this host's own clock until Redis has been reached once."""
        if self._base is None:
            return wall_time()
        redis_then, local_then = self._base
        return redis_then + (time.monotonic() - local_then)
