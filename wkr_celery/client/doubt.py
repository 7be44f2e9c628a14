"""Requests whose fate an empty Redis restart (or a long broker outage) left open.

When the broker comes back empty, a pending request is in one of three places, and the client
cannot tell which from the broker, whose lists and inflight hashes are gone:

* still queued: gone for good, no worker will ever see it;
* already fetched by a worker (buffered, in ``predict``, being stored): its answer will be
  stored on the result Redis and pushed onto the reply list as usual;
* already answered: its answer is on the reply list or among the stored results.

So such requests are put *in doubt* rather than failed: answers keep being delivered as they
come, and only when the service has gone a grace period without answering any request in doubt
are the rest failed with ``RequestLost``. A worker answers what it held in order, a batch at a
time, so the gaps between those answers are bounded by a few batch durations; the grace is the
service's visibility timeout, or four of its slowest worker's mean batch durations when that is
longer (its prefetched batches, the one in ``predict`` and one being stored).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..connections import REDIS_ERRORS
from ..errors import WKRError

if TYPE_CHECKING:
    from ..broker import Heartbeat, ServiceRegistry

__all__ = ["Doubt", "answer_grace", "grace_from"]

#: Batches a worker may have ahead of a given request it holds: two prefetched (the default
#: ``-prefetch``), the one in ``predict``, and one being stored.
BATCHES_AHEAD = 4


class Doubt:
    """Task ids in doubt, each with the error its caller gets if no answer comes."""

    def __init__(self, grace: float) -> None:
        #: Seconds without an answer to any request in doubt before the rest count as lost.
        self.grace = grace
        self._errors: dict[str, WKRError] = {}
        self._progress = 0.0  # monotonic time of the last doubt begun or answer received
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._errors)

    def add(self, task_ids: Iterable[str], error: WKRError) -> int:
        """Put ``task_ids`` in doubt (those already in doubt keep their error); returns how
        many are in doubt now."""
        with self._lock:
            for task_id in task_ids:
                self._errors.setdefault(task_id, error)
            self._progress = time.monotonic()
            return len(self._errors)

    def answered(self, task_id: str) -> None:
        """An answer arrived: the service is still answering requests in doubt."""
        if not self._errors:  # the common case: nothing in doubt, no lock taken
            return
        with self._lock:
            if self._errors.pop(task_id, None) is not None:
                self._progress = time.monotonic()

    def due(self) -> dict[str, WKRError]:
        """Requests in doubt to fail now: the grace has passed without an answer to any."""
        if not self._errors or time.monotonic() < self._progress + self.grace:
            return {}
        with self._lock:
            lost, self._errors = self._errors, {}
            return lost


def answer_grace(registry: ServiceRegistry, visibility_timeout: float) -> float:
    """The grace of :class:`Doubt` for this service, from its workers' heartbeats.

    Falls back to ``visibility_timeout`` alone when no heartbeat can be read (the broker is
    down, or the workers have not beaten on a restarted one yet).
    """
    try:
        beats = list(registry.live_workers().values())
    except REDIS_ERRORS:
        beats = []
    return grace_from(beats, visibility_timeout)


def grace_from(beats: Iterable[Heartbeat], visibility_timeout: float) -> float:
    """The grace for workers whose heartbeats are ``beats`` (the asyncio client reads them
    itself): the visibility timeout, or :data:`BATCHES_AHEAD` mean batch durations of the
    slowest worker when that is longer."""
    slowest = 0.0
    for beat in beats:  # decoded and checked (numbers where numbers go) by the registry
        if beat.get("batches"):
            slowest = max(slowest, float(beat.get("predict_seconds", 0)) / beat["batches"])
    return max(visibility_timeout, BATCHES_AHEAD * slowest)
