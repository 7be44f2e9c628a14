"""Hostile payloads hurt only their own request: unsafe arrays, inputs and results over the limits.

The two poisons are the ones that killed a worker before the decoder was hardened: a 16-byte
msgpack-numpy map with no ``kind`` and type ``"|O"`` (an object array over raw pointer bytes),
and a structured dtype with an object field. They arrive through the REST API as
``application/msgpack`` and straight on the queue in our client's own envelope.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable
from concurrent.futures import wait
from functools import partial
from typing import Any

import httpx
import msgpack
import pytest
import redis

from tests.helpers import Service, free_port, wait_answering, wait_until
from tests.test_rest_limits import empty_maps, memory_kb
from wkr_celery import envelope
from wkr_celery.codec import MAX_VALUES
from wkr_celery.errors import PayloadTooLarge, RequestFailed, RequestTooLarge, ResultTooLarge
from wkr_celery.keys import task_meta_key
from wkr_celery.messages import build_request, decode_meta, encode_body

WORKER = "tests.faults.workers.Doubler"

NO_KIND_OBJECT = {b"nd": True, b"type": "|O", b"shape": [2], b"data": b"\x01" * 16}
STRUCTURED_OBJECT = {b"nd": True, b"kind": b"V", b"type": [[b"a", "|O"]], b"shape": [1],
                     b"data": b"\x01" * 8}
POISONS = {"no kind, type |O": NO_KIND_OBJECT, "structured with an object field": STRUCTURED_OBJECT}
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def _packed(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _envelope(task_id: str, body: bytes) -> bytes:
    """Our client's envelope (``build_request``), for a foreign producer: no reply list."""
    return build_request(task_id, body, queue="q", priority=3, client_id=None, deadline=None,
                         argsrepr="[?]").encode()


def _worker_pids(service: Service) -> dict[str, int]:
    return {wid: int(beat["pid"]) for wid, beat in service.live_workers().items()}


def _stored(redis_client: redis.Redis, service: Service, task_id: str) -> dict[str, Any]:
    data = wait_until(partial(redis_client.get, task_meta_key(task_id)), timeout=15,
                      what=f"the result of {task_id};\n" + service.log()[-3000:])
    return decode_meta(data)


@pytest.mark.timeout(90)
def test_unsafe_arrays_sent_to_rest_answer_400_and_the_worker_keeps_serving(
    make_service: Callable[..., Service],
) -> None:
    port = free_port()
    service = make_service(WORKER, "-http_port", str(port))
    pids = _worker_pids(service)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        wait_answering(http, "/readyz", 60, what="the REST API;\n" + service.log()[-3000:])
        bodies = {f"{what} as data": _packed({"id": 1, "data": poison})
                  for what, poison in POISONS.items()}
        bodies.update({f"{what} as id": _packed({"id": poison, "data": 2})
                       for what, poison in POISONS.items()})
        assert len(bodies["no kind, type |O as data"]) <= 75  # the size of the request
        for what, body in bodies.items():
            response = http.post("/encode", content=body,
                                 headers={"Content-Type": "application/msgpack"})
            assert response.status_code == 400, (what, response.content)
            error = msgpack.unpackb(response.content)["error"]
            assert "not accepted" in error["message"], (what, error)
        answer = http.post("/encode", json={"id": "after", "data": 21})
        assert answer.status_code == 200 and answer.json() == {"id": "after", "result": 42}
    assert _worker_pids(service) == pids, "a worker was restarted"
    assert "exited with code" not in service.log()


@pytest.mark.timeout(90)
def test_unsafe_arrays_pushed_onto_the_queue_fail_only_their_own_request(
    make_service: Callable[..., Service], redis_client: redis.Redis
) -> None:
    service = make_service(WORKER, "-batch_size", "8")
    pids = _worker_pids(service)
    poison_ids = {what: uuid.uuid4().hex for what in POISONS}
    good_ids = [uuid.uuid4().hex for _ in range(4)]
    messages = [_envelope(poison_ids[what], _packed([[poison], {}, _EMBED]))
                for what, poison in POISONS.items()]
    messages += [_envelope(task_id, encode_body(n)) for n, task_id in enumerate(good_ids)]
    keys = service.queue.keys
    redis_client.lpush(keys.queue_for(3), *messages)  # one push: fetched as one batch

    for what, task_id in poison_ids.items():
        meta = _stored(redis_client, service, task_id)
        assert meta["status"] == "FAILURE", (what, meta)
        assert meta["result"]["exc_type"] == "DecodeError", (what, meta)
        assert "not accepted" in meta["result"]["exc_message"][0], (what, meta)
    answers = [_stored(redis_client, service, task_id) for task_id in good_ids]
    assert [(m["status"], m["result"]) for m in answers] == [("SUCCESS", 2 * n) for n in range(4)]
    client = service.client()
    assert [client.encode(n).result(timeout=15) for n in range(3)] == [0, 2, 4]
    assert _worker_pids(service) == pids, "a worker was restarted"


