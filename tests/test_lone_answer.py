"""A lone request's caller pops its own answer (client/replies.py ``Replies.read_alone``).

While ``result()`` reads the reply list on the caller's thread, every way a future can end
without its answer must still end that wait at once: the caller's own timeout, a cancel from
another thread, ``close()``, the request's deadline; and an answer for another request, or
one that comes after the caller gave up, must still reach its future.

And one client shared by many threads, as a threaded web server shares it, where the lone path
and the listener take turns at every moment: each thread gets its own answers.
"""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wkr_celery import WKRClient
from wkr_celery.errors import DeadlineExceeded
from workers.linear import make_weights

from .helpers import wait_until

GATE_WORKER = "tests.workers_for_tests.GateWorker"


def _wait_in_thread(client: WKRClient, gate: Path) -> tuple[threading.Thread, list[Any]]:
    """Send a gated request and wait for it on one thread, as ``encode(x).result()`` does;
    returns the thread and what its ``result()`` returned or raised, once it has."""
    outcome: list[Any] = []

    def caller() -> None:
        future = client.encode({"gate": str(gate), "value": [1]})
        outcome.append(future)
        try:
            outcome.append(future.result(timeout=30))
        except BaseException as exc:  # what result() raised is what the test checks
            outcome.append(exc)

    thread = threading.Thread(target=caller, daemon=True)
    thread.start()
    wait_until(Path(f"{gate}.entered").exists, 30, what="the request to enter predict")
    return thread, outcome


def test_a_lone_callers_wait_ends_on_its_timeout_a_cancel_and_close(
        make_service, tmp_path: Path) -> None:
    service = make_service(GATE_WORKER, "-batch_size", "1")
    client = service.client()
    first = client.encode({"gate": str(tmp_path / "first"), "value": [1]})
    wait_until((tmp_path / "first.entered").exists, 30, what="the request to enter predict")
    with pytest.raises(TimeoutError):
        first.result(timeout=0.3)
    (tmp_path / "first").touch()
    assert first.result(timeout=30).tolist() == [2]  # the answer still comes after a timeout

    thread, outcome = _wait_in_thread(client, tmp_path / "cancelled")
    assert outcome[0].cancel()
    thread.join(10)
    assert not thread.is_alive() and isinstance(outcome[1], CancelledError)
    (tmp_path / "cancelled").touch()

    thread, outcome = _wait_in_thread(client, tmp_path / "closed")
    client.close()
    thread.join(10)
    assert not thread.is_alive() and isinstance(outcome[1], CancelledError)
    (tmp_path / "closed").touch()


def test_a_lone_callers_deadline_fails_it_and_answers_for_others_still_arrive(
        make_service, tmp_path: Path) -> None:
    service = make_service(GATE_WORKER, "-batch_size", "1", "-num_worker", "2")
    client = service.client()
    late = client.encode({"gate": str(tmp_path / "late"), "value": [1]}, timeout=0.5)
    with pytest.raises(DeadlineExceeded):
        late.result(timeout=30)
    (tmp_path / "late").touch()  # its answer comes now, to nobody: it is dropped

    thread, outcome = _wait_in_thread(client, tmp_path / "held")
    other = client.encode({"value": [5]})  # served by the second worker meanwhile
    assert other.result(timeout=30).tolist() == [10]
    (tmp_path / "held").touch()
    thread.join(30)
    assert not thread.is_alive() and outcome[1].tolist() == [2]
    assert client.encode({"value": [3]}).result(timeout=30).tolist() == [6]
    assert client.pending == 0


def test_one_client_shared_by_many_threads_gives_each_thread_its_own_answers(
        make_service) -> None:
    service = make_service("workers.linear.Worker", "-num_worker", "2")
    client = service.client()
    weights = make_weights()
    wrong: list[str] = []

    def caller(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for i in range(150):
            x = rng.standard_normal(512).astype(np.float32)
            try:  # one at a time (the lone path), with a deadline, and a stream of two
                if (seed + i) % 3 == 0:
                    y = client.encode(x).result(30)
                elif (seed + i) % 3 == 1:
                    y = client.encode(x, timeout=30).result()
                else:
                    y = list(client.encode_many([x, -x]))[0]
                if not np.allclose(y, np.tanh(x @ weights), rtol=1e-5, atol=1e-5):
                    wrong.append(f"thread {seed} request {i}: a wrong answer")
            except Exception as exc:  # what went wrong is the test's finding
                wrong.append(f"thread {seed} request {i}: {exc!r}")

    threads = [threading.Thread(target=caller, args=(seed,), daemon=True) for seed in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "a thread still waits"
    assert not wrong, wrong[:5]
    assert not client._replies.pending  # nothing left waiting
