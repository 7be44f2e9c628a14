"""The clients used the way an application embeds them, mistakes included: each misuse ends
with a clear error at once, never a silent hang (real services, real Redis)."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import pickle
import subprocess
import sys
import threading
import time
import warnings
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
import redis

from wkr_celery import AsyncWKRClient, ServiceUnavailable, WKRClient, WKRError
from wkr_celery.keys import reply_key

from .helpers import Service, free_port, wait_until


def _async_client(service: Service, **kwargs: Any) -> AsyncWKRClient:
    kwargs.setdefault("connect_timeout", 30.0)
    return AsyncWKRClient(name=service.name, broker_url=service.broker_url,
                          result_url=service.result_url, **kwargs)


@pytest.mark.parametrize("named", [False, True], ids=["no name", "named"])
def test_both_clients_wait_connect_timeout_for_a_broker_not_up_yet(named: bool) -> None:
    """A client made before its service (a script and a service started together) waits for
    the broker up to ``connect_timeout``, given the service's name or not, then says what it
    tried. Given a name, both clients once gave up at the first refused connection: they came
    through only when the service won the race (redis-py's own reconnect retries)."""
    kwargs: dict[str, Any] = {"name": "later"} if named else {}
    port_in, port_out = free_port(), free_port()  # nothing listens there
    said = r"not reachable.*start the service there with wkr-serving-start \(tried for 1s\)"
    with pytest.raises(ServiceUnavailable, match=said):
        WKRClient(port=port_in, port_out=port_out, connect_timeout=1, **kwargs)

    async def ask() -> None:
        async with AsyncWKRClient(port=port_in, port_out=port_out, connect_timeout=1,
                                  **kwargs) as client:
            await client.encode(1)
    with pytest.raises(ServiceUnavailable, match=said):
        asyncio.run(ask())


def test_an_async_client_used_on_another_event_loop_says_so_at_once(make_service) -> None:
    """A module-level client and two ``asyncio.run`` calls: the I/O tasks died with the first
    loop, so the second loop's ``encode`` waited forever (or until the caller's own timeout)
    for a publisher that no longer runs."""
    _use_on_two_loops(_async_client(make_service("tests.workers_for_tests.PoisonWorker")))
    with warnings.catch_warnings():  # its sockets went with the first loop, unclosable now:
        warnings.simplefilter("ignore", ResourceWarning)  # the cost of the mistake, not a
        for _ in range(3):  # failure of the next test that collects garbage; its finalizer
            gc.collect()  # holds them one collection longer


def _use_on_two_loops(client: AsyncWKRClient) -> None:
    async def encode(x: Any) -> Any:
        return await asyncio.wait_for(client.encode(x), 20)

    assert asyncio.run(encode(2)) == 4
    started = time.monotonic()
    with pytest.raises(WKRError, match="another event loop"):
        asyncio.run(encode(3))
    assert time.monotonic() - started < 5

    async def many() -> list[Any]:
        return [y async for y in client.encode_many([1, 2])]
    with pytest.raises(WKRError, match="another event loop"):
        asyncio.run(asyncio.wait_for(many(), 20))
    asyncio.run(asyncio.wait_for(client.close(), 20))  # closed: its loop is gone


def test_a_client_nobody_references_any_more_stops_its_threads_and_closes(
        make_service) -> None:
    """A client made per call and never closed (``WKRClient(...).encode(x).result()`` in a
    request handler) kept its five threads and its connections for ever: they referenced the
    client, so it was never collected, and each call leaked them. Like an unreferenced
    ``ThreadPoolExecutor``, it now stops them once collected, and not before: a future still
    held keeps its client."""
    service = make_service("tests.workers_for_tests.PoisonWorker")

    def make() -> WKRClient:
        return WKRClient(name=service.name, broker_url=service.broker_url,
                         result_url=service.result_url, connect_timeout=30)

    assert make().encode(3).result(timeout=30) == 6  # only its future holds the client
    gc.collect()
    before = set(threading.enumerate())
    client = make()
    future = client.encode(4)
    threads = [t for t in threading.enumerate() if t not in before]
    assert threads and all(t.name.startswith("wkr-client") for t in threads)
    key = reply_key(client.client_id)
    del client
    gc.collect()
    assert future.result(timeout=30) == 8
    assert all(t.is_alive() for t in threads)  # its future kept it

    del future
    gc.collect()
    wait_until(lambda: not any(t.is_alive() for t in threads), 20,
               what="the threads of a client nobody references to stop")
    results = redis.Redis.from_url(service.result_url)
    try:
        assert not results.exists(key)
    finally:
        results.close()


def test_a_client_sent_to_a_spawned_process_says_what_to_do(make_service) -> None:
    """``Process(target=f, args=(client,))`` under ``spawn`` failed with ``TypeError: cannot
    pickle '_thread.RLock' object``, naming neither the client nor the way out."""
    service = make_service("tests.workers_for_tests.PoisonWorker")
    with WKRClient(name=service.name, broker_url=service.broker_url,
                   result_url=service.result_url, connect_timeout=30) as client:
        child = multiprocessing.get_context("spawn").Process(target=print, args=(client,))
        with pytest.raises(WKRError, match="make one in that process"):
            child.start()
        assert client.encode(5).result(timeout=30) == 10  # the client is unharmed


def test_a_future_sent_to_another_process_says_what_to_send_instead(make_service) -> None:
    """``pool.map(f, futures)`` or a future put on a ``multiprocessing.Queue`` failed with
    ``TypeError: cannot pickle '_thread.RLock' object``, naming neither the future nor what to
    send instead."""
    service = make_service("tests.workers_for_tests.PoisonWorker")
    with WKRClient(name=service.name, broker_url=service.broker_url,
                   result_url=service.result_url, connect_timeout=30) as client:
        future = client.encode(6)
        with pytest.raises(WKRError, match=f"send its task_id \\('{future.task_id}'"):
            pickle.dumps(future)
        assert future.result(timeout=30) == 12  # the future is unharmed


def test_an_async_client_nobody_references_any_more_stops_its_tasks_and_closes(
        make_service) -> None:
    """A notebook cell ``client = AsyncWKRClient(...)`` run again, each client used and never
    closed: every client kept its publisher, listener and watch tasks on the kernel's loop,
    their Redis connections, and a ``BLPOP`` and a check per second, for as long as the kernel
    ran (10 cells: 40 tasks, 30 connections, 35 commands a second). As the sync client does,
    one nobody references any more now stops them, closes its connections and deletes its
    reply list."""
    service = make_service("tests.workers_for_tests.PoisonWorker")
    loop = asyncio.new_event_loop()  # the kernel's: one for the whole session
    cell = loop.run_until_complete
    results = redis.Redis.from_url(service.result_url)
    try:
        keys = []
        for x in range(5):
            client = _async_client(service)  # the same name bound again, as a cell run again
            assert cell(client.encode(x)) == 2 * x
            keys.append(reply_key(client.client_id))
        assert _redis_connections(service) > 0  # the last client's
        del client
        gc.collect()
        wait_until(lambda: cell(asyncio.sleep(0.05)) or not asyncio.all_tasks(loop), 20,
                   what="the tasks of clients nobody references to end")
        wait_until(lambda: _redis_connections(service) == 0, 20,
                   what="their connections to close")
        assert not results.exists(*keys)
    finally:
        results.close()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _redis_connections(service: Service) -> int:
    """This process's open connections to the service's Redis."""
    port = urlsplit(service.broker_url).port
    return sum(1 for c in psutil.Process().net_connections("tcp")
               if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)


_LEFT_OPEN = """
import asyncio, sys
from wkr_celery import AsyncWKRClient

async def main():
    client = AsyncWKRClient(name=sys.argv[1], broker_url=sys.argv[2], result_url=sys.argv[3])
    print(await client.encode(21), flush=True)

asyncio.run(main())
print("exited", flush=True)
"""


def test_a_script_that_leaves_its_async_client_open_exits_at_once(make_service) -> None:
    """``asyncio.run(main())`` with an ``AsyncWKRClient`` never closed never returned: asyncio.run
    cancels every task left when ``main`` returns, and the listener's cancel, delivered while it
    read a ``BLPOP`` reply, was lost inside redis-py, so the listener ran on and the script
    hung for ever after its last line."""
    service = make_service("tests.workers_for_tests.PoisonWorker")
    done = subprocess.run([sys.executable, "-c", _LEFT_OPEN, service.name, service.broker_url,
                           service.result_url], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["42", "exited"]
    assert "Traceback" not in done.stderr, done.stderr
