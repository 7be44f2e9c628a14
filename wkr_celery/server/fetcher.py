"""Fetching for one worker process: moving messages from the service's queue into the buffer.

Two threads fetch, never both at once (whoever holds :attr:`Fetcher.turn`):

* **the predictor**, when it is idle: nothing buffered, so it blocks on the queue itself
  (``BLMOVE`` from the arrivals list into its landing list, :meth:`RequestQueue.land`) and
  predicts what came on the same thread. A lone request then costs the worker one round trip
  to receive and crosses no thread hand-off: the thread that wakes on the request itself
  predicts it (and, with nothing else to do, stores it). A nudge (work on another list) or a
  timeout makes it fetch instead.
* **the fetcher thread** (:meth:`Fetcher.run`), while the predictor is busy (predicting, storing
  or holding a partial batch for ``-batch_timeout``): it keeps the buffer filled (``fetch.lua``,
  in priority order) so the next batch is ready when ``predict`` returns. It never blocks on
  Redis: with nothing waiting it looks again every :data:`PREFETCH_POLL` seconds while the
  predictor stays busy, and stands down when the predictor goes idle.

Every message fetched is in this worker's inflight hash until its result is stored (see
docs/design.md); :attr:`held` is what this process knows it holds, for :meth:`reconcile`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection

from ..broker import Fetched, RequestQueue
from ..config import Settings
from ..connections import REDIS_ERRORS, redacted
from ..messages import parse_request
from ..scripts import LANDED_ID, NUDGE
from .buffer import RequestBuffer
from .counted_logs import BrokerOutage
from .request import Request

__all__ = ["Fetcher", "PREFETCH_POLL", "ack_args", "split"]

log = logging.getLogger("wkr_celery.serving")

#: How often the fetcher thread looks at an empty queue while the predictor is busy.
PREFETCH_POLL = 0.002
_BACKOFF_CAP = 2.0
_RECONCILE_SECONDS = 2.0  # how often a worker looks for messages it holds without knowing


class Fetcher:
    """Fetches for one worker into ``buffer``; :meth:`run` is the fetcher thread's loop."""

    def __init__(self, queue: RequestQueue, worker_id: str, buffer: RequestBuffer,
                 settings: Settings, stopping: threading.Event, poll: float,
                 outage: BrokerOutage | None = None) -> None:
        self.queue = queue
        self.worker_id = worker_id
        self.buffer = buffer
        self.stopping = stopping
        self.poll = poll
        self.turn = threading.Lock()
        #: Set while the predictor is not waiting on the queue: the fetcher thread's cue.
        self.busy = threading.Event()
        self.busy.set()
        self.held: set[int] = set()  # inflight ids fetched and not yet acked
        self.landed: set[bytes] = set()  # landed messages not yet acked
        self._held_lock = threading.Lock()
        self._allow_pickle = settings.allow_pickle
        self._max_payload = settings.max_payload
        self._next_reconcile = time.monotonic() + _RECONCILE_SECONDS
        self._backoff = 0.05
        #: Logs a broker outage once, not each retry (shared with the heartbeat, see
        #: :class:`.counted_logs.BrokerOutage`).
        self.outage = outage or BrokerOutage(log, redacted(settings.broker))
        #: Whether the last messages to arrive came several at once: the worker is in a stream,
        #: and woken from idle it fetches what queued behind the message that woke it in the
        #: same round trip. One message alone (a lone request) turns it off again.
        self._in_stream = False

    def forget(self, requests: Collection[Request]) -> None:
        """Acked requests: no longer held (called after the ack, so :meth:`reconcile` never
        sees one in neither place)."""
        ids, landed = split(requests)
        with self._held_lock:
            self.held.difference_update(ids)
            self.landed.difference_update(landed)

    # The fetcher thread ---------------------------------------------------------------------

    def run(self) -> None:
        """Prefetch while the predictor is busy; stand down while it waits on the queue."""
        while not self.stopping.is_set():
            if not self.buffer.wait_for_room(self.poll) or not self.busy.wait(self.poll):
                continue
            if not self.turn.acquire(timeout=self.poll):
                continue
            try:
                got = self.fetch()
            finally:
                self.turn.release()
                self.buffer.poke()  # an idle predictor waiting for the turn looks again
            if not got:
                self.stopping.wait(PREFETCH_POLL)

    # The predictor, idle --------------------------------------------------------------------

    def fetch_when_idle(self) -> bool:
        """The predictor found nothing buffered: block on the arrivals list itself (up to
        ``poll``) and buffer what lands, with what queued behind it when the worker is in a
        stream (see :meth:`RequestQueue.land`); on a nudge or a timeout, fetch. False when the
        fetcher thread has the turn (or the worker stops): the caller waits on the buffer,
        where that fetch lands."""
        if self.stopping.is_set() or not self.turn.acquire(blocking=False):
            return False
        try:
            # Behind a lone request nothing waits: no fetch behind its BLMOVE then, which
            # would cost it Redis and parsing time (about 40 us on the latency path).
            more = self.buffer.room() - 1 if self._in_stream else 0
            message, fetched = self._land(more)
            more_waiting = 0 < more <= len(fetched)  # the fetch filled its room
            if message is not None:
                fetched.insert(0, (LANDED_ID, message, 0))
            if fetched:
                self._buffer(fetched, more_waiting=more_waiting)
            elif not self.stopping.is_set():
                self.fetch()  # a nudge, or a second's timeout: look at every list
        finally:
            self.turn.release()
        return True

    def _land(self, more: int) -> tuple[bytes | None, list[Fetched]]:
        """One blocking ``BLMOVE``, with a fetch of up to ``more`` behind it: the message that
        landed, or ``None`` (timeout, a nudge, which is dropped here, or a broker error), and
        what the fetch took."""
        try:
            message, fetched = self.queue.land(self.worker_id, self.poll, more)
            if message == NUDGE:
                self.queue.drop_nudge(self.worker_id)
                message = None
            if message is not None:
                with self._held_lock:
                    self.landed.add(message)
        except REDIS_ERRORS as exc:
            self._broker_error(exc)
            return None, []
        self._broker_ok()
        return message, fetched

    # Either thread, holding the turn --------------------------------------------------------

    def fetch(self) -> int:
        """Fetch as much as the buffer has room for (``fetch.lua``, never blocking). Returns how
        many were buffered; a broker error is logged and backed off here (the caller just looks
        again)."""
        try:
            if time.monotonic() >= self._next_reconcile:
                self.reconcile()
                self._next_reconcile = time.monotonic() + _RECONCILE_SECONDS
            room = self.buffer.room()
            if room <= 0:
                return 0
            fetched = self.queue.fetch(self.worker_id, room)
        except REDIS_ERRORS as exc:
            self._broker_error(exc)
            return 0
        self._broker_ok()
        if fetched:
            self._buffer(fetched, more_waiting=len(fetched) >= room)
        else:
            self.buffer.set_more_waiting(False)
        return len(fetched)

    def _broker_error(self, exc: BaseException) -> None:
        self._next_reconcile = 0.0  # a lost reply may have moved messages to us
        self.outage.failed("fetch", exc)  # logged once an outage, then summed
        self.stopping.wait(self._backoff)
        self._backoff = min(self._backoff * 2, _BACKOFF_CAP)

    def _broker_ok(self) -> None:
        self._backoff = 0.05
        self.outage.succeeded("fetch")

    def _buffer(self, fetched: list[tuple[int, bytes, int]], more_waiting: bool) -> None:
        self._in_stream = len(fetched) > 1
        with self._held_lock:
            self.held.update(inflight_id for inflight_id, _, _ in fetched)
        now = time.monotonic()
        requests = []
        for inflight_id, raw, deaths in fetched:
            msg = parse_request(raw, allow_pickle=self._allow_pickle,
                                max_payload=self._max_payload)
            if msg.error is not None:
                log.error("refused message %s: %s", msg.task_id or "(no task id)", msg.error)
            requests.append(Request(inflight_id, raw, deaths, msg.task_id, msg.client_id,
                                    msg.deadline, msg.payload, msg.error, now))
        self.buffer.put_many(requests, more_waiting=more_waiting)

    def reconcile(self) -> None:
        """Give back messages in our inflight hash that we never received.

        A fetch.lua call whose reply is lost (connection dropped, then retried by redis-py or us)
        has still moved its messages into our hash; nobody would requeue them while we live.
        Runs holding the turn, so no fetch is half-recorded while it looks.
        """
        ids = self.queue.held(self.worker_id)
        landed = self.queue.landed(self.worker_id)
        with self._held_lock:
            orphans = [i for i in ids if i not in self.held]
            strays = [m for m in landed if m not in self.landed]  # nudges too
        if orphans or strays:
            # One acked (and forgotten) between the two reads above looks orphaned too; the
            # give-back finds it gone and counts only what it really returned.
            count = self.queue.give_back(self.worker_id, orphans, strays)
            if count:
                log.warning("gave back %d request(s) fetched without a reply (connection "
                            "lost)", count)


def ack_args(requests: Collection[Request]) -> tuple[list[int], list[bytes], list[bytes]]:
    """What acking ``requests`` names: their inflight ids, the messages whose death counts go
    (suspects), and the messages to take off the landing list."""
    ids, landed = split(requests)
    return ids, [r.raw for r in requests if r.suspect], landed


def split(requests: Collection[Request]) -> tuple[list[int], list[bytes]]:
    """Inflight ids of ``requests``, and the messages of those that landed (acked by value)."""
    ids = [r.id for r in requests if r.id != LANDED_ID]
    landed = [r.raw for r in requests if r.id == LANDED_ID]
    return ids, landed
