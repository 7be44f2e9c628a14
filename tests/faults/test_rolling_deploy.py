"""Deploying a new version of the model under the same ``-name`` while the old one serves.

Both versions share one Redis; the old one is stopped gracefully by its supervisor's pid once
the new one serves, under a steady client load.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import Service, start_service, wait_until
from wkr_celery.client import AsyncWKRClient, WKRClient
from wkr_celery.errors import InputError

WORKERS = "tests.faults.deploy_workers"


@pytest.fixture
def version_of(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Start a version of service ``name``: each in a folder of its own (its log)."""
    services: list[Service] = []

    def start(name: str, url: str, worker: str, *args: str, wait: int | None = 1) -> Service:
        folder = tmp_path / f"v{len(services) + 1}"
        folder.mkdir()
        service = start_service(name, url, url, folder, f"{WORKERS}.{worker}", args, wait=wait)
        services.append(service)
        return service

    yield start
    for service in services:
        service.stop()


def _stop_by_pid(service: Service) -> None:
    """What an operator does to stop one version: SIGTERM to its supervisor's pid."""
    assert service.proc is not None
    service.proc.send_signal(signal.SIGTERM)
    assert service.proc.wait(60) == 0, service.log()[-3000:]


def _serving_lines(log: Path, name: str) -> int:
    """The docs' ``grep "serving 'NAME'" logs/NAME.log``: workers that loaded their model."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return sum(f"serving '{name}'" in line for line in text.splitlines())


class Load:
    """One client sending ints without pause, keeping every future."""

    def __init__(self, client: WKRClient) -> None:
        self.client = client
        self.sent: list[tuple[int, Future[Any]]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                self.sent.append((n, self.client.encode(n, timeout=60)))
            except Exception as exc:  # an encode that raises is a caller seeing an error
                self.errors.append(exc)
            n += 1
            self._stop.wait(0.002)  # pacing; ends at once when stopped

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def versions_seen(self) -> set[int]:
        return {f.result()[0] for _, f in self.sent if f.done() and f.exception() is None}


def test_a_new_version_started_beside_the_old_then_the_old_stopped_loses_no_request(
        own_redis: Callable[..., Any], version_of: Callable[..., Service]) -> None:
    redis = own_redis()
    name = f"d{uuid.uuid4().hex[:8]}"
    old = version_of(name, redis.url, "V1", "-num_worker", "2", "-batch_size", "8")
    client = old.client()
    load = Load(client)
    wait_until(lambda: len(load.sent) > 200, 30, what="load before the deploy")
    logs = old.log_path.parent.parent / "v2" / "logs"  # the new version's folder
    new = version_of(name, redis.url, "V2", "-num_worker", "2", "-batch_size", "8",
                     "-log_dir", str(logs), wait=None)
    wait_until(lambda: _serving_lines(logs / f"{name}.log", name) == 2, 60,
               what="both workers of the new version serving, as its log says")
    _stop_by_pid(old)
    mark = len(load.sent)
    wait_until(lambda: len(load.sent) > mark + 200, 30, what="load after the old version left")
    load.stop()
    answers = [(n, f.result(timeout=60)) for n, f in load.sent]
    assert load.errors == []
    assert all(answer[1] == n for n, answer in answers)
    assert {answer[0] for _, answer in answers[mark:]} == {2}
    assert 1 in {answer[0] for _, answer in answers[:mark]}
    assert new.proc is not None and new.proc.poll() is None


def test_a_client_connected_before_a_contract_change_takes_the_new_contract(
        own_redis: Callable[..., Any], version_of: Callable[..., Service]) -> None:
    redis = own_redis()
    name = f"d{uuid.uuid4().hex[:8]}"
    old = version_of(name, redis.url, "Narrow")
    client = old.client()
    assert client.encode(np.ones(4, np.float32)).result(timeout=30) == 4
    version_of(name, redis.url, "Wide")
    _stop_by_pid(old)
    wide = np.ones(6, np.float32)

    def sent() -> Future[Any] | None:
        try:
            return client.encode(wide, timeout=30)
        except InputError:
            return None

    future = wait_until(sent, 10, what="the client taking the new version's input shape")
    assert future.result(timeout=30) == 6
    with pytest.raises(InputError, match=r"shape \(4,\); this service takes \(6,\)"):
        client.encode(np.ones(4, np.float32))


def test_an_asyncio_client_connected_before_a_contract_change_takes_the_new_contract(
        own_redis: Callable[..., Any], version_of: Callable[..., Service]) -> None:
    redis = own_redis()
    name = f"d{uuid.uuid4().hex[:8]}"
    old = version_of(name, redis.url, "Narrow")
    wide = np.ones(6, np.float32)

    async def main() -> None:
        async with AsyncWKRClient(name=name, broker_url=redis.url, timeout=30) as client:
            assert await client.encode(np.ones(4, np.float32)) == 4
            await asyncio.to_thread(version_of, name, redis.url, "Wide")
            await asyncio.to_thread(_stop_by_pid, old)
            for _ in range(200):  # each refusal looks at the service info at most once a second
                try:
                    assert await client.encode(wide) == 6
                    break
                except InputError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("the client kept refusing the new version's input shape")
            with pytest.raises(InputError, match=r"shape \(4,\); this service takes \(6,\)"):
                await client.encode(np.ones(4, np.float32))

    asyncio.run(main())


def test_a_new_version_that_fails_to_load_leaves_the_old_one_serving(
        own_redis: Callable[..., Any], version_of: Callable[..., Service],
        tmp_path: Path) -> None:
    redis = own_redis()
    name = f"d{uuid.uuid4().hex[:8]}"
    old = version_of(name, redis.url, "V1")
    client = old.client()
    info_before = old.registry.info()
    bad = version_of(name, redis.url, "V2", "-model_dir", str(tmp_path / "missing"),
                     "-model_name", "m", wait=None)
    wait_until(lambda: old.registry.last_failure(), 30, what="the new version's failure")
    assert [client.encode(n).result(timeout=30) for n in range(20)] == [[1, n] for n in range(20)]
    assert old.registry.info() == info_before
    _stop_by_pid(bad)
    assert name.encode() in old.registry.client.smembers("wkr:services")
    assert client.encode(5).result(timeout=30) == [1, 5]


def test_an_old_worker_restarted_during_a_deploy_leaves_the_new_contract_standing(
        own_redis: Callable[..., Any], version_of: Callable[..., Service]) -> None:
    """The service info is the newest deploy's while both run, whoever starts last, and the
    old version's again once the new one is gone."""
    redis = own_redis()
    name = f"d{uuid.uuid4().hex[:8]}"
    old = version_of(name, redis.url, "Narrow")
    registry = old.registry
    new = version_of(name, redis.url, "Wide", wait=None)
    wait_until(lambda: registry.info().get("input_shape") == "6", 60,
               what="the new version's contract in the service info")
    assert new.proc is not None and old.proc is not None
    old_pid = old.proc.pid

    def old_workers() -> dict[str, dict[str, Any]]:
        return {w: beat for w, beat in old.live_workers().items()
                if beat.get("supervisor") == old_pid}

    (killed_id, killed), = old_workers().items()
    os.kill(killed["pid"], signal.SIGKILL)
    wait_until(lambda: [w for w in old_workers() if w != killed_id], 60,
               what="the old version's worker restarted")
    # It wrote its info before its first heartbeat (the old code wrote its own contract back).
    assert registry.info().get("input_shape") == "6"
    with WKRClient(name=name, broker_url=redis.url, connect_timeout=30) as fresh:
        with pytest.raises(InputError, match=r"this service takes \(6,\)"):
            fresh.encode(np.ones(4, np.float32))

    _stop_by_pid(new)
    wait_until(lambda: registry.info().get("input_shape") == "4", 30,
               what="the old version taking the service info back once the new one is gone")
    assert "has no live worker left" in old.log()
    with old.client() as client:
        assert client.encode(np.ones(4, np.float32)).result(timeout=30) == 4
