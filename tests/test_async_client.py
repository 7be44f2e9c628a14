"""AsyncWKRClient against real services: many awaits on one loop, cancellation, every error,
and a user's FastAPI app (the README's example) served by uvicorn under httpx load."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis

import wkr_celery
from wkr_celery import (
    AsyncWKRClient,
    DeadlineExceeded,
    InputError,
    PayloadTooLarge,
    PredictError,
    RequestLost,
    ServiceOverloaded,
    ServiceUnavailable,
    VersionMismatch,
    WKRError,
)
from wkr_celery.keys import ServiceKeys, reply_key
from wkr_celery.redis_embedded import EmbeddedRedis
from workers.linear import make_weights

from .helpers import ROOT, Service, free_port, queued, start_service, wait_until

W = make_weights()


def expected(xs: np.ndarray) -> np.ndarray:
    return np.tanh(xs @ W)


async def eventually(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """:func:`wait_until` for a test running on the event loop: polls without blocking it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def run(coroutine: Awaitable[Any], timeout: float = 90.0) -> Any:
    """Run one test's coroutine on a fresh loop, bounded so nothing hangs."""
    async def bounded() -> Any:
        return await asyncio.wait_for(coroutine, timeout)
    return asyncio.run(bounded())


def client_of(service: Service, **kwargs: Any) -> AsyncWKRClient:
    kwargs.setdefault("connect_timeout", 30.0)
    return AsyncWKRClient(name=service.name, broker_url=service.broker_url,
                          result_url=service.result_url, **kwargs)


# Many awaits ----------------------------------------------------------------------------------

def test_thousands_of_concurrent_awaits_from_one_loop_get_the_right_answers_in_order(
        make_service) -> None:
    service = make_service("workers.linear.Worker", "-batch_size", "32")
    xs = np.random.default_rng(7).standard_normal((3000, 512)).astype(np.float32)
    threads_before = threading.active_count()
    peak_threads = 0

    async def main() -> None:
        nonlocal peak_threads
        async with client_of(service) as client:
            async def watch() -> None:  # sample the thread count while everything is out
                nonlocal peak_threads
                while True:
                    peak_threads = max(peak_threads, threading.active_count())
                    await asyncio.sleep(0.01)
            watcher = asyncio.ensure_future(watch())
            ys = await asyncio.gather(*(client.encode(x, timeout=60) for x in xs))
            watcher.cancel()
            np.testing.assert_allclose(np.stack(ys), expected(xs), atol=1e-5)

            async def inputs() -> Any:  # an async iterable, streamed in input order
                for x in xs[:1000]:
                    yield x
            streamed = [y async for y in client.encode_many(inputs(), max_inflight=64)]
            np.testing.assert_allclose(np.stack(streamed), expected(xs[:1000]), atol=1e-5)
            listed = [y async for y in client.encode_many(list(xs[:300]))]
            np.testing.assert_allclose(np.stack(listed), expected(xs[:300]), atol=1e-5)
            assert client.pending == 0

    run(main())
    # No thread per request: 3000 awaits out at once took at most a handful of threads
    # (asyncio's resolver pool), not thousands.
    assert peak_threads - threads_before < 10, (threads_before, peak_threads)


# Cancellation ---------------------------------------------------------------------------------

