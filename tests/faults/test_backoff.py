"""Restart backoff forgives: a process that ran healthily starts again from the smallest delay,
while a crash loop still backs off. One rule (``processes.Backoff``) for the supervisor's
workers, Redis, REST and Flower, and for the decentralize pool's units."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import free_port, wait_until
from wkr_celery.decentral.pool import UnitPool
from wkr_celery.processes import Backoff
from wkr_celery.server import WKRServer


def test_backoff_doubles_while_dying_young_and_forgives_a_healthy_run() -> None:
    backoff = Backoff(first=0.5, most=30.0, healthy_after=60.0)
    failures, delays = 0, []
    for _ in range(8):  # a crash loop: each dies a second after its start
        failures, delay = backoff.after_death(failures, lived=1.0)
        delays.append(delay)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    failures, delay = backoff.after_death(failures, lived=3 * 3600.0)  # hours of health
    assert (failures, delay) == (1, 0.5)
    failures, delay = backoff.after_death(failures, lived=1.0)  # young again: doubles anew
    assert (failures, delay) == (2, 1.0)


def test_supervisor_and_pool_share_the_rule() -> None:
    assert WKRServer.backoff == UnitPool.backoff == Backoff()


def _delays(log: str) -> list[float]:
    return [float(d) for d in re.findall(r"worker 0 \S+ exited with code .*?restarting in "
                                         r"([\d.]+)s", log)]


@pytest.mark.timeout(150)
def test_a_worker_that_ran_healthily_restarts_from_the_smallest_delay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_file = tmp_path / "model.bin"
    monkeypatch.setenv("TEST_MODEL_FILE", str(model_file))
    name = f"b{uuid.uuid4().hex[:8]}"
    server = WKRServer("tests.faults.workers.NeedsModelFile", name=name, num_worker=1,
                       port_in=free_port(), port_out=free_port(), log_dir=str(tmp_path))
    server.backoff = Backoff(first=0.5, most=30.0, healthy_after=8.0)  # a crash: ~1 s
    log_path = tmp_path / f"{name}.log"
    handlers = list(logging.getLogger().handlers)
    server.start()
    runner = threading.Thread(target=server.serve_forever, daemon=True)
    runner.start()
    try:
        # A crash loop (the model file is missing): 0.5 s, 1 s, 2 s...
        wait_until(lambda: len(_delays(log_path.read_text())) >= 3, 60, what="three crashes")
        model_file.write_text("weights")
        slot = server.workers[0]
        wait_until(lambda: server.registry is not None and slot.worker_id
                   in server.registry.live_workers(), 60, what="the worker to serve")
        before = _delays(log_path.read_text())
        assert before[:3] == [0.5, 1.0, 2.0], before
        healthy_since = slot.started
        wait_until(lambda: time.monotonic() - healthy_since > 8.5, 20,
                   what="a healthy run")
        assert slot.pid is not None
        os.kill(slot.pid, signal.SIGKILL)
        wait_until(lambda: len(_delays(log_path.read_text())) > len(before), 10,
                   what="the supervisor to see the kill")
        assert _delays(log_path.read_text())[len(before)] == 0.5, log_path.read_text()[-2000:]
    finally:
        server.request_stop()
        runner.join(60)
    # An embedding program goes on after the service stops: its -log_dir files no longer get
    # the program's log records (they reached every later test's caplog twice, through them).
    assert logging.getLogger().handlers == handlers
