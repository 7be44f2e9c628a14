"""The original's blocking ``WKRClient.encode`` on top of wkr-celery's future-returning client."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from typing import Any

from wkr_celery.client import WKRClient as FutureClient

__all__ = ["WKRClient"]


class WKRClient(FutureClient):
    """wkr-celery's client whose ``encode(x)`` waits for the result and returns it.

    Construction, ``encode_many``, ``server_status``, ``close`` and the context manager are
    :class:`wkr_celery.client.WKRClient`'s. One difference from the original: ``timeout`` is in
    seconds (the original's was milliseconds), and it is the request's deadline.
    """

    def encode(
        self, x: Any, *, timeout: float | None = None, priority: int | str | None = None
    ) -> Any:
        """Send one input, wait for its result and return it.

        Raises what the future would: ``InputError`` before sending, a ``RequestFailed``
        subclass for what the service reports (``DeadlineExceeded`` once ``timeout`` seconds
        have passed without an answer).
        """
        return self._submit(x, timeout=timeout, priority=priority).result()

    def encode_many(
        self,
        inputs: Iterable[Any],
        *,
        max_inflight: int = 256,
        timeout: float | None = None,
        priority: int | str | None = None,
    ) -> Iterator[Any]:
        """Stream results in input order with up to ``max_inflight`` requests out, as in
        wkr-celery (the base class's loop would call the blocking ``encode``)."""
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, got {max_inflight}")
        window: deque[Future[Any]] = deque()
        for x in inputs:
            window.append(self._submit(x, timeout=timeout, priority=priority))
            if len(window) >= max_inflight:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()

    def _submit(self, x: Any, *, timeout: float | None, priority: int | str | None
                ) -> Future[Any]:
        return super().encode(x, timeout=timeout, priority=priority)

    def __enter__(self) -> WKRClient:
        return self
