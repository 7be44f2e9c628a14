"""Requests dropped before predict because their deadline passed: counted, logged as totals.

Each such request's caller is told by its stored ``DeadlineExceeded`` result; the log is for the
operator, who needs to know that requests expired in the queue and how many, not each task id.
A worker that comes back to a backlog (a service restarted behind clients that gave up, a worker
stalled) drops thousands at once: logged one ERROR line each, a restart behind 24,399 expired
requests wrote 4 MB of identical lines and buried everything else in the log. So the first drop
after a quiet spell is logged at once, later ones are summed and logged once per ``interval``
(by the next drop or the heartbeat, :meth:`flush`), and what is left when the worker stops.
"""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["LateDrops"]


class LateDrops:
    """Thread-safe tally of late drops, logged at most once per ``interval`` seconds."""

    def __init__(self, log: logging.Logger, interval: float = 10.0) -> None:
        self._log = log
        self._interval = interval
        self._lock = threading.Lock()
        self._count = 0
        self._logged_at = -float("inf")

    def add(self, count: int = 1) -> None:
        """``count`` more requests dropped."""
        with self._lock:
            self._count += count
        self.flush()

    def flush(self, force: bool = False) -> None:
        """Log the tally if there is one and ``interval`` has passed since the last line (or
        ``force``: the worker stops)."""
        with self._lock:
            now = time.monotonic()
            if not self._count or (not force and now - self._logged_at < self._interval):
                return
            count = self._count
            self._count, self._logged_at = 0, now
        self._log.warning(
            "dropped %d request%s whose deadline had passed before predict: their callers "
            "gave up; each has its DeadlineExceeded result", count, "" if count == 1 else "s")
