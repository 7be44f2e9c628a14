"""Where fetched requests wait for predict, and where batches are formed.

Batches form at the moment ``predict`` is free, not when messages arrive: while one batch
predicts, the fetcher fills the buffer, and the next ``take`` gets everything that came in, up
to ``batch_size``. A lone request at idle is taken at once. ``batch_timeout`` only holds back a
partial batch while the fetcher reports more messages waiting in Redis, and never longer than
that the oldest request has waited ``batch_timeout``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable

from .request import Request

__all__ = ["RequestBuffer"]


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
            return self.capacity - len(self._items)

    def put_many(self, requests: Iterable[Request], *, more_waiting: bool) -> None:
        with self._cond:
            self._items.extend(requests)
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
                lambda: self._closed or len(self._items) < self.capacity, timeout
            ) and not self._closed

    def take(self, batch_size: int, batch_timeout: float) -> list[Request] | None:
        """Next batch, oldest first; ``None`` once closed and empty.

        A suspect request (one that was in a worker that died) is always taken alone.
        """
        with self._cond:
            while not self._items:
                if self._closed:
                    return None
                self._cond.wait()
            if batch_timeout > 0 and not self._items[0].suspect:
                deadline = self._items[0].received + batch_timeout
                while (
                    len(self._items) < batch_size
                    and self._more_waiting
                    and not self._closed
                    and (left := deadline - time.monotonic()) > 0
                ):
                    self._cond.wait(left)
            batch = [self._items.popleft()]
            if not batch[0].suspect:
                while self._items and len(batch) < batch_size and not self._items[0].suspect:
                    batch.append(self._items.popleft())
            self._cond.notify_all()
            return batch

    def close(self) -> list[Request]:
        """Stop taking new batches; returns what was still buffered (to give back)."""
        with self._cond:
            self._closed = True
            left = list(self._items)
            self._items.clear()
            self._cond.notify_all()
            return left
