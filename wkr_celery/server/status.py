"""What a worker tells others about itself: the service info and its heartbeat counters."""

from __future__ import annotations

import threading
import time
from typing import Any

from ..config import Settings
from ..inputs import InputSpec
from ..version import __version__
from .hardworker import WKRHardWorker

__all__ = ["service_info", "ServingStats"]


def service_info(settings: Settings, worker: WKRHardWorker | type[WKRHardWorker]) -> dict[str, Any]:
    """What clients read before sending: versions, limits, and the input contract."""
    spec = InputSpec.of_worker(settings.protocol, worker.input_shape, worker.input_dtype,
                               settings.max_payload)
    return {
        "version": __version__,
        "batch_size": settings.batch_size,
        "max_queue": settings.max_queue,
        "visibility_timeout": settings.visibility_timeout,
        "result_expires": settings.result_expires,
        "num_worker": settings.num_worker,
        "worker_class": settings.worker_class,
        "result_store": settings.result_store,
        **spec.info(),
    }


class ServingStats:
    """Counters shipped with every heartbeat."""

    def __init__(self) -> None:
        self.started = time.time()
        self.requests = 0
        self.failed = 0
        self.batches = 0
        self.predict_seconds = 0.0
        self.batch_sizes: dict[int, int] = {}
        self._lock = threading.Lock()

    def add_batch(self, size: int, failed: int, predict_seconds: float) -> None:
        with self._lock:
            self._add(size, failed, predict_seconds)

    def _add(self, size: int, failed: int, predict_seconds: float) -> None:
        self.requests += size
        self.failed += failed
        self.batches += 1
        self.predict_seconds += predict_seconds
        self.batch_sizes[size] = self.batch_sizes.get(size, 0) + 1
