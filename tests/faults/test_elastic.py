"""Elastic workers (``-num_worker_max``) on a real service: a burst grows it to the ceiling, its
end shrinks it back to the floor, and no request is lost across the changes.

The worker takes 0.1 s a batch of at most 2 (20 requests/s a process), so a burst of 240
requests means a queue wait of seconds: the supervisor adds workers one at a time (each once
the last is serving) up to 3, then retires them after ``-scale_down_after`` of idle workers.
The decisions are read where an operator reads them: ``/status/server`` and ``/metrics`` of
the service's REST API, and the supervisor's log.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.helpers import Service, free_port, wait_until

WORKER = "tests.faults.workers.TenthDoubler"


@pytest.mark.timeout(240)
def test_a_burst_grows_the_service_to_its_max_and_it_shrinks_back_losing_nothing(
        make_service: Callable[..., Service]) -> None:
    http_port = free_port()
    service = make_service(WORKER, "-num_worker", "1", "-num_worker_max", "3",
                           "-batch_size", "2", "-scale_up_wait", "0.3",
                           "-scale_down_after", "2", "-http_port", str(http_port))
    api = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30)
    client = service.client()

    def scaling() -> dict:
        try:
            return api.get("/status/server").json().get("scaling") or {}
        except (httpx.TransportError, ValueError):
            return {}

    try:
        wait_until(lambda: scaling().get("ceiling") == 3, 60, what="the elastic state")
        burst = [client.encode(i) for i in range(240)]
        wait_until(lambda: len(service.live_workers()) == 3, 90,
                   what=f"3 live workers; log:\n{service.log()[-3000:]}")
        grown = scaling()
        assert grown["grown"] == 2 and grown["last"] == "added"
        assert "queue wait" in grown["reason"]
        # Requests sent while the service shrinks are answered too.
        late = [client.encode(i) for i in range(1000, 1040)]
        assert [f.result(timeout=120) for f in burst] == [2 * i for i in range(240)]
        assert [f.result(timeout=60) for f in late] == [2 * i for i in range(1000, 1040)]

        wait_until(lambda: scaling().get("workers") == 1 and scaling().get("retired") == 2, 90,
                   what=f"the service back at its floor; log:\n{service.log()[-3000:]}")
        wait_until(lambda: len(service.live_workers()) == 1, 30, what="one live worker")
        shrunk = scaling()
        assert shrunk["last"] == "retired" and "busy" in shrunk["reason"]
        metrics = api.get("/metrics").text
        assert "wkr_workers_running 1.0" in metrics and "wkr_workers_max 3.0" in metrics
        assert 'wkr_scale_events_total{direction="up"} 2.0' in metrics
        assert 'wkr_scale_events_total{direction="down"} 2.0' in metrics
        log = service.log()
        assert log.count("adding worker") == 2 and log.count("retiring worker") == 2
        assert "restarting in" not in log  # a retirement is not a death
        assert client.encode(7).result(timeout=30) == 14
    finally:
        api.close()


@pytest.mark.timeout(120)
def test_the_elastic_estimate_in_metrics_has_a_name_of_its_own(
        make_service: Callable[..., Service]) -> None:
    """An operator scrapes ``/metrics`` of an elastic service with the REST API. Each family
    must be declared once: the supervisor's queue-wait estimate used to be a gauge named
    ``wkr_queue_wait_seconds``, the name the API's own histogram already has, so the scrape
    declared that name twice with two types (Prometheus's text parsers reject a second
    ``TYPE`` line for a name, and ``prometheus_client``'s merged the gauge into the histogram,
    where its value was lost)."""
    from prometheus_client.parser import text_string_to_metric_families

    http_port = free_port()
    make_service(WORKER, "-num_worker", "1", "-num_worker_max", "2",
                 "-http_port", str(http_port))
    with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30) as api:
        def elastic_metrics() -> str:
            try:
                text = api.get("/metrics").text
            except httpx.TransportError:
                return ""
            return text if "wkr_workers_max 2.0" in text else ""

        text = wait_until(elastic_metrics, 60, what="the elastic state in /metrics")
    declared = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert sorted(n for n in set(declared) if declared.count(n) > 1) == [], text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["wkr_queue_wait_seconds"].type == "histogram"  # the API's own
    estimate = families["wkr_scaling_queue_wait_seconds"]
    assert estimate.type == "gauge" and [s.value for s in estimate.samples] == [0.0]
