"""Cancelling a ``WKRClient`` future withdraws its request, as cancelling an await does in the
asyncio client (tests/test_async_client.py): a request still in the service's queue is taken
back and never predicted; one a worker already holds is predicted and its answer dropped.
``close()`` and leaving ``encode_many`` early cancel, and so withdraw, what is still out.

Each test holds one request in ``predict`` behind a closed gate (``GateWorker``, one worker,
``-batch_size 1 -prefetch 1``: one more request buffered by the worker, the rest in the list),
and reads what the worker predicted from the ``.entered`` marks it leaves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from wkr_celery.keys import reply_key

from .helpers import GATE_WORKER, Gates, Service, queued, wait_until


def _gate_service(make_service) -> Service:
    return make_service(GATE_WORKER, "-batch_size", "1", "-prefetch", "1")


def _held_in_predict(service: Service, client: Any, gates: Gates) -> Any:
    """Send request ``a`` behind a closed gate and wait until the worker holds it in predict."""
    held = client.encode(gates.item("a", 1, open_=False))
    wait_until(lambda: gates.entered("a"), 30, what="the worker to hold a in predict")
    return held


def _backlog(make_service, tmp_path: Path, count: int) -> tuple[Service, Gates, Any, Any, list[Any]]:
    """A request held in predict, then ``count`` more (``q0``...): one buffered by the worker,
    the rest in the list. Returns the service, its gates, the client, the held future and the
    ``count`` futures."""
    service, gates = _gate_service(make_service), Gates(tmp_path)
    client = service.client()
    held = _held_in_predict(service, client, gates)
    futures = [client.encode(gates.item(f"q{i}", i)) for i in range(count)]
    wait_until(lambda: queued(service) == count - 1, 30, what="the backlog in the list")
    return service, gates, client, held, futures


def test_cancelling_a_queued_future_takes_its_request_back_and_one_in_predict_drops_its_answer(
        make_service, tmp_path: Path) -> None:
    service, gates = _gate_service(make_service), Gates(tmp_path)
    client = service.client()
    held = _held_in_predict(service, client, gates)
    buffered = client.encode(gates.item("b", 2))
    waiting = client.encode(gates.item("c", 3))
    wait_until(lambda: client.pending == 3 and queued(service) == 1, 30,
               what="b buffered by the worker and c left in the list")

    assert waiting.cancel() and waiting.cancelled()
    wait_until(lambda: queued(service) == 0, 10, what="c taken back from the list")
    assert client.pending == 2  # nobody waits for c

    assert held.cancel()  # in predict: it cannot be taken back, its answer is dropped
    assert client.pending == 1  # b only

    gates.open("a")
    assert int(buffered.result(timeout=30)) == 4
    assert int(client.encode(gates.item("d", 4), timeout=30).result(timeout=30)) == 8
    # d was sent after c, to the same list: had c still been queued, it would have gone first.
    assert gates.entered("d") and not gates.entered("c")
    replies = redis.Redis.from_url(service.result_url)
    try:  # a was predicted; its answer came and was dropped, leaving nothing behind
        wait_until(lambda: replies.llen(reply_key(client.client_id)) == 0, 30,
                   what="the reply list drained")
    finally:
        replies.close()
    assert client.pending == 0


def test_a_cancelled_backlog_is_never_predicted_and_the_rest_still_get_their_answers(
        make_service, tmp_path: Path) -> None:
    service, gates, client, held, backlog = _backlog(make_service, tmp_path, 200)

    kept, cancelled = backlog[:20], backlog[20:]
    assert all(future.cancel() for future in cancelled)  # taken back by the publisher thread
    wait_until(lambda: queued(service) == 19, 10, what="the cancelled 180 taken back")
    assert client.pending == 21

    gates.open("a")
    assert int(held.result(timeout=30)) == 2
    assert [int(future.result(timeout=30)) for future in kept] == [2 * i for i in range(20)]
    assert int(client.encode(gates.item("last", 7)).result(timeout=30)) == 14
    predicted = [i for i in range(200) if gates.entered(f"q{i}")]
    assert predicted == list(range(20)), predicted
    assert client.pending == 0 and queued(service) == 0


def test_closing_the_client_withdraws_what_it_still_has_queued(
        make_service, tmp_path: Path) -> None:
    service, gates, client, held, queued_before_close = _backlog(make_service, tmp_path, 10)

    client.close()
    assert held.cancelled() and all(f.cancelled() for f in queued_before_close)
    assert queued(service) == 0  # close returns once its publisher took them back

    gates.open("a")
    other = service.client()
    assert int(other.encode(gates.item("last", 7)).result(timeout=30)) == 14
    assert [i for i in range(10) if gates.entered(f"q{i}")] == [0]  # q0 only: it was buffered


def test_leaving_encode_many_early_withdraws_the_requests_it_still_has_out(
        make_service, tmp_path: Path) -> None:
    service, gates = _gate_service(make_service), Gates(tmp_path)
    client = service.client()
    inputs = [gates.item("x0", 0), gates.item("a", 1, open_=False),
              *(gates.item(f"x{i}", i) for i in range(2, 8))]
    results = client.encode_many(inputs, max_inflight=4)
    assert int(next(results)) == 0  # x0, a, x2 and x3 are out by now
    wait_until(lambda: gates.entered("a") and queued(service) == 1, 30,
               what="a in predict, x2 buffered, x3 in the list")

    results.close()  # the caller stops reading: a, x2 and x3 are cancelled
    wait_until(lambda: queued(service) == 0, 10, what="x3 taken back from the list")
    assert client.pending == 0

    gates.open("a")
    assert int(client.encode(gates.item("last", 7)).result(timeout=30)) == 14
    assert [name for name in ("x2", "x3", "x4") if gates.entered(name)] == ["x2"]


def test_an_answered_future_the_caller_keeps_does_not_keep_its_request_alive(
        make_service, tmp_path: Path) -> None:
    """A future holds its request so that ``cancel()`` can take it back; once answered there is
    nothing to take back, and a caller who keeps many answered futures (a list of results)
    must not keep every request body they sent alive with them."""
    import gc
    import tracemalloc

    service, gates = _gate_service(make_service), Gates(tmp_path)
    client = service.client()
    client.encode(gates.item("warm", 0)).result(timeout=30)  # connections and threads made
    count, size = 40, 1 << 20
    tracemalloc.start()
    try:
        futures = [client.encode({**gates.item(f"g{i}", i), "pad": bytes(size)})
                   for i in range(count)]
        assert [f.result(timeout=60) for f in futures] == [2 * i for i in range(count)]
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < count * size // 4, f"{held / 1e6:.1f} MB still held by {count} answered futures"
