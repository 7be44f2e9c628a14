"""The elastic-worker decisions (``wkr_celery.server.scaling``), driven by simulated time.

A small simulation stands in for the service: requests arrive at a rate, each worker serves a
fixed number per second, and the autoscaler sees what the supervisor sees (queued count, summed
served and predict-seconds counters, workers, those still starting). The real service is tested in
``tests/faults/test_elastic.py``.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wkr_celery.server.scaling import Autoscaler, ScalePolicy

POLICY = ScalePolicy(floor=1, ceiling=4, up_wait=0.5, down_after=5.0, grow_after=1.0)
TICK = 0.25


def simulate(arrivals: list[float], per_worker: float, policy: ScalePolicy = POLICY,
             start_delay: float = 1.0) -> list[tuple[float, int, str]]:
    """Run ``arrivals`` (requests/s, one entry per tick); returns (time, change, reason)."""
    scaler = Autoscaler(policy)
    workers, queued, served, backlog = policy.floor, 0.0, 0, 0.0
    starting: list[float] = []
    changes = []
    for tick, rate in enumerate(arrivals):
        now = tick * TICK
        ready = [t for t in starting if t <= now]
        starting = [t for t in starting if t > now]
        workers += len(ready)
        queued += rate * TICK
        done = min(queued, workers * per_worker * TICK)
        queued -= done
        backlog += done
        served += int(backlog)
        backlog -= int(backlog)
        decision = scaler.observe(now, queued=int(queued), served=served,
                                  busy=served / per_worker, workers=workers + len(starting),
                                  starting=len(starting))
        if decision is not None:
            changes.append((now, decision.change, decision.reason))
            if decision.change > 0:
                starting.append(now + start_delay)
            else:
                workers -= 1
    return changes


def test_a_burst_grows_to_the_ceiling_and_its_end_shrinks_to_the_floor() -> None:
    burst = [500.0] * 60 + [0.0] * 320  # 15 s at 500/s for workers of 100/s, then 80 s idle
    changes = simulate(burst, per_worker=100)
    grows = [c for c in changes if c[1] > 0]
    shrinks = [c for c in changes if c[1] < 0]
    assert len(grows) == POLICY.ceiling - POLICY.floor
    assert len(shrinks) == POLICY.ceiling - POLICY.floor
    assert all(t < 15 for t, _, _ in grows) and all(t > 15 for t, _, _ in shrinks)
    assert "queue wait" in grows[0][2] and "served" in grows[0][2]
    gaps = [b[0] - a[0] for a, b in zip(shrinks, shrinks[1:])]
    assert all(gap >= POLICY.down_after for gap in gaps)  # one retirement per cool-down


def test_a_long_queue_of_fast_requests_does_not_grow_the_service() -> None:
    # 900/s arrive, one worker serves 1,000/s: the queue is long but drains fast.
    assert simulate([900.0] * 200, per_worker=1000) == []


def test_no_growth_while_the_last_added_worker_is_still_starting() -> None:
    changes = simulate([1000.0] * 40, per_worker=100, start_delay=30.0)
    assert [c[1] for c in changes] == [+1]


@settings(max_examples=200, deadline=None)
@given(load=st.floats(min_value=0.3, max_value=0.95), seed=st.integers(0, 2**16))
def test_a_steady_load_near_the_threshold_never_flaps(load: float, seed: int) -> None:
    """Under a steady load the service may settle at a size, but never grows and shrinks back
    and forth: after the first retirement there is no growth, and vice versa."""
    import random

    rng = random.Random(seed)
    capacity = 100.0
    arrivals = [load * capacity * 2 * (1 + rng.uniform(-0.05, 0.05)) for _ in range(400)]
    signs = [c[1] for c in simulate(arrivals, per_worker=capacity)]
    flips = sum(1 for a, b in zip(signs, signs[1:]) if a != b)
    assert flips <= 1, signs