def test_cancelling_a_queued_request_revokes_it_and_one_in_predict_drops_its_answer(
        make_service, tmp_path: Path) -> None:
    # One request in predict, one buffered by the worker, the rest in the list.
    service = make_service("tests.workers_for_tests.GateWorker", "-batch_size", "1",
                           "-prefetch", "1")
    gates = {name: tmp_path / name for name in "abcd"}
    for name in "bcd":
        gates[name].touch()  # open: predicted at once, leaving an ".entered" mark

    def item(name: str, value: int) -> dict[str, Any]:
        return {"gate": str(gates[name]), "value": value}

    def entered(name: str) -> bool:
        return Path(f"{gates[name]}.entered").exists()

    async def main() -> None:
        async with client_of(service) as client:
            held = asyncio.ensure_future(client.encode(item("a", 1)))
            await eventually(lambda: entered("a"), what="the worker to hold a in predict")
            buffered = asyncio.ensure_future(client.encode(item("b", 2)))
            waiting = asyncio.ensure_future(client.encode(item("c", 3)))
            await eventually(lambda: client.pending == 3 and queued(service) == 1,
                             what="b buffered by the worker and c left in the list")

            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await eventually(lambda: queued(service) == 0, what="c revoked from the list")

            held.cancel()
            with pytest.raises(asyncio.CancelledError):
                await held
            assert client.pending == 1  # b only: nobody waits for a any more

            gates["a"].touch()
            assert int(await buffered) == 4
            assert int(await client.encode(item("d", 4), timeout=30)) == 8
            # d was sent after c, from the same list: had c still been queued, it would have
            # been predicted first.
            assert entered("d") and not entered("c")
            # a was predicted; its answer came and was dropped, leaving nothing behind.
            replies = redis.Redis.from_url(service.result_url)
            try:
                await eventually(lambda: replies.llen(reply_key(client.client_id)) == 0,
                                 what="the reply list drained")
            finally:
                replies.close()
            assert client.pending == 0

    run(main())


def test_closing_the_client_withdraws_what_it_still_has_queued(
        make_service, tmp_path: Path) -> None:
    """As ``WKRClient.close()`` does (tests/test_client_cancel.py): the requests still in the
    service's list when the client closes are taken back, not predicted for nobody."""
    service = make_service("tests.workers_for_tests.GateWorker", "-batch_size", "1",
                           "-prefetch", "1")
    gate = tmp_path / "gate"
    marks = [tmp_path / f"q{i}" for i in range(6)]
    for mark in marks:
        mark.touch()

    async def main() -> None:
        client = await client_of(service).connect()
        held = asyncio.ensure_future(client.encode({"gate": str(gate), "value": 1}))
        await eventually(lambda: Path(f"{gate}.entered").exists(), what="a held batch")
        rest = [asyncio.ensure_future(client.encode({"gate": str(mark), "value": i}))
                for i, mark in enumerate(marks)]
        await eventually(lambda: queued(service) == 5, what="five in the list (one buffered)")
        await client.close()
        assert queued(service) == 0  # close returns once they are taken back
        for future in (held, *rest):
            with pytest.raises(WKRError):
                await future

    run(main())
    gate.touch()
    with service.client() as other:
        assert int(other.encode({"value": 7}).result(timeout=30)) == 14
    assert [i for i, mark in enumerate(marks) if Path(f"{mark}.entered").exists()] == [0]


def test_wait_for_timeout_withdraws_the_request_like_any_cancellation(
        make_service, tmp_path: Path) -> None:
    service = make_service("tests.workers_for_tests.GateWorker", "-batch_size", "1",
                           "-prefetch", "1")
    gate = tmp_path / "gate"

    async def main() -> None:
        async with client_of(service) as client:
            held = asyncio.ensure_future(client.encode({"gate": str(gate), "value": 1}))
            await eventually(lambda: Path(f"{gate}.entered").exists(), what="a held batch")
            many = [asyncio.ensure_future(client.encode({"value": i})) for i in range(5)]
            await eventually(lambda: queued(service) == 4, what="four requests in the list")
            status = await client.server_status()
            assert status["queue_length"] == 4 and len(status["workers"]) == 1
            assert status["config"]["protocol"] == "obj" and status["name"] == service.name
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.encode({"value": 99}), 0.2)
            for task in many[1:]:
                task.cancel()
            await eventually(lambda: queued(service) == 0, what="the withdrawn revoked")
            assert (await client.server_status())["queue_length"] == 0
            gate.touch()
            assert int(await held) == 2 and int(await many[0]) == 0
            assert client.pending == 0

    run(main())


# Errors ---------------------------------------------------------------------------------------

