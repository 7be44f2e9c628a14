"""Where fetched requests wait for predict, and where batches are formed.

Batches form at the moment ``predict`` is free, not when messages arrive: while one batch
predicts, the fetcher fills the buffer, and the next ``take`` gets everything that came in, up
to ``batch_size``. A lone request at idle is taken at once. ``batch_timeout`` only holds back a
partial batch while the fetcher reports more messages waiting in Redis and the buffer has room
for them, and never longer than that the oldest request has waited ``batch_timeout``.

:class:`KeyedRequestBuffer` serves workers that declare ``batch_key`` / ``batch_cost`` (inputs
of variable size): a batch holds inputs of one key only, and their costs sum to at most
``max_batch_cost``. The oldest request's key is always served next, so no key starves, and the
same ``batch_timeout`` rule holds with "full" meaning full for that key.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from .request import Request

__all__ = ["RequestBuffer", "KeyedRequestBuffer", "Traits"]

#: ``(key, cost)`` of a request, or ``None`` for one answered without predict (refused input).
Traits = Callable[[Request], "tuple[Hashable, float] | None"]


class RequestBuffer:
    """A bounded, thread-safe FIFO of requests with batch-forming ``take``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[Request] = deque()
        self._cond = threading.Condition()
        self._more_waiting = False
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def room(self) -> int:
        with self._cond:
            return self.capacity - len(self)

    def put_many(self, requests: Iterable[Request], *, more_waiting: bool) -> None:
        entries = self._prepare(requests)  # outside the lock: it may run the user's code
        with self._cond:
            self._add(entries)
            self._more_waiting = more_waiting
            self._cond.notify_all()

    def set_more_waiting(self, more_waiting: bool) -> None:
        with self._cond:
            self._more_waiting = more_waiting
            self._cond.notify_all()

    def wait_for_room(self, timeout: float) -> bool:
        """Block the fetcher until there is room (or ``timeout``); True when there is."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._closed or len(self) < self.capacity, timeout
            ) and not self._closed

    def poke(self) -> None:
        """Wake a ``take`` waiting for a first request, so its caller can look again."""
        with self._cond:
            self._cond.notify_all()

    def take(self, batch_size: int, batch_timeout: float, wait: float | None = None
             ) -> list[Request] | None:
        """Next batch, oldest first; ``None`` once closed and empty.

        With ``wait`` (seconds), an empty buffer is waited on at most once, up to ``wait``, and
        ``[]`` comes back if it is still empty (woken by :meth:`poke`, or timed out): the
        predictor then looks at the queue itself. A suspect request (one that was in a worker
        that died) is always taken alone.
        """
        with self._cond:
            while not len(self):
                if self._closed:
                    return None
                if wait is not None:
                    if wait > 0:
                        self._cond.wait(wait)
                    if not len(self):
                        return None if self._closed else []
                    break
                self._cond.wait()
            if batch_timeout > 0:
                deadline = self._oldest().received + batch_timeout
                while (
                    not self._closed
                    and self._more_waiting
                    and len(self) < self.capacity
                    and not self._full(batch_size)
                    and (left := deadline - time.monotonic()) > 0
                ):
                    self._cond.wait(left)
                if not len(self):  # closed while waiting: close() handed everything back
                    return None
            batch = self._pop_batch(batch_size)
            self._cond.notify_all()
            return batch

    def close(self) -> list[Request]:
        """Stop taking new batches; returns what was still buffered (to give back)."""
        with self._cond:
            self._closed = True
            left = self._drain()
            self._cond.notify_all()
            return left

    # Batch formation: the parts a keyed buffer changes; called with the lock held ---------

    def _prepare(self, requests: Iterable[Request]) -> Any:
        return requests

    def _add(self, entries: Any) -> None:
        self._items.extend(entries)

    def _oldest(self) -> Request:
        return self._items[0]

    def _full(self, batch_size: int) -> bool:
        """Whether waiting could not make the next batch any fuller."""
        return self._items[0].suspect or len(self._items) >= batch_size

    def _pop_batch(self, batch_size: int) -> list[Request]:
        batch = [self._items.popleft()]
        if not batch[0].suspect:
            while self._items and len(batch) < batch_size and not self._items[0].suspect:
                batch.append(self._items.popleft())
        return batch

    def _drain(self) -> list[Request]:
        left = list(self._items)
        self._items.clear()
        return left


class _Internal:
    """A queue key no user key can equal: suspects, and requests answered without predict."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


_SUSPECT = _Internal("suspect")
_REFUSED = _Internal("refused")

# (arrival number, cost, request)
_Entry = tuple[int, float, Request]


class KeyedRequestBuffer(RequestBuffer):
    """Batches that never mix keys and stay within a cost cap; the oldest request's key first.

    ``traits`` gives each request its ``(key, cost)`` as it is put in. One queue per key keeps
    arrival order; ``take`` picks the key whose head arrived first and takes that key's requests
    in order while the count stays within ``batch_size`` and the summed cost within
    ``max_cost`` (0: no cost cap). A request costing more than ``max_cost`` alone goes alone.
    Suspects are taken alone, in their turn; refused inputs batch together (no predict runs).
    """

    def __init__(self, capacity: int, traits: Traits, max_cost: float = 0) -> None:
        super().__init__(capacity)
        self.max_cost = max_cost
        self._traits = traits
        self._queues: dict[Hashable, deque[_Entry]] = {}
        self._costs: dict[Hashable, float] = {}
        self._size = 0
        self._arrivals = itertools.count()

    def __len__(self) -> int:
        return self._size

    def _prepare(self, requests: Iterable[Request]) -> list[tuple[Hashable, float, Request]]:
        prepared: list[tuple[Hashable, float, Request]] = []
        for request in requests:
            traits = None if request.suspect else self._traits(request)
            if traits is None:
                prepared.append((_SUSPECT if request.suspect else _REFUSED, 0.0, request))
            else:
                prepared.append((traits[0], traits[1], request))
        return prepared

    def _add(self, entries: list[tuple[Hashable, float, Request]]) -> None:
        for key, cost, request in entries:
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = deque()
                self._costs[key] = 0.0
            queue.append((next(self._arrivals), cost, request))
            self._costs[key] += cost
        self._size += len(entries)

    def _oldest_key(self) -> Hashable:
        return min(self._queues, key=lambda k: self._queues[k][0][0])

    def _oldest(self) -> Request:
        return self._queues[self._oldest_key()][0][2]

    def _full(self, batch_size: int) -> bool:
        key = self._oldest_key()
        if key is _SUSPECT or key is _REFUSED:  # nothing to gain by waiting for company
            return True
        return len(self._queues[key]) >= batch_size or (
            self.max_cost > 0 and self._costs[key] > self.max_cost)

    def _pop_batch(self, batch_size: int) -> list[Request]:
        key = self._oldest_key()
        queue = self._queues[key]
        _, total, first = queue.popleft()
        batch = [first]
        limit = 1 if key is _SUSPECT else batch_size
        capped = self.max_cost > 0 and key is not _REFUSED
        while queue and len(batch) < limit:
            cost = queue[0][1]
            if capped and total + cost > self.max_cost:
                break
            total += cost
            batch.append(queue.popleft()[2])
        if queue:
            self._costs[key] -= total
        else:  # forget the key, and any rounding in its running cost
            del self._queues[key], self._costs[key]
        self._size -= len(batch)
        return batch

    def _drain(self) -> list[Request]:
        entries = sorted(e for queue in self._queues.values() for e in queue)
        self._queues.clear()
        self._costs.clear()
        self._size = 0
        return [request for _, _, request in entries]
