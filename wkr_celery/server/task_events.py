"""Celery task events and counts for the batching loop, so Flower shows served requests.

Celery workers send ``task-received``/``task-started``/``task-succeeded`` per task; the batching
loop runs no Celery task, so this listener sends the same three events for each request of a
batch after its results are stored, buffered into **one** publish per batch (kombu's
``task.multi`` routing key, which Flower and ``celery events`` read as a list). It is only
registered with ``-task_events``. It runs on the thread that stored the batch: the writer, or the
predictor when nothing waits to be predicted and the writer is idle; never two at once.

Times are reconstructed: received is when the worker fetched the request, started is when the
batch entered predict, and every request of the batch reports the batch's predict time as its
runtime.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from celery.worker import state

from ..clock import wall_time
from ..messages import TASK_NAME
from .request import Outcome, Request

__all__ = ["TaskEvents", "count_in_celery"]

log = logging.getLogger("wkr_celery.events")

_REPR_LIMIT = 200


class TaskEvents:
    """A ``ServingLoop`` listener: ``(batch, outcomes, predict_seconds)`` → Celery task events."""

    def __init__(self, app: Any, hostname: str) -> None:
        self.app = app
        self.hostname = hostname
        self._connection: Any = None
        self._dispatcher: Any = None

    def _ensure(self) -> Any:
        # Made on first use; one thread at a time uses it (see the module docstring), as kombu
        # connections need.
        if self._dispatcher is None:
            self._connection = self.app.connection_for_write()
            self._dispatcher = self.app.events.Dispatcher(
                self._connection, hostname=self.hostname, enabled=True,
                buffer_group=["task"], buffer_limit=1 << 30)
        return self._dispatcher

    def __call__(self, batch: Sequence[Request], outcomes: Sequence[Outcome],
                 predict_seconds: float) -> None:
        dispatcher = self._ensure()
        now, mono = wall_time(), time.monotonic()
        started = now - predict_seconds
        for request, outcome in zip(batch, outcomes, strict=True):
            if request.task_id is None:
                continue
            uuid = request.task_id
            dispatcher.send("task-received", uuid=uuid, name=TASK_NAME,
                            args=_short(request.payload), kwargs="{}", retries=0, eta=None,
                            root_id=uuid, parent_id=None,
                            timestamp=min(started, now - (mono - request.received)))
            dispatcher.send("task-started", uuid=uuid, timestamp=started)
            if outcome.error is None:
                dispatcher.send("task-succeeded", uuid=uuid, result=_short(outcome.value),
                                runtime=predict_seconds, timestamp=now)
            else:
                dispatcher.send("task-failed", uuid=uuid, timestamp=now,
                                exception=f"{type(outcome.error).__name__}({outcome.error!s})",
                                traceback=outcome.traceback or "")
        dispatcher.flush(errors=False)

    def close(self) -> None:
        """Release the events connection; the serving loop calls this when it stops."""
        if self._dispatcher is not None:
            self._dispatcher.close()
            self._connection.release()
            self._dispatcher = self._connection = None


def _short(value: Any) -> str:
    """What Flower shows for an input or result: arrays by shape, the rest cut to 200 chars."""
    if isinstance(value, np.ndarray):
        return f"<ndarray {value.shape} {value.dtype}>"
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 1] + "…"


def count_in_celery(batch: Sequence[Request], outcomes: Sequence[Outcome],
                    predict_seconds: float) -> None:
    """A ``ServingLoop`` listener, always on: count the batch where a Celery worker counts the
    tasks it ran (``celery.worker.state``).

    Why: Celery reports those counts in ``inspect stats`` (``total``: Flower's "Processed
    tasks" on a worker's page) and in its worker heartbeats (``processed``); the batching
    loop runs no Celery task, so both stayed at zero however many requests a worker served.
    A request fails or succeeds, it was processed, as Celery counts a task that raised.
    """
    state.total_count[TASK_NAME] += len(batch)
    state.all_total_count[0] += len(batch)