def test_timeouts_input_predict_and_overload_errors_are_raised_as_by_the_sync_client(
        make_service, tmp_path: Path) -> None:
    service = make_service("tests.workers_for_tests.GateWorker", "-batch_size", "1",
                           "-prefetch", "1", "-max_queue", "2", "-max_payload", "2000")
    gate = tmp_path / "gate"

    async def main() -> None:
        async with client_of(service) as client:
            with pytest.raises(InputError, match=f"service '{service.name}'.*cannot be encoded"):
                await client.encode({"value": object()})
            with pytest.raises(PayloadTooLarge, match="at most 2000 bytes"):
                await client.encode({"value": "x" * 5000})
            with pytest.raises(InputError, match="timeout"):
                await client.encode({"value": 1}, timeout=-1)
            with pytest.raises(PredictError) as predict_error:
                await client.encode({"value": "not a number"})
            assert "Traceback" in (predict_error.value.remote_traceback or "")

            held = asyncio.ensure_future(client.encode({"gate": str(gate), "value": 5}))
            await eventually(lambda: Path(f"{gate}.entered").exists(), what="a held batch")
            with pytest.raises(DeadlineExceeded):
                await client.encode({"value": 1}, timeout=0.3)
            # The late one is buffered or queued; two more fill the cap, the rest are refused
            # at once, while the batch is still held.
            sends = [asyncio.ensure_future(client.encode({"value": i}, timeout=30))
                     for i in range(6)]
            await eventually(lambda: any(send.done() for send in sends), what="a refusal")
            gate.touch()
            assert int(await held) == 10
            answers = await asyncio.gather(*sends, return_exceptions=True)
            refused = [a for a in answers if isinstance(a, ServiceOverloaded)]
            assert refused and "-max_queue" in str(refused[0])
            served = [(i, a) for i, a in enumerate(answers) if not isinstance(a, Exception)]
            assert served and all(int(a) == 2 * i for i, a in served)
            assert len(served) + len(refused) == 6
        with pytest.raises(WKRError, match="closed"):
            await client.encode({"value": 1})

    run(main())


def test_a_redis_restarted_without_persistence_fails_what_it_lost_with_request_lost(
        tmp_path: Path) -> None:
    server = EmbeddedRedis(free_port(), data_dir=str(tmp_path / "redis"), persist=False).start()
    try:
        service = start_service("restarted", server.url, server.url, tmp_path,
                                "tests.workers_for_tests.GateWorker",
                                ["-batch_size", "1", "-prefetch", "1",
                                 "-visibility_timeout", "2"], wait=1)
    except BaseException:
        server.stop()
        raise
    gate = tmp_path / "gate"

    def restart() -> None:
        nonlocal server
        server.stop()
        server = EmbeddedRedis(server.port, data_dir=str(tmp_path / "redis")).start()

    async def main() -> None:
        async with client_of(service) as client:
            held = asyncio.ensure_future(client.encode({"gate": str(gate), "value": 1}))
            await eventually(lambda: Path(f"{gate}.entered").exists(), what="a held batch")
            sent = [asyncio.ensure_future(client.encode({"value": i})) for i in range(3)]
            await eventually(lambda: queued(service) == 2, what="two requests in the list")
            # From an executor thread that ends: the new redis-server must outlive it (it is
            # forked by processes.spawn's own thread; before, it got SIGTERM with this one).
            await asyncio.to_thread(restart)
            # No timeout was given: without the watch these would wait forever. In doubt, they
            # fail once the service has answered none of them for the grace (2 s here).
            answers = await asyncio.gather(*sent, return_exceptions=True)
            lost = [a for a in answers if isinstance(a, RequestLost)]
            assert len(lost) >= 2, answers  # the two in the list, at least, are gone
            assert "restarted without persistence" in str(lost[0])
            assert all(isinstance(a, RequestLost) or int(a) == 2 * i
                       for i, a in enumerate(answers))
            gate.touch()
            first = await asyncio.gather(held, return_exceptions=True)
            assert isinstance(first[0], RequestLost) or int(first[0]) == 2
            await eventually(service.live_workers, what="the worker back on the new Redis")
            assert int(await client.encode({"value": 21}, timeout=30)) == 42

    try:
        run(main())
    finally:
        service.stop()
        server.stop()


