"""``WKRClient``'s futures combined with the standard library the way any futures are:
``concurrent.futures.wait`` and ``as_completed`` over answered, failed, expired and cancelled
ones, done callbacks that send again, and the futures a closing client leaves behind.

Each test holds one request in ``predict`` behind a closed gate (``GateWorker``, one worker,
``-batch_size 1 -prefetch 1``) where it needs a request that stays pending.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from pathlib import Path
from typing import Any

from wkr_celery.errors import DeadlineExceeded, PredictError, WKRError

from .helpers import GATE_WORKER, Gates, Service, wait_until


def _held(make_service, tmp_path: Path) -> tuple[Service, Gates, Any, cf.Future[Any]]:
    """A service whose one worker holds request ``a`` in predict: whatever is sent next waits."""
    service = make_service(GATE_WORKER, "-batch_size", "1", "-prefetch", "1")
    gates = Gates(tmp_path)
    client = service.client()
    held = client.encode(gates.item("a", 1, open_=False))
    wait_until(lambda: gates.entered("a"), 30, what="the worker to hold a in predict")
    return service, gates, client, held


def test_a_done_callback_of_an_expired_request_may_send_again_with_a_timeout(
        make_service, tmp_path: Path) -> None:
    """Retry on timeout from a done callback: the callback runs on the client's timer thread,
    which used to hold its deadline lock there, so the new request's ``encode`` (which takes
    that lock for its own deadline) waited for ever, and every later request with it."""
    _, gates, client, held = _held(make_service, tmp_path)
    late = client.encode(gates.item("b", 2), timeout=0.2)
    retried: list[cf.Future[Any]] = []
    sent_again = threading.Event()

    def retry(future: cf.Future[Any]) -> None:
        assert isinstance(future.exception(), DeadlineExceeded)
        retried.append(client.encode(gates.item("c", 3), timeout=30))
        sent_again.set()

    late.add_done_callback(retry)
    sent = sent_again.wait(10)
    gates.open("a")
    assert sent, "the callback's encode never returned"
    assert int(held.result(timeout=30)) == 2
    assert int(retried[0].result(timeout=30)) == 6
    assert int(client.encode(gates.item("d", 4), timeout=30).result(timeout=30)) == 8


def test_wait_and_as_completed_count_answered_failed_expired_and_cancelled_futures_as_done(
        make_service, tmp_path: Path) -> None:
    """A cancelled ``TaskFuture`` used to stay in state ``CANCELLED``, which ``wait`` and
    ``as_completed`` do not count as done (an executor moves its own on with
    ``set_running_or_notify_cancel``): ``wait(fs)`` without a timeout never returned."""
    _, gates, client, held = _held(make_service, tmp_path)
    cancelled = client.encode(gates.item("b", 2))
    assert cancelled.cancel() and cancelled.cancelled()
    late = client.encode(gates.item("c", 3), timeout=0.2)
    assert isinstance(late.exception(timeout=10), DeadlineExceeded)
    gates.open("a")
    answered = [client.encode(gates.item(f"q{i}", i)) for i in range(5)]
    refused = client.encode({"value": "not a number"})  # predict raises on it
    futures = [held, cancelled, late, *answered, refused]

    done, not_done = cf.wait(futures, timeout=30)
    assert not not_done and len(done) == len(futures)
    assert list(cf.wait([cancelled], timeout=0).done) == [cancelled]
    assert set(cf.as_completed(futures, timeout=30)) == set(futures)
    first = cf.wait([cancelled, refused], timeout=30, return_when=cf.FIRST_EXCEPTION)
    assert not first.not_done
    assert isinstance(refused.exception(timeout=0), PredictError)
    assert [int(f.result(timeout=0)) for f in answered] == [2 * i for i in range(5)]


def test_a_wait_in_progress_wakes_when_the_client_closes_and_cancels_its_future(
        make_service, tmp_path: Path) -> None:
    """``close()`` cancels what is pending; a thread already in ``wait()`` or ``as_completed``
    on those futures must wake then, not at its own timeout (or never, without one)."""
    _, gates, client, held = _held(make_service, tmp_path)
    queued = client.encode(gates.item("b", 2))
    waited: list[Any] = []
    waiter = threading.Thread(target=lambda: waited.append(cf.wait([held, queued], timeout=20)))
    waiter.start()
    client.close()
    waiter.join(30)
    gates.open("a")
    assert waited and not waited[0].not_done, "wait() did not wake when close() cancelled"
    assert held.cancelled() and queued.cancelled()


def test_waiting_in_a_done_callback_on_the_thread_that_reads_answers_raises_instead_of_hanging(
        make_service, tmp_path: Path) -> None:
    """A callback runs on the thread that settled its future: the listener, or a caller whose
    ``result()`` read its own answer. Both hold the client's one reading turn, so a callback
    there that sends again and waits for that answer used to wait for ever (or time out with
    the answer on its way); it now gets a ``WKRError`` at once, and the request it sent is
    answered all the same. Two requests out: the listener reads; one: the caller or it."""
    service = make_service(GATE_WORKER)
    gates, client = Gates(tmp_path), service.client()
    seen: list[tuple[cf.Future[Any], BaseException | None]] = []

    def chain(future: cf.Future[Any]) -> None:
        sent = client.encode(gates.item(f"c{len(seen)}", 5))
        try:
            sent.result(timeout=5)
        except Exception as exc:  # recorded for the test thread to check
            seen.append((sent, exc))
        else:
            seen.append((sent, None))

    lone = client.encode(gates.item("a", 1, open_=False))
    lone.add_done_callback(chain)
    gates.open("a")
    assert int(lone.result(timeout=30)) == 2
    first = client.encode(gates.item("b", 2, open_=False))
    second = client.encode(gates.item("d", 3))
    first.add_done_callback(chain)
    gates.open("b")
    wait_until(lambda: len(seen) == 2, 30, what="both callbacks to finish")
    for sent, error in seen:
        assert isinstance(error, WKRError) and "done callback" in str(error), error
        assert int(sent.result(timeout=30)) == 10
    assert int(second.result(timeout=30)) == 6
