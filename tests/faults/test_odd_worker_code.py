"""A worker class whose code does odd but realistic things.

Ends its thread with ``sys.exit()``, ``KeyboardInterrupt`` or another ``BaseException``: its
caller gets a precise error, every other request still gets its result, and the worker process
keeps serving (no restart). Leaves threads running that never end: the worker still stops, in
seconds, not at its supervisor's kill deadline."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.helpers import Service
from wkr_celery.errors import PredictError

_RAISED = {"exit": "SystemExit", "interrupt": "KeyboardInterrupt", "unwind": "_NotAnError"}


def _pids(service: Service) -> set[int]:
    return {beat["pid"] for beat in service.live_workers().values()}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("where", ["predict", "batch_key"])
def test_user_code_that_exits_its_thread_fails_only_its_input_and_the_worker_keeps_serving(
    make_service: Callable[..., Service], where: str,
) -> None:
    worker = "ExitingWorker" if where == "predict" else "KeyedExitingWorker"
    service = make_service(f"tests.workers_for_tests.{worker}", "-batch_size", "8")
    pids = _pids(service)
    client = service.client()
    bad = [b for b in _RAISED if where == "predict" or b != "unwind"]
    futures = {x: client.encode(x) for x in [1, 2, 3, *bad, 4, 5, 6]}
    for x, future in futures.items():
        if x in _RAISED:
            with pytest.raises(PredictError, match=f"{where} raised {_RAISED[x]}"):
                future.result(timeout=30)
        else:
            assert future.result(timeout=30) == 2 * x
    assert _pids(service) == pids, f"the worker process was restarted; log:\n{service.log()}"
    assert client.encode(7).result(timeout=30) == 14


@pytest.mark.timeout(120)
def test_a_worker_whose_model_leaves_threads_running_still_stops_gracefully_in_seconds(
    make_service: Callable[..., Service],
) -> None:
    """Python joins non-daemon threads and ``ThreadPoolExecutor`` threads before a process
    exits; a model's own that never end kept the worker alive after its graceful stop, until
    its supervisor's 30 s deadline killed it (and a worker started by hand, forever)."""
    service = make_service("tests.workers_for_tests.ThreadKeepingWorker")
    assert service.client().encode(3).result(timeout=30) == 6
    assert service.stop(timeout=60) == 0
    log = service.log()
    assert "did not stop in time" not in log, log  # the supervisor's kill at its deadline
    assert "exiting without waiting for them" in log, log
