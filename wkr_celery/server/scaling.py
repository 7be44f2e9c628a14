"""When to add or retire worker processes (``-num_worker_max``): decisions only, no I/O.

The signal is how long requests wait in the queue, not how many there are: a long queue of
fast requests drains in milliseconds and needs no new model copy. The wait is estimated by
Little's law from what the supervisor can see without trusting any clock but its own: requests
queued now, divided by the rate the workers served them over the last few seconds (their
heartbeat counters). With nothing served yet and requests queued, the wait is the time since
the queue was first seen non-empty.

Two thresholds make a band, so a load that sits near one cannot make the service flap: grow
when the wait has stayed above ``-scale_up_wait`` for ``grow_after`` seconds (and the last
worker added is serving); retire an extra worker only when the wait has stayed below half of
it for ``-scale_down_after`` seconds, while the workers are idle enough that one fewer would
still be less than half busy (their heartbeats count the seconds spent in ``predict``), and at
most one per such period.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["ScalePolicy", "Decision", "Autoscaler"]


@dataclass(frozen=True)
class ScalePolicy:
    """The floor and ceiling of worker processes and the thresholds between them."""

    floor: int
    ceiling: int
    up_wait: float  # seconds of estimated queue wait above which the service grows
    down_after: float  # seconds the wait must stay below half of up_wait before one retires
    grow_after: float = 1.0
    window: float = 3.0  # seconds of served counts the rate is measured over
    retire_below: float = 0.5  # busy fraction the workers left after a retirement must stay under

    @property
    def elastic(self) -> bool:
        return self.ceiling > self.floor


@dataclass(frozen=True)
class Decision:
    """Add (``+1``) or retire (``-1``) one worker, and why, in words for the log."""

    change: int
    reason: str


class _Streak:
    """How long a condition has held without a break."""

    def __init__(self) -> None:
        self.since: float | None = None

    def update(self, holds: bool, now: float) -> float:
        """Seconds it has held as of ``now``; -1 when it does not hold."""
        if not holds:
            self.since = None
            return -1.0
        if self.since is None:
            self.since = now
        return now - self.since


class Autoscaler:
    """Feed it one observation a tick; it answers with a :class:`Decision` or ``None``."""

    def __init__(self, policy: ScalePolicy) -> None:
        self.policy = policy
        self.wait = 0.0
        self.rate = 0.0
        self.busy = 0.0
        self._samples: deque[tuple[float, int, float]] = deque()
        self._queued_since: float | None = None
        self._high, self._low = _Streak(), _Streak()
        self._last_change = float("-inf")

    def observe(self, now: float, *, queued: int, served: int, busy: float, workers: int,
                starting: int) -> Decision | None:
        """``served`` and ``busy``: the live workers' summed counters of requests served and
        seconds spent in ``predict`` (a drop, when a worker restarts or retires, counts as
        nothing done); ``workers``: processes running, ``starting`` of them not yet serving."""
        self._estimate(now, queued, served, busy, workers - starting)
        p = self.policy
        high_for = self._high.update(self.wait > p.up_wait, now)
        low_for = self._low.update(self.wait < p.up_wait / 2, now)
        if high_for >= p.grow_after and workers < p.ceiling and not starting:
            self._changed(now)
            return Decision(+1, f"queue wait ~{self.wait:.2f}s over {p.up_wait:g}s "
                                f"({queued} queued, {self.rate:.0f}/s served)")
        # Idle enough that one fewer would still be at most half busy: a retirement that
        # would bring the wait back (and a growth after it) is never made.
        after = self.busy * workers / (workers - 1) if workers > 1 else 1.0
        if (low_for >= p.down_after and workers > p.floor and after < p.retire_below
                and now - self._last_change >= p.down_after):
            self._changed(now)
            return Decision(-1, f"queue wait ~{self.wait:.2f}s under {p.up_wait / 2:g}s "
                                f"for {p.down_after:g}s, workers {self.busy:.0%} busy")
        return None

    def _changed(self, now: float) -> None:
        self._last_change = now
        self._high.since = self._low.since = None

    def _estimate(self, now: float, queued: int, served: int, busy: float,
                  serving: int) -> None:
        samples = self._samples
        samples.append((now, served, busy))
        while len(samples) > 2 and now - samples[1][0] >= self.policy.window:
            samples.popleft()
        pairs = list(zip(samples, list(samples)[1:]))
        span = now - samples[0][0]
        done = sum(max(0, b[1] - a[1]) for a, b in pairs)
        predicting = sum(max(0.0, b[2] - a[2]) for a, b in pairs)
        self.rate = done / span if span > 0 else 0.0
        self.busy = min(1.0, predicting / (span * serving)) if span > 0 and serving else 0.0
        if not queued:
            self._queued_since = None
            self.wait = 0.0
            return
        if self._queued_since is None:
            self._queued_since = now
        self.wait = queued / self.rate if self.rate > 0 else now - self._queued_since