@pytest.mark.timeout(90)
def test_input_over_max_payload_is_refused_by_the_worker_undecoded_and_its_caller_told(
    make_service: Callable[..., Service], redis_client: redis.Redis
) -> None:
    service = make_service(WORKER, "-max_payload", "1000", "-batch_size", "8")
    client = service.client()
    # A client whose limit is stale (the service came back with a smaller -max_payload), and a
    # foreign producer that never checks: both reach the worker with an input over the limit.
    client.spec = dataclasses.replace(client.spec, max_payload=10**9)
    big = "x" * 5000
    futures = [client.encode(x) for x in (1, big, 2, 3)]
    foreign_id = uuid.uuid4().hex
    redis_client.lpush(service.queue.keys.queue_for(3), _envelope(foreign_id, encode_body(big)))

    wait(futures, timeout=20)
    error = futures[1].exception(timeout=0)
    assert isinstance(error, RequestTooLarge), error
    assert isinstance(error, PayloadTooLarge) and isinstance(error, RequestFailed)
    size = len(encode_body(big))
    assert f"encoded input is {size} bytes" in str(error)
    assert "at most 1000 bytes (-max_payload)" in str(error)
    assert [futures[i].result(timeout=0) for i in (0, 2, 3)] == [2, 4, 6]
    meta = _stored(redis_client, service, foreign_id)
    assert meta["result"]["exc_type"] == "RequestTooLarge", meta
    assert f"{size} bytes" in meta["result"]["exc_message"][0]


@pytest.mark.timeout(90)
def test_result_over_max_result_is_not_stored_and_its_caller_told(
    make_service: Callable[..., Service], redis_client: redis.Redis
) -> None:
    service = make_service(WORKER, "-max_result", "2000", "-batch_size", "8")
    client = service.client()
    big = "y" * 1500  # doubled by predict: a result of 3000 characters
    futures = [client.encode(x) for x in (1, big, 2)]
    wait(futures, timeout=20)
    error = futures[1].exception(timeout=0)
    assert isinstance(error, ResultTooLarge), error
    assert "stores at most 2000 bytes (-max_result)" in str(error)
    assert [futures[i].result(timeout=0) for i in (0, 2)] == [2, 4]
    stored = redis_client.get(task_meta_key(futures[1].task_id))  # type: ignore[attr-defined]
    assert stored is not None and len(stored) < 2000 and b"y" * 100 not in stored
    assert json.dumps(decode_meta(stored)["result"]["exc_type"]) == '"ResultTooLarge"'


@pytest.mark.timeout(90)
def test_empty_maps_pushed_onto_the_queue_are_refused_while_decoding_naming_the_limit(
    make_service: Callable[..., Service], redis_client: redis.Redis
) -> None:
    """The 5 MB REST attack body (a 64-byte dict per byte, once decoded), straight on the
    queue in both envelopes: under -max_payload, so the worker decodes it, and its decoder
    refuses it before more than a million values are built; its caller is told which limit,
    the requests beside it are answered, and the worker's memory stays small."""
    service = make_service(WORKER, "-batch_size", "8")
    pids = _worker_pids(service)
    rss_before = {pid: memory_kb(pid, "VmRSS") for pid in pids.values()}
    bad = {(arrays, kind): uuid.uuid4().hex for arrays in (1, 6) for kind in ("kombu", "ours")}
    good = [uuid.uuid4().hex for _ in range(3)]
    messages = [_envelope(task_id, empty_maps(arrays)) if kind == "kombu" else envelope.build(
        task_id, empty_maps(arrays), client_id=None, deadline=None, priority=3)
        for (arrays, kind), task_id in bad.items()]
    messages += [_envelope(task_id, encode_body(n)) for n, task_id in enumerate(good)]
    redis_client.lpush(service.queue.keys.queue_for(3), *messages)

    for what, task_id in bad.items():
        meta = _stored(redis_client, service, task_id)
        assert meta["result"]["exc_type"] == "DecodeError", (what, meta)
        assert f"more than {MAX_VALUES} values" in meta["result"]["exc_message"][0], (what, meta)
    answers = [_stored(redis_client, service, task_id) for task_id in good]
    assert [(m["status"], m["result"]) for m in answers] == [("SUCCESS", 2 * n) for n in range(3)]
    assert service.client().encode(5).result(timeout=15) == 10
    assert _worker_pids(service) == pids, "a worker was restarted"
    grew_mb = {pid: (memory_kb(pid, "VmHWM") - rss) / 1024 for pid, rss in rss_before.items()}
    assert max(grew_mb.values()) < 200, f"a worker's peak memory grew (MB): {grew_mb}"
