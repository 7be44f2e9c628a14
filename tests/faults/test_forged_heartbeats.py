"""A heartbeat key someone else wrote costs nothing: it is not a live worker, and every reader
of heartbeats (the REST API, the elastic supervisor, clients) goes on as before.

Anyone who can write to the broker Redis can add an id to a service's worker set and give it a
heartbeat. Before, one that did not decode made the REST API answer every request, ``POST
/encode`` included, ``400 DecodeError``; one that decoded to a list or held text where numbers
go made them ``500``; and the elastic supervisor's check raised and stopped the service.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import numpy as np
import pytest
import redis

from tests.helpers import Service, free_port, wait_answering, wait_until
from wkr_celery import codec

WORKER = "tests.faults.workers.Doubler"

FORGED = {
    "undecodable": b"\xc1",
    "a-list": codec.dumps([1, 2]),
    "text-for-numbers": codec.dumps({"device_id": "x", "requests": "lots", "batches": None,
                                     "predict_seconds": "abc", "started": "yesterday",
                                     "statistics": [1], "batch_sizes": "x", "host": {"a": 1}}),
    "arrays": codec.dumps({"requests": np.arange(3), "started": np.arange(2),
                           "statistics": {"s": {"count": "a"}}}),
}


def _forge(redis_client: redis.Redis, service: Service) -> None:
    keys = service.registry.keys
    for worker_id, beat in FORGED.items():
        redis_client.set(keys.heartbeat(worker_id), beat, ex=300)
        redis_client.sadd(keys.workers, worker_id)


@pytest.mark.timeout(120)
def test_forged_heartbeats_leave_the_rest_api_serving(
    make_service: Callable[..., Service], redis_client: redis.Redis
) -> None:
    port = free_port()
    service = make_service(WORKER, "-http_port", str(port))
    real = set(service.wait_workers(1))
    _forge(redis_client, service)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        wait_answering(http, "/healthz", 60, what="the REST API;\n" + service.log()[-3000:])
        answer = http.post("/encode", json={"id": 1, "data": 21})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"id": 1, "result": 42}
        status = http.get("/status/server")
        assert status.status_code == 200, status.text
        assert {w["worker_id"] for w in status.json()["workers"]} == real
        for path in ("/dashboard/data", "/metrics", "/readyz"):
            got = http.get(path)
            assert got.status_code == 200, (path, got.text)
    assert set(service.live_workers()) == real
    assert service.client().encode(3).result(timeout=15) == 6


@pytest.mark.timeout(120)
def test_forged_heartbeats_do_not_stop_an_elastic_service(
    make_service: Callable[..., Service], redis_client: redis.Redis
) -> None:
    service = make_service(WORKER, "-num_worker", "1", "-num_worker_max", "2")
    scaling = service.registry.keys.scaling
    _forge(redis_client, service)
    for _ in range(2):  # the second report comes from a check that began after the forgery
        redis_client.delete(scaling)
        wait_until(lambda: redis_client.exists(scaling), 20,
                   what="the supervisor's elastic report;\n" + service.log()[-3000:])
    assert service.proc is not None and service.proc.poll() is None, service.log()[-3000:]
    assert service.client().encode(4).result(timeout=15) == 8
