"""A request inside a worker, from fetch to stored result."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..errors import PredictError, RequestFailed, ResultTooLarge
from ..messages import encode_meta, encode_success, failure_meta

log = logging.getLogger("wkr_celery.serving")

__all__ = ["Request", "Outcome"]


@dataclass(slots=True)
class Request:
    """One fetched message, decoded; ``error`` set means it is answered without predict."""

    id: int
    raw: bytes
    deaths: int
    task_id: str | None
    client_id: str | None
    deadline: float | None
    payload: Any
    error: RequestFailed | None
    received: float

    @property
    def suspect(self) -> bool:
        """Held by a worker that died: served alone so a crash blames only itself."""
        return self.deaths > 0


@dataclass(slots=True)
class Outcome:
    """A result, or an error with the worker's traceback text."""

    value: Any = None
    error: RequestFailed | None = None
    traceback: str | None = None

    def stored(self, task_id: str, date: str, max_result: int) -> bytes:
        """The result to store, in Celery's format; one over ``max_result`` bytes
        (``-max_result``) is stored as a ``ResultTooLarge`` failure instead, so no caller's
        answer fills the result Redis.

        A result that cannot be stored turns this outcome into that failure, so the batch's
        statistics and listeners (task events) count it as failed.
        """
        if self.error is None:
            try:
                stored = encode_success(task_id, self.value, date)
            except Exception as exc:  # whatever the user's object raises: its caller's failure
                error: RequestFailed = PredictError(
                    f"predict returned a {type(self.value).__name__} result that cannot be "
                    f"encoded: {exc}"
                )
            else:
                if len(stored) <= max_result:
                    return stored
                error = ResultTooLarge(
                    f"predict's result for this input encodes to {len(stored)} bytes; this "
                    f"service stores at most {max_result} bytes (-max_result); not stored")
            log.error("request %s failed: %s", task_id, error)
            self.value, self.error = None, error
        return encode_meta(failure_meta(task_id, self.error, self.traceback, date))
