"""The batching loop run in this process, for what only its owner sees: its listeners' lifecycle."""

from __future__ import annotations

from collections.abc import Sequence

from wkr_celery.client import WKRClient
from wkr_celery.config import Settings
from wkr_celery.server.request import Outcome, Request
from wkr_celery.server.serving import ServingLoop

from .workers_for_tests import BatchSizeWorker


class RecordingListener:
    """A batch listener holding a resource, as ``TaskEvents`` holds its events connection."""

    def __init__(self) -> None:
        self.batches = 0
        self.closed = False

    def __call__(self, batch: Sequence[Request], outcomes: Sequence[Outcome],
                 predict_seconds: float) -> None:
        assert not self.closed, "called after close"
        self.batches += 1

    def close(self) -> None:
        self.closed = True


def test_a_stopping_loop_closes_its_listeners_and_leaves_the_worker_registry(
        redis_url: str, service_name: str) -> None:
    settings = Settings(name=service_name, broker_url=redis_url)
    loop = ServingLoop(settings, BatchSizeWorker(name=service_name), worker_id="w-inproc",
                       device_id=-1)
    listener = RecordingListener()
    loop.listeners.append(listener)
    loop.start()
    try:
        assert loop.ready.wait(30) and loop.failed is None
        with WKRClient(name=service_name, broker_url=redis_url, connect_timeout=30) as client:
            assert client.encode(7, timeout=30).result(30)["x"] == 7
    finally:
        loop.stop(timeout=30)
    assert listener.batches >= 1 and listener.closed
    assert not loop.registry.live_workers()
    loop.queue.client.close()
