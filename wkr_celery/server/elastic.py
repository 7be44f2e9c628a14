"""The supervisor's elastic half (``-num_worker_max``): once a second, what the queue and the
workers look like, the :class:`~.scaling.Autoscaler`'s decision, and the state the REST API,
the dashboard and ``/metrics`` show (``wkr:<name>:scaling``).

The supervisor acts on a decision: it adds a worker process on the next device of
``-device_map``, or retires its newest added one with SIGTERM, the graceful stop that finishes
the batch in ``predict`` and gives buffered requests back, so nothing is lost either way.
"""

from __future__ import annotations

import logging
from typing import Any

from ..broker import RequestQueue, ServiceRegistry
from ..clock import wall_time
from ..config import Settings
from ..connections import REDIS_ERRORS
from .scaling import Autoscaler, Decision, ScalePolicy
from .worker_slot import WorkerProcess

__all__ = ["Elastic"]

log = logging.getLogger("wkr_celery.server")

_TICK = 1.0  # seconds between looks at the queue


class Elastic:
    """Decides, for one supervisor, when its service grows or shrinks."""

    def __init__(self, settings: Settings, queue: RequestQueue, registry: ServiceRegistry
                 ) -> None:
        self.queue = queue
        self.registry = registry
        self.policy = ScalePolicy(floor=settings.num_worker, ceiling=settings.num_worker_max,
                                  up_wait=settings.scale_up_wait,
                                  down_after=settings.scale_down_after)
        self.scaler = Autoscaler(self.policy)
        self.grown = self.retired = 0
        self.last = self.reason = ""
        self.decided_at = 0.0
        self._next = 0.0

    def tick(self, now: float, slots: list[WorkerProcess]) -> Decision | None:
        """At most once a second: the decision for these worker slots, or ``None``."""
        if now < self._next:
            return None
        self._next = now + _TICK
        running = [s for s in slots if s.process is not None and not s.retiring]
        try:
            live = self.registry.live_workers()
            queued = self.queue.queue_length()
        except REDIS_ERRORS as exc:  # the broker's outage is logged where it is used
            log.debug("elastic check skipped: %s", exc)
            return None
        decision = self.scaler.observe(
            now, queued=queued,
            served=sum(int(beat.get("requests", 0)) for beat in live.values()),
            busy=sum(float(beat.get("predict_seconds", 0.0)) for beat in live.values()),
            workers=len(running),
            starting=sum(1 for s in running if s.worker_id not in live))
        if decision is not None:
            self._count(decision)
        self._report(len(running))
        return decision

    def _count(self, decision: Decision) -> None:
        if decision.change > 0:
            self.grown += 1
            self.last = "added"
        else:
            self.retired += 1
            self.last = "retired"
        self.reason = decision.reason
        self.decided_at = wall_time()

    def _report(self, workers: int) -> None:
        state: dict[str, Any] = {
            "workers": workers, "floor": self.policy.floor, "ceiling": self.policy.ceiling,
            "wait_s": round(self.scaler.wait, 3), "rate": round(self.scaler.rate, 1),
            "busy": round(self.scaler.busy, 3), "grown": self.grown, "retired": self.retired,
            "last": self.last, "reason": self.reason, "decided_at": self.decided_at,
        }
        try:
            self.registry.write_scaling(state, ttl=10 * _TICK)
        except REDIS_ERRORS as exc:
            log.debug("could not report the elastic state: %s", exc)
