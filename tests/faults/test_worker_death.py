"""A worker killed (SIGKILL) or frozen (SIGSTOP) loses no request and answers none twice."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import Any

import numpy as np
import pytest

from tests.helpers import Service, wait_until
from workers.linear import IN_DIM, make_weights

REQUESTS = 10_000
CHUNK = 250


def _send_paced(client: Any, xs: np.ndarray, pause: float) -> list[Future[Any]]:
    """Encode ``xs`` in chunks, pausing between chunks so the load spans several kills."""
    futures: list[Future[Any]] = []
    for start in range(0, len(xs), CHUNK):
        futures.extend(client.encode(x) for x in xs[start:start + CHUNK])
        time.sleep(pause)  # pacing the load, not synchronisation
    return futures


def _live_pids(service: Service) -> dict[int, str]:
    return {beat["pid"]: wid for wid, beat in service.live_workers().items()}


@pytest.mark.timeout(150)
def test_worker_killed_every_two_seconds_loses_no_request_and_answers_each_once(
    make_service: Callable[..., Service],
) -> None:
    service = make_service("workers.linear.Worker", "-protocol", "npy", "-num_worker", "2",
                           "-batch_size", "32", wait=2)
    first_ids = set(service.live_workers())
    client = service.client()
    xs = np.random.default_rng(7).standard_normal((REQUESTS, IN_DIM)).astype(np.float32)
    expected = np.tanh(xs @ make_weights())

    killed: list[int] = []
    seen_ids: set[str] = set(first_ids)
    done = threading.Event()

    def killer() -> None:
        rng = random.Random(3)
        while not done.wait(2.0):  # the fault's cadence: one kill every two seconds
            live = {p: w for p, w in _live_pids(service).items() if p not in killed}
            seen_ids.update(live.values())
            if live:
                pid = rng.choice(sorted(live))
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        futures = _send_paced(client, xs, pause=0.2)
    finally:
        done.set()  # kills stop once all 10k are sent; the rest drain
        thread.join(5)
    finished, unfinished = wait(futures, timeout=60)

    assert not unfinished, f"{len(unfinished)} of {REQUESTS} requests never answered"
    errors = [f.exception() for f in futures if f.exception() is not None]
    assert errors == [], f"{len(errors)} requests failed, first: {errors[:3]}"
    results = np.stack([f.result() for f in futures])
    np.testing.assert_allclose(results, expected, atol=1e-5)
    assert client.pending == 0
    assert len(killed) >= 3, f"only {len(killed)} kills happened; the test proved too little"

    # The supervisor restarted each killed worker: new processes, new worker ids, heartbeating.
    live = service.wait_workers(2)
    assert not {beat["pid"] for beat in live.values()} & set(killed)
    assert set(live) - first_ids, "no restarted worker id appeared in the heartbeats"
    assert f"exited with code {-signal.SIGKILL}" in service.log()


@pytest.mark.timeout(90)
def test_frozen_worker_past_visibility_timeout_has_its_requests_served_by_a_peer(
    make_service: Callable[..., Service],
) -> None:
    service = make_service("tests.faults.workers.SlowDoubler", "-num_worker", "2",
                           "-batch_size", "4", "-prefetch", "4", "-visibility_timeout", "3",
                           wait=2)
    client = service.client()
    queue = service.queue
    futures = [client.encode(n) for n in range(400)]
    frozen_pid, frozen_id = wait_until(
        lambda: next(((p, w) for p, w in _live_pids(service).items()
                      if queue.client.hlen(queue.keys.inflight(w)) > 0), None),
        timeout=20, what="a worker holding requests")
    os.kill(frozen_pid, signal.SIGSTOP)
    try:
        finished, unfinished = wait(futures, timeout=45)
        assert not unfinished, f"{len(unfinished)} requests waited on the frozen worker"
        assert frozen_id not in service.live_workers(), "the frozen worker still looks alive"
        assert not queue.client.exists(queue.keys.inflight(frozen_id))
    finally:
        os.kill(frozen_pid, signal.SIGCONT)

    assert [f.result() for f in futures] == [2 * n for n in range(400)]
    # Thawed, it finishes what it held (answers the client drops) and serves again.
    wait_until(lambda: frozen_id in service.live_workers(), timeout=20,
               what="the thawed worker's heartbeat")
    late = [client.encode(n) for n in range(400, 800)]
    assert [f.result(timeout=30) for f in late] == [2 * n for n in range(400, 800)]
    assert client.pending == 0
    assert all(f.done() for f in futures)
