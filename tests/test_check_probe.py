"""``wkr-serving-check -probe`` on a busy service: the probe must not call a healthy service
that is working through a backlog, or refusing at its queue cap, dead (an orchestrator would
restart it, losing its queue). Run as the operator types it: the console script."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from wkr_celery.errors import ServiceOverloaded

from .helpers import ROOT, Service, wait_until
from .scripts import script, user_env

PACED = "tests.production_workers.PacedVector"
BACKLOG = 300  # normal-priority requests ahead of the probe: PacedVector.pace 0.1 s each
HELD = 2  # what a worker holds at -prefetch 1 -batch_size 1: one in predict, one buffered


def check(service: Service, *flags: str) -> subprocess.CompletedProcess[str]:
    """``wkr-serving-check -name N -broker_url URL FLAGS`` typed in the project folder."""
    argv = [script("wkr-serving-check"), "-name", service.name, "-broker_url",
            service.broker_url, *flags]
    return subprocess.run(argv, cwd=ROOT, env=user_env(),
                          capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(90)
def test_probe_of_a_service_busy_with_a_backlog_is_answered_ahead_of_it(
    make_service: Callable[..., Service],
) -> None:
    """300 requests queued at normal priority take at least 30 s to serve; the probe, with a
    2 s deadline, was sent behind them and failed with ``DeadlineExceeded`` every time. At
    high priority it waits only for what the worker already holds (two batches, ~0.2 s)."""
    service = make_service(PACED, "-batch_size", "1", "-prefetch", "1")
    client = service.client()
    for _ in range(BACKLOG):
        client.encode(np.ones(1, dtype=np.float32), timeout=120)
    wait_until(lambda: service.queue.queue_length() >= BACKLOG - 10, 10,
               what="the backlog in the queue")
    probed = check(service, "-probe", "-timeout", "2")
    assert probed.returncode == 0, probed.stderr + service.log()
    assert "1 of 1 worker(s) alive and answering" in probed.stdout
    assert service.queue.queue_length() > 0, "the backlog drained first: this proved nothing"


@pytest.mark.timeout(90)
def test_probe_refused_at_a_full_queue_counts_as_alive_and_says_so(
    make_service: Callable[..., Service], tmp_path: Path,
) -> None:
    """At ``-max_queue`` the probe is refused with ``ServiceOverloaded``: the service answered
    (its cap did), so the check passes and names the full queue; it used to exit 1."""
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "hold").touch()  # predict waits: nothing leaves the queue
    service = make_service(PACED, "-model_dir", str(gate), "-batch_size", "1",
                           "-prefetch", "1", "-max_queue", "3")
    client = service.client()
    try:
        one = np.ones(1, dtype=np.float32)
        held = [client.encode(one, timeout=60) for _ in range(HELD)]
        wait_until(lambda: service.queue.queue_length() == 0, 10,
                   what="the worker holding its first requests")
        queued = [client.encode(one, timeout=60) for _ in range(4)]
        refused = queued[-1].exception(timeout=10)
        assert isinstance(refused, ServiceOverloaded), refused
        assert service.queue.queue_length() == 3
        probed = check(service, "-probe", "-timeout", "2")
    finally:
        (gate / "hold").unlink()
    assert probed.returncode == 0, probed.stderr + service.log()
    assert "1 of 1 worker(s) alive and answering" in probed.stdout
    assert "the queue is full, so the probe request was refused at its cap" in probed.stdout
    assert "has 3 requests queued (-max_queue)" in probed.stdout
    assert all(f.result(timeout=30)[0] == 2.0 for f in held + queued[:3])
