"""A lone request's caller pops its own answer (client/replies.py ``Replies.read_alone``).

While ``result()`` reads the reply list on the caller's thread, every way a future can end
without its answer must still end that wait at once: the caller's own timeout, a cancel from
another thread, ``close()``, the request's deadline; and an answer for another request, or
one that comes after the caller gave up, must still reach its future.
"""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import pytest

from wkr_celery import WKRClient
from wkr_celery.errors import DeadlineExceeded

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
    # Both: the worker may enter predict before ``encode`` has returned on the caller's thread.
    wait_until(lambda: outcome and Path(f"{gate}.entered").exists(), 30,
               what="the request sent and in predict")
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
    # Both workers up: a second still starting leaves ``other`` to the first one's prefetch,
    # behind the held request it waits on (CI once timed out so).
    service = make_service(GATE_WORKER, "-batch_size", "1", "-num_worker", "2", wait=2)
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
