"""Ctrl+C in a notebook: the kernel's interrupt is a SIGINT, raised as ``KeyboardInterrupt`` in
the main thread wherever it happens to be, a client's own code included. The client must stay
usable afterwards, and what the interrupted caller can no longer wait for is withdrawn.

Each interrupt here is a real SIGINT sent to this process while its main thread is where a
user's Ctrl+C would find it: blocked in a publish (the broker paused with ``CLIENT PAUSE``),
waiting on an answer held in ``predict`` (``GateWorker``), or running a step of one of the
asyncio client's own tasks on the notebook's event loop (the signal is sent from inside that
step, so that it lands there every time; a storm of timer interrupts found the same).
The event loop is run as IPython runs a cell with a top-level ``await``: one loop for the whole
session, ``run_until_complete`` per cell, a cell's task left pending when interrupted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from wkr_celery import AsyncWKRClient
from wkr_celery.client import async_replies
from wkr_celery.client.protocol import Requests

from .helpers import GATE_WORKER, Gates, Service, queued, wait_until


@contextmanager
def default_sigint() -> Iterator[None]:
    """SIGINT handled by Python's default handler, as in a notebook kernel running a cell: the
    main thread raises ``KeyboardInterrupt`` wherever it is."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _main_thread_in(function: str) -> bool:
    """Whether the main thread is running ``function`` (anywhere down its stack)."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


@contextmanager
def interrupt_once(ready: Callable[[], Any], what: str, inside: str) -> Iterator[None]:
    """Send SIGINT to this process from a thread of its own, once ``ready()`` holds and the
    main thread is blocked in the call named ``inside``: a signal sent any earlier could land
    before the test's ``pytest.raises`` is entered and stop the whole pytest process (it did,
    once, in CI). Without both, no signal: the call then fails the test on its own."""
    failure: list[BaseException] = []

    def send() -> None:
        try:
            wait_until(lambda: _main_thread_in(inside) and ready(), 30,
                       what=f"{what}, the main thread in {inside}()")
        except AssertionError as exc:
            failure.append(exc)
            return
        os.kill(os.getpid(), signal.SIGINT)  # interrupts the main thread in that call

    sender = threading.Thread(target=send, name="test-interrupt")
    with default_sigint():
        sender.start()
        try:
            yield
        finally:
            sender.join(35)
    if failure:
        raise failure[0]


def _publish_blocked(broker: redis.Redis, client: Any) -> Callable[[], bool]:
    """Whether the client's publish connection has sent its ``EVALSHA`` and is held by the
    broker's pause (flag ``b``): the caller's thread is then blocked reading its reply."""
    lane = client._queue._lane  # the one connection publishes go out on (broker/lane.py)
    port = lane._connection._sock.getsockname()[1]

    def blocked() -> bool:
        return any(c["addr"].endswith(f":{port}") and c["cmd"] == "evalsha"
                   and "b" in c["flags"] for c in broker.client_list())
    return blocked


def test_ctrl_c_during_a_lone_publish_leaves_the_client_serving_and_withdraws_that_request(
        make_service) -> None:
    """The interrupt came while the caller's thread published its lone request: the flag that
    holds the publisher thread back while a caller publishes stayed set, so every later
    request of that client waited in its outbox, never sent (each ``result()`` timed out, or
    waited for ever without a timeout), and the interrupted one stayed pending."""
    service = make_service("tests.workers_for_tests.PoisonWorker")
    client = service.client()
    assert client.encode(1).result(timeout=30) == 2  # its publish connection is made
    broker = redis.Redis.from_url(service.broker_url)
    try:
        broker.client_pause(3000, all=False)  # writes (scripts too) wait for 3 s
        with interrupt_once(_publish_blocked(broker, client), "the publish to be paused",
                            inside="encode"), \
                pytest.raises(KeyboardInterrupt):
            client.encode(2)
        broker.execute_command("CLIENT", "UNPAUSE")
    finally:
        broker.close()
    wait_until(lambda: client.pending == 0, 10, what="the interrupted request to be withdrawn")
    assert [client.encode(x).result(timeout=10) for x in (3, 4)] == [6, 8]
    futures = [client.encode(x) for x in range(20)]  # through the publisher thread too
    assert [f.result(timeout=10) for f in futures] == [2 * x for x in range(20)]
    wait_until(lambda: queued(service) == 0, 10, what="nothing left in the queue")


def test_ctrl_c_while_encode_many_waits_withdraws_the_request_it_waited_for_too(
        make_service, tmp_path) -> None:
    """Leaving ``encode_many`` early withdraws what it still has out, but the request whose
    answer it was waiting for had already been taken off its window: interrupted there, that
    one stayed out, waited for until a worker answered it."""
    service: Service = make_service(GATE_WORKER, "-batch_size", "1", "-prefetch", "1")
    gates = Gates(tmp_path)
    client = service.client()
    held = client.encode(gates.item("a", 1, open_=False))
    wait_until(lambda: gates.entered("a"), 30, what="the worker to hold a in predict")
    stream = client.encode_many([gates.item(f"q{i}", i) for i in range(5)], max_inflight=10)
    # q0 is buffered by the worker, q1..q4 queued: encode_many then waits for q0's answer.
    with interrupt_once(lambda: queued(service) == 4, "q1..q4 to be queued",
                        inside="encode_many"), \
            pytest.raises(KeyboardInterrupt):
        list(stream)
    wait_until(lambda: client.pending == 1, 10, what="all but the held request withdrawn")
    wait_until(lambda: queued(service) == 0, 10, what="the publisher thread to take them back")
    gates.open("a")
    assert int(held.result(timeout=30)) == 2
    assert client.encode(gates.item("b", 3)).result(timeout=30) == 6


def _interrupting_once(original: Callable[..., Any], *, after: bool = False
                       ) -> Callable[..., Any]:
    """``original``, but its first call is interrupted by a SIGINT, before it runs (or, with
    ``after``, once it has run): the signal is sent from the calling thread, so Python's
    handler raises ``KeyboardInterrupt`` right there."""
    calls = []

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1 and not after:
            os.kill(os.getpid(), signal.SIGINT)
        result = original(*args, **kwargs)
        if len(calls) == 1 and after:
            os.kill(os.getpid(), signal.SIGINT)
        return result
    return interrupted


@pytest.fixture
def notebook_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for the whole session, as a notebook kernel keeps."""
    loop = asyncio.new_event_loop()
    with default_sigint():
        yield loop
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


