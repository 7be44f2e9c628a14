"""Events a worker meets many times in a row, logged as counts, not a line each.

The log is for the operator, who needs to know that something happens, how often and for how
long, not each occurrence. A line per occurrence buries everything else:

* **Late drops** (:class:`LateDrops`): requests dropped before predict because their deadline
  passed. Each caller is told by its stored ``DeadlineExceeded`` result. A worker that comes back
  to a backlog (a service restarted behind clients that gave up, a worker stalled) drops
  thousands at once: logged one ERROR line each, a restart behind 24,399 expired requests wrote
  4 MB of identical lines.
* **A broker outage** (:class:`BrokerOutage`): the fetcher and the heartbeat retry every second
  or two while Redis is unreachable; logged a line each retry, an hour's outage wrote thousands
  of identical WARNING lines a worker.

Both keep one rule (:class:`Throttle`): the first event after a quiet spell is logged at once,
later ones are summed into at most one line per ``interval``, and the end is said once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["BrokerOutage", "LateDrops", "Throttle"]


class Throttle:
    """At most one line per ``interval`` seconds; the first after a quiet spell at once. Not
    locked: its owner calls it under its own lock."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._logged_at = -float("inf")

    def due(self, force: bool = False) -> bool:
        """Whether a line may be logged now (``force``: the last one); if so, counts it."""
        now = self.clock()
        if not force and now - self._logged_at < self.interval:
            return False
        self._logged_at = now
        return True

    def reset(self) -> None:
        """A quiet spell begins: the next line is due at once."""
        self._logged_at = -float("inf")


class LateDrops:
    """Thread-safe tally of late drops, logged at most once per ``interval`` seconds (by the
    next drop or the heartbeat, :meth:`flush`), and what is left when the worker stops."""

    def __init__(self, log: logging.Logger, interval: float = 10.0) -> None:
        self._log = log
        self._throttle = Throttle(interval)
        self._lock = threading.Lock()
        self._count = 0

    def add(self, count: int = 1) -> None:
        """``count`` more requests dropped."""
        with self._lock:
            self._count += count
        self.flush()

    def flush(self, force: bool = False) -> None:
        """Log the tally if there is one and ``interval`` has passed since the last line (or
        ``force``: the worker stops)."""
        with self._lock:
            if not self._count or not self._throttle.due(force):
                return
            count, self._count = self._count, 0
        self._log.warning(
            "dropped %d request%s whose deadline had passed before predict: their callers "
            "gave up; each has its DeadlineExceeded result", count, "" if count == 1 else "s")


class BrokerOutage:
    """One worker's view of the broker being unreachable, told in three kinds of line: the loss
    (WARNING, with the error) at once, a summary at most once per ``interval`` while it lasts
    ("still cannot reach Redis at ... after N s, N retries"), and one INFO line when it is back.

    Each path that retries (the fetcher, the heartbeat) reports under its own name:
    :meth:`failed` on each failed try, :meth:`succeeded` on a try that worked. The broker is
    back when every path that failed has succeeded since, so a path that Redis still refuses
    (a heartbeat's write at ``maxmemory``, while a fetch of an empty queue, which writes
    nothing, goes through) keeps the outage open instead of flapping lost/back each second.
    Thread-safe.
    """

    def __init__(self, log: logging.Logger, where: str, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self.where = where
        self._throttle = Throttle(interval, clock)
        self._lock = threading.Lock()
        self._failing: set[str] = set()
        self._since = 0.0
        self._retries = 0

    @property
    def ongoing(self) -> bool:
        return bool(self._failing)

    def failed(self, path: str, exc: BaseException) -> None:
        """``path``'s try failed with ``exc``; it retries."""
        with self._lock:
            first = not self._failing
            self._failing.add(path)
            if first:
                self._since, self._retries = self._throttle.clock(), 0
            else:
                self._retries += 1
            if not self._throttle.due():
                return
            seconds, retries = self._throttle.clock() - self._since, self._retries
        if first:
            self._log.warning("lost the connection to Redis at %s (%s): %s; retrying, with a "
                              "summary every %.0f s until it is back", self.where, path, exc,
                              self._throttle.interval)
        else:
            self._log.warning("still cannot reach Redis at %s after %.0f s, %d retries; last "
                              "error (%s): %s", self.where, seconds, retries, path, exc)

    def succeeded(self, path: str) -> None:
        """``path``'s try worked (cheap when nothing failed: the common case)."""
        if path not in self._failing:
            return
        with self._lock:
            self._failing.discard(path)
            if self._failing:
                return
            seconds, retries = self._throttle.clock() - self._since, self._retries
            self._throttle.reset()
        self._log.info("Redis at %s is reachable again after %.1f s, %d retries", self.where,
                       seconds, retries)