def test_a_service_gone_with_its_redis_fails_waiting_requests_within_connect_timeout(
        tmp_path: Path) -> None:
    server = EmbeddedRedis(free_port()).start()
    try:
        service = start_service("gone", server.url, server.url, tmp_path,
                                "tests.workers_for_tests.PoisonWorker", [], wait=1)

        async def main() -> None:
            async with client_of(service, connect_timeout=2) as client:
                assert await client.encode(4) == 8
                await asyncio.to_thread(service.stop)
                waiting = asyncio.ensure_future(client.encode(5))  # queued; nobody serves it
                await eventually(lambda: queued(service) == 1, what="the request queued")
                await asyncio.to_thread(server.stop)
                with pytest.raises(RequestLost, match="unreachable for over 2s"):
                    await waiting  # no timeout given: the watch ends it
        run(main())
    finally:
        server.stop()


def test_unreachable_broker_missing_worker_and_version_mismatch_fail_clearly(
        make_service, redis_url: str) -> None:
    service = make_service("tests.workers_for_tests.PoisonWorker")

    with pytest.raises(ServiceUnavailable, match="not reachable"):
        run(AsyncWKRClient(port=free_port(), port_out=free_port(), connect_timeout=0.5)
            .encode(1))

    async def nobody() -> Any:
        async with AsyncWKRClient(broker_url=redis_url, result_url=redis_url, name="nobody",
                                  connect_timeout=0.5) as client:
            return await client.encode(1)
    with pytest.raises(ServiceUnavailable, match="no worker of service 'nobody'"):
        run(nobody())

    broker = redis.Redis.from_url(service.broker_url)
    info = ServiceKeys(service.name).info
    broker.hset(info, "version", "9.9.0")
    try:
        with pytest.raises(VersionMismatch, match="9.9.0"):
            run(client_of(service).encode(1))

        async def unchecked() -> Any:
            async with client_of(service, check_version=False) as client:
                return await client.encode(1)
        assert run(unchecked()) == 2
    finally:
        broker.hset(info, "version", wkr_celery.__version__)
        broker.close()


# The README's example: a script, and a FastAPI app of the user's own -------------------------

@pytest.fixture
def own_service(tmp_path: Path) -> Iterator[tuple[int, Service]]:
    """The quickstart's worker on a Redis of its own: the example finds the service by port,
    without a name, so the broker must serve that one service only."""
    server = EmbeddedRedis(free_port()).start()
    service = start_service("default", server.url, server.url, tmp_path,
                            "workers.linear.Worker", ["-batch_size", "32"], wait=1)
    yield server.port, service
    service.stop()
    server.stop()


def test_async_example_runs_and_its_fastapi_app_answers_hundreds_of_concurrent_requests(
        own_service: tuple[int, Service], tmp_path: Path) -> None:
    port, _ = own_service
    env = {**os.environ, "WKR_PORT_IN": str(port), "WKR_PORT_OUT": str(port)}
    examples = ROOT / "examples"
    script = subprocess.run([sys.executable, "async_client.py"], cwd=examples, env=env,
                            capture_output=True, text=True, timeout=120)
    assert script.returncode == 0, script.stderr
    assert "(128,)" in script.stdout and "1000 results in order" in script.stdout

    http_port = free_port()
    uvicorn = Path(sys.executable).parent / "uvicorn"
    log = tmp_path / "uvicorn.log"
    with open(log, "wb") as out:
        app = subprocess.Popen([str(uvicorn), "async_client:app", "--host", "127.0.0.1",
                                "--port", str(http_port)], cwd=examples, env=env,
                               stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{http_port}"

        def up() -> bool:
            try:
                return httpx.get(f"{base}/docs", timeout=2).status_code == 200
            except httpx.TransportError:
                return False
        wait_until(up, 60, what=f"the example app; log:\n{log.read_text(errors='replace')}")

        xs = np.random.default_rng(3).standard_normal((400, 512)).astype(np.float32)

        async def load() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=400)
            async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
                return await asyncio.gather(*(http.post("/predict", json=x.tolist())
                                              for x in xs))
        responses = run(load())
        assert all(r.status_code == 200 for r in responses), responses[0].text
        np.testing.assert_allclose(np.array([r.json() for r in responses]), expected(xs),
                                   atol=1e-5)
        bad = httpx.post(f"{base}/predict", json=[1.0, 2.0], timeout=30)
        assert bad.status_code == 400 and "this service takes (512,)" in bad.text
    finally:
        app.terminate()
        app.wait(30)
    assert b"Traceback" not in log.read_bytes()
