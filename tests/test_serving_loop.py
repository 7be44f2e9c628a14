"""The batching loop run in this process, for what only its owner sees: its listeners' lifecycle,
and where an idle worker holds a lone request."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wkr_celery.broker import ResultStore
from wkr_celery.client import WKRClient
from wkr_celery.client.protocol import Requests
from wkr_celery.config import Settings
from wkr_celery.keys import PRIORITY_STEPS, ServiceKeys
from wkr_celery.messages import parse_request
from wkr_celery.server.request import Outcome, Request
from wkr_celery.server.serving import ServingLoop
from wkr_celery.server.worker_slot import WorkerProcess

from .helpers import wait_until
from .workers_for_tests import BatchSizeWorker, GateWorker


def producer(keys: ServiceKeys) -> Requests:
    """Sends as ``POST /tasks`` does (results read from their keys), several in one round trip
    when the test chooses."""
    return Requests(keys, {}, reply_to=None, timeout=None, priority=PRIORITY_STEPS[1],
                    clock=lambda: 0.0)


def wait_in_predict(gate: str, what: str) -> None:
    """Until a ``GateWorker`` batch holding ``gate`` is in predict."""
    wait_until(lambda: os.path.exists(gate + ".entered"), timeout=20, what=what)


class GatedBatchSizeWorker(GateWorker):
    """Holds a batch with a gate file like ``GateWorker``; answers each input with the size of
    the batch it was predicted in."""

    def predict(self, model: Any, input: Any) -> list[Any]:
        super().predict(model, input)
        return [len(input)] * len(input)


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


def test_an_idle_worker_takes_a_lone_request_straight_into_its_landing_list_and_acks_it(
        redis_url: str, service_name: str, tmp_path: Path) -> None:
    """Idle, the predictor blocks on the arrivals list itself (BLMOVE): the request is held in
    the worker's landing list while it predicts (no fetch.lua, nothing in the inflight hash) and
    is gone from it once the answer is stored."""
    settings = Settings(name=service_name, broker_url=redis_url)
    loop = ServingLoop(settings, GateWorker(name=service_name), worker_id="w-land", device_id=-1)
    keys, broker = loop.keys, loop.queue.client
    loop.start()
    try:
        assert loop.ready.wait(30) and loop.failed is None
        with WKRClient(name=service_name, broker_url=redis_url, connect_timeout=30) as client:
            gate = str(tmp_path / "gate")
            future = client.encode({"gate": gate, "value": 4}, timeout=30)
            wait_until(lambda: os.path.exists(gate + ".entered"), timeout=20,
                       what="the request in predict")
            landed = broker.lrange(keys.landing("w-land"), 0, -1)
            assert [parse_request(m).task_id for m in landed] == [future.task_id]
            assert not broker.exists(keys.inflight("w-land"))
            open(gate, "w").close()
            assert future.result(30) == 8
            wait_until(lambda: not broker.exists(keys.landing("w-land")), timeout=10,
                       what="the landed request acked")
    finally:
        loop.stop(timeout=30)
    loop.queue.client.close()


def _holds(broker: Any, inflight: str, task_ids: list[str]) -> bool:
    """Whether a worker's inflight hash holds each of ``task_ids``. Not its length: the request
    in predict may be there too, fetched rather than landed when the worker's ``BLMOVE`` had just
    timed out (CI once waited for a length that then never came)."""
    held = b"".join(broker.hvals(inflight))
    return all(task_id.encode() in held for task_id in task_ids)


def test_a_worker_woken_from_idle_in_a_stream_takes_what_queued_behind_the_first_request(
        redis_url: str, service_name: str, tmp_path: Path) -> None:
    """In a stream, a worker that ran out of work blocks on the arrivals list with a fetch
    pipelined behind its BLMOVE: requests that queue together are predicted together, not the
    first alone and the rest in a second batch."""
    settings = Settings(name=service_name, broker_url=redis_url)
    loop = ServingLoop(settings, GatedBatchSizeWorker(name=service_name), worker_id="w-stream",
                       device_id=-1)
    keys, broker = loop.keys, loop.queue.client
    results = ResultStore(broker, keys)
    sender = producer(keys)

    def send(*inputs: Any) -> list[str]:  # one round trip: they queue together
        requests = [sender.make(x) for x in inputs]
        assert len(sender.enqueue(loop.queue, requests).accepted) == len(requests)
        return [r.task_id for r in requests]

    def answers(task_ids: list[str]) -> list[Any]:
        def stored() -> list[Any] | None:
            metas = [results.read(t) for t in task_ids]
            return None if None in metas else [m["result"] for m in metas]  # type: ignore[index]
        return wait_until(stored, timeout=30, what="the answers stored")  # type: ignore[no-any-return]

    def idle() -> bool:  # the predictor blocks on the arrivals list again
        return any(c.get("cmd") == "blmove" and "b" in c.get("flags", "")
                   for c in broker.client_list())

    loop.start()
    try:
        assert loop.ready.wait(30) and loop.failed is None
        gate = str(tmp_path / "gate")
        first = send({"gate": gate, "value": 1})
        wait_in_predict(gate, "the first request in predict")
        behind = send(*({"value": v} for v in range(3)))  # prefetched while the first predicts
        wait_until(lambda: _holds(broker, keys.inflight("w-stream"), behind), timeout=20,
                   what="the three prefetched")
        open(gate, "w").close()
        assert answers(first + behind) == [1, 3, 3, 3]
        wait_until(idle, timeout=20, what="the worker idle on the arrivals list")
        assert answers(send(*({"value": v} for v in range(5)))) == [5] * 5
    finally:
        loop.stop(timeout=30)
    loop.queue.client.close()


def test_the_running_file_names_the_batch_in_predict_and_nothing_left_from_a_longer_one(
        redis_url: str, service_name: str, tmp_path: Path) -> None:
    """What the supervisor reads when a worker process dies (``WorkerProcess.in_predict``): the
    inflight ids of the batch in predict, none of an earlier, longer batch's, and nothing once
    predict returned."""
    slot = WorkerProcess(index=0, device_id=-1)
    slot.prepare("w-running", str(tmp_path))
    settings = Settings(name=service_name, broker_url=redis_url)
    loop = ServingLoop(settings, GatedBatchSizeWorker(name=service_name), worker_id="w-running",
                       device_id=-1, running_file=slot.running_file)
    keys, broker = loop.keys, loop.queue.client
    sender = producer(keys)
    results = ResultStore(broker, keys)
    loop.start()
    try:
        assert loop.ready.wait(30) and loop.failed is None
        gates = [str(tmp_path / f"gate{i}") for i in range(2)]
        first = sender.make({"gate": gates[0], "value": 0})
        sender.enqueue(loop.queue, [first])
        wait_in_predict(gates[0], "the first request in predict")
        long_batch = [sender.make({"value": v}) for v in range(12)]
        sender.enqueue(loop.queue, long_batch)
        wait_until(lambda: _holds(broker, keys.inflight("w-running"),
                                  [r.task_id for r in long_batch]), timeout=20,
                   what="twelve prefetched behind it")
        held = sorted(int(i) for i in broker.hkeys(keys.inflight("w-running")))
        open(gates[0], "w").close()
        wait_until(lambda: all(results.read(r.task_id) for r in long_batch), timeout=30,
                   what="the twelve answered")
        assert slot.in_predict() == []
        last = sender.make({"gate": gates[1], "value": 1})
        sender.enqueue(loop.queue, [last])
        wait_in_predict(gates[1], "the last request in predict")
        in_predict = slot.in_predict()
        assert len(in_predict) == 1 and in_predict[0] not in held
        open(gates[1], "w").close()
        wait_until(lambda: results.read(last.task_id), timeout=30, what="the last answered")
    finally:
        loop.stop(timeout=30)
    loop.queue.client.close()