def _async_client(service: Service) -> AsyncWKRClient:
    return AsyncWKRClient(name=service.name, broker_url=service.broker_url,
                          result_url=service.result_url, connect_timeout=30)


async def _each_of(client: AsyncWKRClient, xs: Iterable[Any]) -> list[Any]:
    return list(await asyncio.gather(*(client.encode(x) for x in xs)))


@pytest.mark.parametrize("where", ["publisher", "listener"])
def test_ctrl_c_in_an_async_client_task_leaves_the_client_serving_on_the_notebook_loop(
        make_service, notebook_loop, monkeypatch, where) -> None:
    """The interrupt landed in a step of the client's publisher (building a round) or listener
    (reading a popped answer): that task ended with the ``KeyboardInterrupt``, and every later
    ``await client.encode(x)`` in the notebook waited for ever (here: 20 s, then failed). Now the
    interrupt still stops the cell, the task runs again, the interrupted round is sent and the
    popped answer read from its stored result, so the interrupted cell's request is answered
    too."""
    service = make_service("tests.workers_for_tests.PoisonWorker")
    loop = notebook_loop
    client = _async_client(service)
    cell = loop.run_until_complete
    cell(client.connect())
    if where == "publisher":
        monkeypatch.setattr(Requests, "publish_call", _interrupting_once(Requests.publish_call))
    else:
        monkeypatch.setattr(async_replies, "read_reply",
                            _interrupting_once(async_replies.read_reply))
    interrupted = loop.create_task(client.encode(3))
    with pytest.raises(KeyboardInterrupt):
        cell(interrupted)
    try:
        assert cell(asyncio.wait_for(interrupted, 20)) == 6
        assert cell(asyncio.wait_for(_each_of(client, range(30)), 20)) == [
            2 * x for x in range(30)]
    finally:
        cell(client.close())


def test_ctrl_c_while_result_waits_leaves_the_future_to_be_waited_for_again(
        make_service, tmp_path) -> None:
    """The lone request's caller reads its answer on its own thread and connection: an
    interrupt there drops that connection (a reply may still come on it), and the answer is
    read again, by the caller or the listener."""
    service: Service = make_service(GATE_WORKER, "-batch_size", "1", "-prefetch", "1")
    gates = Gates(tmp_path)
    client = service.client()
    future = client.encode(gates.item("a", 2, open_=False))
    with interrupt_once(lambda: gates.entered("a"), "the worker to hold a in predict",
                        inside="result"), \
            pytest.raises(KeyboardInterrupt):
        future.result(timeout=60)
    gates.open("a")
    assert int(future.result(timeout=30)) == 4
    assert [int(client.encode(gates.item(f"b{i}", i)).result(timeout=30)) for i in range(3)] \
        == [0, 2, 4]


