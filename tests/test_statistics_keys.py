"""``record_statistic`` with what real models record: a NaN or infinite score, keys that name
one Prometheus metric, a key per request. None of it may spoil the service's counters, the
status page or the scrape (a real service, its REST API, real HTTP)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from wkr_celery.redis_embedded import EmbeddedRedis
from wkr_celery.server.hardworker import MAX_STATISTIC_KEYS, Statistics

from .helpers import Service, wait_until
from .test_metrics_truth import scrape, with_api


@pytest.fixture
def served(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[tuple[Service, httpx.Client]]:
    with with_api(redis_server.url, tmp_path, "tests.workers_for_tests.StatisticsWorker") as both:
        yield both


def _send(service: Service, records: list[dict[str, object]]) -> None:
    client = service.client()
    futures = [client.encode({"record": record}) for record in records]
    assert [f.result(timeout=30) for f in futures] == [len(r) for r in records]


def _responses(http: httpx.Client) -> int:
    return int(http.get("/status/server").json()["totals"]["responses"])


def test_a_nan_or_infinite_statistic_is_left_out_and_spoils_no_counter(
        served: tuple[Service, httpx.Client]) -> None:
    """Before, the worker's next heartbeat carried the NaN, and a beat with a number that is
    not finite is no live worker's: one NaN score took the service down (every new request:
    ``ServiceUnavailable: no worker of service … is alive``), and Redis refused to add it to
    the totals hash, which the beat then dropped as spoiled."""
    service, http = served
    _send(service, [{"score": 1.0}] * 10)
    _send(service, [{"score": "nan"}, {"score": "inf"}, {"score": "-inf"}])
    _send(service, [{"score": 3.0}] * 10)
    expected = {"count": 20, "sum": 40.0, "min": 1.0, "max": 3.0}

    def score() -> dict[str, float] | None:  # the totals, and the live worker's latest beat
        status = http.get("/status/server")
        assert status.status_code == 200, status.text
        return status.json()["statistics"].get("score")

    wait_until(lambda: score() == expected, 15, what=f"score {expected} on /status/server")
    assert _responses(http) == 23
    with service.client() as client:  # a new caller, after the beats that carried the NaN
        assert client.encode({"record": {"score": 2.0}}).result(timeout=30) == 1
    metrics = scrape(http)
    assert metrics["wkr_stat_score_count"] == 20 and metrics["wkr_stat_score_sum"] == 40.0
    assert metrics["wkr_batch_size_sum"] == 23
    log = service.log()
    assert log.count("record_statistic: 'score' was given nan; not recorded") == 1, log[-3000:]
    assert "record_statistic: 'score' was given inf" in log


def test_keys_that_name_one_metric_and_a_key_per_request_keep_the_scrape_valid(
        served: tuple[Service, httpx.Client]) -> None:
    service, http = served
    _send(service, [{"a-b": 1.0}, {"a_b": 2.0}, {"a.b": 4.0}, {"lat": 1.0}, {"lat_min": 2.0}])
    _send(service, [{f"request_{i}": 1.0} for i in range(MAX_STATISTIC_KEYS + 20)])
    wait_until(lambda: _responses(http) == MAX_STATISTIC_KEYS + 25 and len(
        http.get("/status/server").json()["statistics"]) == MAX_STATISTIC_KEYS, 15,
        what="every answer and key counted")
    text = http.get("/metrics").text
    declared = Counter(line.split()[2] for line in text.splitlines()
                       if line.startswith("# TYPE wkr_stat_"))
    assert declared and max(declared.values()) == 1, declared  # Prometheus refuses a repeat
    summaries = {name for name in declared if not name.endswith(("_min", "_max"))}
    assert len(summaries) == MAX_STATISTIC_KEYS - 3  # "a.b", "a_b" and "lat_min" are not
    assert scrape(http)["wkr_stat_a_b_count"] == 1  # the first key of the three, "a-b"
    log = service.log()
    assert log.count(f"record_statistic: more than {MAX_STATISTIC_KEYS} keys") == 1, log[-3000:]
    assert "keys 'a-b' and 'a.b' share the metric name wkr_stat_a_b" in log, log[-3000:]
    assert "keys 'a-b' and 'a_b' share the metric name wkr_stat_a_b" in log
    assert "keys 'lat' and 'lat_min' share the metric name wkr_stat_lat_min" in log


def test_a_key_that_is_not_text_is_recorded_under_its_text() -> None:
    """The scrape names a metric from the key with a regular expression: a number or a tuple
    as a key made every ``/metrics`` request fail."""
    statistics = Statistics()
    statistics.record({1: 2.0, ("a", "b"): 3})  # type: ignore[dict-item]
    assert statistics.snapshot() == {
        "1": {"count": 1.0, "sum": 2.0, "min": 2.0, "max": 2.0},
        "('a', 'b')": {"count": 1.0, "sum": 3.0, "min": 3.0, "max": 3.0}}
