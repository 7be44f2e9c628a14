"""The original's blocking ``WKRClient.encode`` on top of wkr-celery's future-returning client."""

from __future__ import annotations

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
        return super().encode(x, timeout=timeout, priority=priority).result()

    def __enter__(self) -> WKRClient:
        return self
