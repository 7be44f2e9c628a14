"""Ctrl+C in a notebook: the kernel's interrupt is a SIGINT, raised as ``KeyboardInterrupt`` in
the main thread wherever it happens to be, a client's own code included. The client must stay
usable afterwards, and what the interrupted caller can no longer wait for is withdrawn.

Each interrupt here is a real SIGINT sent to this process while its main thread is where a
user's Ctrl+C would find it: blocked in a publish (the broker paused with ``CLIENT PAUSE``), or
waiting on an answer held in ``predict`` (``GateWorker``).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from .helpers import GATE_WORKER, Gates, Service, queued, wait_until


@contextmanager
def interrupt_once(ready: Callable[[], Any], what: str) -> Iterator[None]:
    """Send SIGINT to this process (handled by Python's default handler, so the main thread
    raises ``KeyboardInterrupt``) as soon as ``ready()`` holds, from a thread of its own."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    failure: list[BaseException] = []

    def send() -> None:
        try:
            wait_until(ready, 30, what=what)
        except AssertionError as exc:
            failure.append(exc)
        os.kill(os.getpid(), signal.SIGINT)  # interrupts the wait below, or the test's code

    sender = threading.Thread(target=send, name="test-interrupt")
    sender.start()
    try:
        yield
    finally:
        sender.join(35)
        signal.signal(signal.SIGINT, previous)
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
        with interrupt_once(_publish_blocked(broker, client), "the publish to be paused"), \
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
    with interrupt_once(lambda: queued(service) == 4, "q1..q4 to be queued"), \
            pytest.raises(KeyboardInterrupt):
        list(stream)
    wait_until(lambda: client.pending == 1, 10, what="all but the held request withdrawn")
    assert queued(service) == 0
    gates.open("a")
    assert int(held.result(timeout=30)) == 2
    assert client.encode(gates.item("b", 3)).result(timeout=30) == 6
