"""Acks that wait for the broker: batches whose results are stored but whose messages the broker
still holds in this worker's inflight hash.

With the result Redis apart from the broker, a worker stores a batch's results, then acks its
messages on the broker in a second command. While the broker is down, the ack cannot go through
but answers still can: a writer that retried the ack until the broker came back would hold every
later batch's answers behind it. So a stored batch joins :class:`PendingAcks` and the writer goes
on; the pending batches are acked together, oldest first, by the next store or the next
heartbeat, whichever reaches the broker first, and by a graceful stop before it puts back what
is left (else it would put back messages already answered).

Only an acked message is forgotten by the fetcher (``Fetcher.forget``): until then it is in the
fetcher's ``held`` set, so ``Fetcher.reconcile`` never gives back a message whose answer is
stored. An ack repeated (its reply lost) removes nothing: inflight ids never repeat, and a landed
message is one request's envelope.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Sequence

from ..broker import RequestQueue
from ..connections import REDIS_ERRORS
from .fetcher import ack_args
from .request import Request

__all__ = ["PendingAcks"]

log = logging.getLogger("wkr_celery.serving")


class PendingAcks:
    """Stored batches of worker ``worker_id`` not yet acked on ``queue``, oldest first."""

    def __init__(self, queue: RequestQueue, worker_id: str,
                 forget: Callable[[Collection[Request]], None]) -> None:
        self._queue = queue
        self._worker_id = worker_id
        self._forget = forget
        self._batches: list[Sequence[Request]] = []
        self._lock = threading.Lock()  # guards _batches
        self._acking = threading.Lock()  # one ack at a time: in order, none sent twice at once
        self._failing = False  # the last ack failed: log the outage once, and its end

    def __len__(self) -> int:
        with self._lock:
            return sum(len(batch) for batch in self._batches)

    def add(self, batch: Sequence[Request]) -> None:
        """A batch whose results are stored: its messages may now be acked."""
        with self._lock:
            self._batches.append(batch)

    def flush(self, *, wait: bool = True) -> int:
        """Ack every pending batch in one round trip and forget them; returns how many messages.

        Raises the broker's error, the batches staying pending. ``wait=False``: return 0 at once
        when another thread is acking (a batch added meanwhile waits for the next flush).
        """
        with self._lock:
            if not self._batches:  # the common case, at every heartbeat: no lock contended
                return 0
        if not self._acking.acquire(blocking=wait):
            return 0
        try:
            with self._lock:
                batches = list(self._batches)
            if not batches:
                return 0
            requests = [request for batch in batches for request in batch]
            self._queue.ack(self._worker_id, *ack_args(requests))
            with self._lock:
                del self._batches[:len(batches)]
            self._forget(requests)
        finally:
            self._acking.release()
        if self._failing:
            self._failing = False
            log.info("broker reachable again: acked %d stored request(s)", len(requests))
        return len(requests)

    def try_flush(self) -> None:
        """:meth:`flush` without waiting; a broker error is logged (once an outage), not
        raised: the batches wait for the next try."""
        try:
            self.flush(wait=False)
        except REDIS_ERRORS as exc:
            if not self._failing:
                self._failing = True
                log.warning("broker unreachable (%s): stored results are delivered, their "
                            "acks wait for the broker", exc)