def test_ctrl_c_inside_the_publishers_wake_up_leaves_no_request_unsent(
        make_service, notebook_loop) -> None:
    """``encode`` wakes the publisher with ``asyncio.Event.set()``; an interrupt between its
    flag and its waking the waiter left the event set with the publisher asleep, and every
    later ``set()`` did nothing: no request of that client was ever sent again. The signal is
    sent where it lands in that window (after the flag is set), from the caller's own task."""
    service = make_service("tests.workers_for_tests.PoisonWorker")
    loop, cell = notebook_loop, notebook_loop.run_until_complete
    client = _async_client(service)
    cell(client.connect())
    assert cell(client.encode(1)) == 2
    wake = client._wake
    assert wake is not None

    def set_then_interrupted() -> None:
        del wake.set  # once: the event's own method again
        wake._value = True  # what Event.set() does first
        os.kill(os.getpid(), signal.SIGINT)  # raised here: its waiter is never woken
    wake.set = set_then_interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        cell(loop.create_task(client.encode(2)))
    try:
        assert cell(asyncio.wait_for(_each_of(client, [3, 4]), 20)) == [6, 8]
    finally:
        cell(client.close())


def _left_held_by_an_interrupt(lock: asyncio.Lock) -> None:
    """The next ``lock.release()`` is interrupted as it starts, by a real SIGINT: the lock stays
    held with nobody to release it, as when a Ctrl+C lands in ``asyncio.Lock``'s own code under
    redis-py's ``async with pool._lock`` (the storm's wedge)."""
    def interrupted() -> None:
        del lock.release  # type: ignore[method-assign]  # once
        os.kill(os.getpid(), signal.SIGINT)
    lock.release = interrupted  # type: ignore[method-assign]


def test_ctrl_c_inside_redis_pys_pool_lock_leaves_the_client_serving(
        make_service, notebook_loop) -> None:
    """redis-py's asyncio pool guards its lists with an ``asyncio.Lock``; a Ctrl+C inside that
    lock's release left it held for ever, and the publisher started again after the interrupt
    waited on it for its first command: no request of that client was sent again (here: the
    cell waited 20 s, then failed). The task started again now takes new pools."""
    service = make_service("tests.workers_for_tests.PoisonWorker")
    loop, cell = notebook_loop, notebook_loop.run_until_complete
    client = _async_client(service)
    cell(client.connect())
    assert cell(client.encode(1)) == 2
    assert client._broker is not None
    lock = client._broker.connection_pool._lock
    _left_held_by_an_interrupt(lock)
    with pytest.raises(KeyboardInterrupt):
        cell(loop.create_task(client.encode(2)))
    assert lock.locked()
    try:
        assert cell(asyncio.wait_for(_each_of(client, [3, 4]), 20)) == [6, 8]
    finally:
        cell(asyncio.wait_for(client.close(), 30))


def test_a_pool_lock_left_held_outside_the_clients_tasks_is_outlived_within_seconds(
        make_service, notebook_loop) -> None:
    """An interrupt in another task (a cell's own ``server_status``, say) can leave a pool's
    lock held too, and then the client's listener and publisher wait on it without having
    been interrupted themselves (here: the cell waited 20 s, then failed). A round of theirs
    found waiting on a lock for ``async_interrupts.LOCK_CHECK`` seconds, and on the same wait
    a second later, is ended and started again on new pools, as after an interrupt."""
    service = make_service("tests.workers_for_tests.PoisonWorker")
    cell = notebook_loop.run_until_complete
    client = _async_client(service)
    cell(client.connect())
    assert cell(client.encode(1)) == 2
    for redis_ in (client._broker, client._results):
        assert redis_ is not None
        cell(redis_.connection_pool._lock.acquire())  # held by nobody from now on
    try:
        assert cell(asyncio.wait_for(_each_of(client, [3, 4]), 20)) == [6, 8]
    finally:
        cell(asyncio.wait_for(client.close(), 30))


def test_ctrl_c_between_registering_a_request_and_queueing_it_leaves_nothing_pending(
        make_service, notebook_loop, monkeypatch) -> None:
    """An interrupt in ``AsyncWKRClient._send`` after the request was registered as pending
    and before it was queued for the publisher: it was never sent, nobody could wait for it,
    and it stayed in ``pending`` for good (found by the storm)."""
    service = make_service("tests.workers_for_tests.PoisonWorker")
    loop, cell = notebook_loop, notebook_loop.run_until_complete
    client = _async_client(service)
    cell(client.connect())
    monkeypatch.setattr(async_replies.AsyncReplies, "expect",
                        _interrupting_once(async_replies.AsyncReplies.expect, after=True))
    with pytest.raises(KeyboardInterrupt):
        cell(loop.create_task(client.encode(2)))
    try:
        assert client.pending == 0
        assert cell(asyncio.wait_for(_each_of(client, [3, 4]), 20)) == [6, 8]
        assert client.pending == 0
    finally:
        cell(client.close())
