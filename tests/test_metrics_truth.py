"""What ``/metrics``, ``/status/server`` and the dashboard report, checked against requests
counted by the test: a real service with its REST API, real worker processes, real HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from wkr_celery.redis_embedded import EmbeddedRedis

from .helpers import Service, free_port, start_service, wait_answering, wait_until


def scrape(http: httpx.Client) -> dict[str, float]:
    """``GET /metrics`` parsed strictly: ``name{labels}`` → value."""
    response = http.get("/metrics")
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


@contextlib.contextmanager
def with_api(redis_url: str, tmp_path: Path, worker: str, *args: str,
             workers: int = 1) -> Iterator[tuple[Service, httpx.Client]]:
    """A service of ``worker`` with its REST API, and an HTTP client of that API once ready."""
    port = free_port()
    service = start_service(f"truth{uuid.uuid4().hex[:8]}", redis_url, redis_url, tmp_path,
                            worker, ["-num_worker", str(workers), "-http_port", str(port),
                                     "-device_map", "-1", *args], wait=workers)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        wait_answering(http, "/readyz", 60, what=f"the REST API; log:\n{service.log()}")
        yield service, http
    finally:
        http.close()
        service.stop()


@pytest.fixture
def served(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[tuple[Service, httpx.Client]]:
    with with_api(redis_server.url, tmp_path, "workers.echo.Worker", workers=2) as both:
        yield both


def figures(http: httpx.Client) -> dict[str, Any]:
    metrics = scrape(http)
    status = http.get("/status/server").json()
    dashboard = http.get("/dashboard/data").json()
    return {"batch_count": metrics["wkr_batch_size_count"],
            "batch_sum": metrics["wkr_batch_size_sum"],
            "predict_count": metrics["wkr_predict_seconds_count"],
            "stat_count": metrics.get("wkr_stat_batchsize_count"),
            "status_responses": status["totals"]["responses"],
            "status_batches": status["totals"]["batches"],
            "dashboard_responses": dashboard["totals"]["responses"],
            "alive": {w["worker_id"]: w["pid"] for w in status["workers"]}}


def test_service_counters_never_go_down_when_a_worker_is_killed(
        served: tuple[Service, httpx.Client]) -> None:
    service, http = served
    client = service.client()
    sent = 40
    for i in range(sent):
        assert client.encode({"i": i}).result(timeout=10) == {"i": i}
    before = wait_until(lambda: (lambda f: f if f["batch_sum"] == sent else None)(figures(http)),
                        10, what=f"{sent} answers counted by the heartbeats")
    assert before["status_responses"] == before["dashboard_responses"] == sent
    assert before["batch_count"] == before["predict_count"] == before["status_batches"]
    assert before["stat_count"] == before["batch_count"]

    victim = next(iter(before["alive"].values()))
    os.kill(victim, signal.SIGKILL)  # the supervisor starts another in its slot
    after = wait_until(
        lambda: (lambda f: f if len(f["alive"]) == 2 and victim not in f["alive"].values()
                 else None)(figures(http)), 60, what="a worker restarted in the killed one's slot")
    # Prometheus reads a counter that goes down as a reset and counts what follows twice.
    assert {k: v for k, v in after.items() if k != "alive"} == \
        {k: v for k, v in before.items() if k != "alive"}


def test_requests_refused_at_the_cap_are_counted_whoever_sent_them(
        redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    """A request refused at ``-max_queue`` (``ServiceOverloaded``) is load shed: the one figure
    an operator sizing the service needs. Only the REST API counted its own refusals (as
    ``outcome="overloaded"``); a ``WKRClient``'s appeared nowhere. The queue's script counts
    every refusal in the service's totals, shown as ``wkr_requests_refused_total``."""
    from wkr_celery.errors import ServiceOverloaded

    gate = tmp_path / "gate"
    with with_api(redis_server.url, tmp_path, "tests.workers_for_tests.GateWorker",
                  "-batch_size", "1", "-prefetch", "1", "-max_queue", "2") as (service, http):
        assert scrape(http)["wkr_requests_refused_total"] == 0
        client = service.client()
        held = [client.encode({"gate": str(gate), "value": 0})]
        wait_until(Path(f"{gate}.entered").exists, 30, what="the first request in predict")
        held.append(client.encode({"gate": str(gate), "value": 1}))
        wait_until(lambda: service.queue.queue_length() == 0, 30, what="the second buffered")
        held += [client.encode({"gate": str(gate), "value": i}) for i in (2, 3)]
        wait_until(lambda: service.queue.queue_length() == 2, 30, what="two queued: the cap")
        for _ in range(3):
            with pytest.raises(ServiceOverloaded):
                client.encode({"value": 9}).result(timeout=10)
        refused = http.post("/encode", json={"id": 1, "data": {"value": 9}})
        assert refused.status_code == 503, refused.text
        assert scrape(http)["wkr_requests_refused_total"] == 4
        gate.touch()
        assert [int(f.result(timeout=30)) for f in held] == [0, 2, 4, 6]


def test_one_api_process_counts_in_memory_whatever_the_callers_environment(
        redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    """prometheus_client counts in files whenever ``PROMETHEUS_MULTIPROC_DIR`` is set, even
    empty (then in the current folder). Only ``-http_workers`` above 1 sets it for the API;
    a variable the user's shell carries for another program must not make the API write
    into that program's folder, or into the project folder."""
    from .helpers import ROOT

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    port = free_port()
    service = start_service(f"mem{uuid.uuid4().hex[:8]}", redis_server.url, redis_server.url,
                            tmp_path, "workers.echo.Worker",
                            ["-http_port", str(port), "-device_map", "-1"], wait=1,
                            env={"PROMETHEUS_MULTIPROC_DIR": str(theirs)})
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        wait_answering(http, "/readyz", 60, what=f"the REST API; log:\n{service.log()}")
        answer = http.post("/encode", json={"id": 1, "data": {"i": 1}})
        assert answer.status_code == 200, answer.text
        assert scrape(http)['wkr_http_requests_total{outcome=ok,route=POST /encode}'] == 1
    finally:
        http.close()
        service.stop()
    assert not list(theirs.iterdir())
    assert not [p.name for p in ROOT.glob("*.db")]
