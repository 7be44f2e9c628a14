"""What a worker tells others about itself: the service info and its heartbeat counters."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from ..clock import wall_time
from ..config import Settings
from ..inputs import InputSpec
from ..version import __version__
from .hardworker import WKRHardWorker

__all__ = ["service_info", "ServingStats", "Reported"]


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
        self.started = wall_time()
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

    def beat(self, statistics: dict[str, dict[str, float]]
             ) -> tuple[dict[str, Any], dict[str, float]]:
        """The heartbeat's figures and the same as totals fields (:meth:`totals`), read at once."""
        totals = self.totals(statistics)
        sizes = {int(k[11:]): int(v) for k, v in totals.items() if k.startswith("batch_size:")}
        return {"started": self.started, "requests": int(totals["requests"]),
                "failed": int(totals["failed"]), "batches": int(totals["batches"]),
                "predict_seconds": totals["predict_seconds"], "batch_sizes": sizes,
                "statistics": statistics}, totals

    def totals(self, statistics: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        """This process's cumulative figures as fields of the service's totals hash:
        ``requests``, ``failed``, ``batches``, ``predict_seconds``, ``batch_size:<n>`` (batches
        of n inputs) and ``stat:<key>:count`` / ``stat:<key>:sum`` per ``record_statistic`` key."""
        with self._lock:
            flat = {"requests": float(self.requests), "failed": float(self.failed),
                    "batches": float(self.batches), "predict_seconds": self.predict_seconds}
            flat.update({f"batch_size:{n}": float(c) for n, c in self.batch_sizes.items()})
        for key, s in statistics.items():
            flat[f"stat:{key}:count"], flat[f"stat:{key}:sum"] = s["count"], s["sum"]
        return flat


class Reported:
    """What one worker process has added to the service's totals hash so far.

    Each heartbeat adds only what its counters gained since the last beat Redis took, so the
    service-wide counters (``/metrics``, ``/status/server``, the dashboard) never go down when
    a worker dies or is restarted: a worker killed loses at most its last beat's gains, and a
    stopping one adds its last figures (``Serving.stop``).
    """

    def __init__(self) -> None:
        self._sent: dict[str, float] = {}

    def grown(self, now: Mapping[str, float]) -> dict[str, float]:
        return {k: v - self._sent.get(k, 0.0) for k, v in now.items() if v != self._sent.get(k, 0.0)}

    def sent(self, now: Mapping[str, float]) -> None:
        self._sent = dict(now)
