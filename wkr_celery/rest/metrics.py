"""Prometheus metrics: the API's own counters, plus the service's figures read at scrape time.

Workers do no metrics I/O on the request path: each heartbeat carries cumulative counters
(requests, failures, batches, predict seconds, batch sizes) and every ``record_statistic`` key
as count/sum/min/max. :class:`ServiceCollector` turns the live workers' heartbeats into metric
families on each scrape, so the figures are as fresh as the last heartbeat (about a second).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .extras import MULTIPROCESS_DIR

log = logging.getLogger("wkr_celery.rest")

__all__ = ["ApiMetrics", "ServiceCollector", "service_snapshot", "outcome_of"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_OUTCOMES = {200: "ok", 202: "ok", 400: "bad_input", 401: "unauthorized", 404: "not_found",
             409: "conflict", 413: "too_large", 503: "unavailable", 504: "timeout"}


def outcome_of(status: int) -> str:
    return _OUTCOMES.get(status, "failed" if status >= 500 else "other")


class ApiMetrics:
    """Metrics this API process measures itself, in a registry of its own.

    With ``-http_workers N`` the N processes share one port, and a scrape reaches whichever the
    kernel hands it: each process then counts in files of ``PROMETHEUS_MULTIPROC_DIR`` (set by
    the parent that starts them, :func:`.extras.rest_processes`; prometheus_client reads it at
    import), and :attr:`exposed` sums every process's files, a dead one's too, so these counters
    never go down when one restarts."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("wkr_http_requests", "HTTP requests by route and outcome",
                                ["route", "outcome"], registry=self.registry)
        self.latency = Histogram("wkr_request_latency_seconds",
                                 "end-to-end latency of POST /encode inputs, as the API sees it",
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.queue_wait = Histogram(
            "wkr_queue_wait_seconds", "end-to-end latency of POST /encode inputs minus the mean "
            "predict time of a batch at that moment: time spent queued and buffered (estimate)",
            buckets=_LATENCY_BUCKETS, registry=self.registry)
        service = ServiceCollector(snapshot)
        self.registry.register(service)
        #: What ``/metrics`` shows: this process's registry, or every API process's counts.
        self.exposed = self.registry
        if os.environ.get(MULTIPROCESS_DIR):
            self.exposed = CollectorRegistry()
            MultiProcessCollector(self.exposed)
            self.exposed.register(service)


def service_snapshot(live: dict[str, dict[str, Any]], queue_length: int,
                     totals: Mapping[str, float], scaling: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """What the dashboard and the collector both show: the service's cumulative figures from
    its totals hash (never down when a worker dies; see ``server.status.Reported``), and the
    live workers' own figures beside them."""
    buffered = sum(int(beat.get("buffered", 0)) for beat in live.values())
    summed = {"responses": int(totals.get("requests", 0)), "failed": int(totals.get("failed", 0)),
              "batches": int(totals.get("batches", 0)),
              "predict_seconds": float(totals.get("predict_seconds", 0.0)), "buffered": buffered,
              "refused": int(totals.get("refused", 0))}
    sizes: dict[int, int] = {}
    stats: dict[str, dict[str, float]] = {}
    for field, value in totals.items():
        kind, _, rest = field.partition(":")
        if kind == "batch_size" and rest.isdigit():
            sizes[int(rest)] = int(value)
        elif kind == "stat" and rest.rpartition(":")[2] in ("count", "sum"):
            key, _, part = rest.rpartition(":")
            stats.setdefault(key, {"count": 0.0, "sum": 0.0})[part] = value
    for beat in live.values():  # smallest and largest: of the workers alive now
        for key, s in (beat.get("statistics") or {}).items():
            slot = stats.setdefault(str(key), {"count": 0.0, "sum": 0.0})
            slot["min"] = min(slot.get("min", s["min"]), s["min"])
            slot["max"] = max(slot.get("max", s["max"]), s["max"])
    # Every request is answered, queued or buffered: arrivals = responses + what still waits.
    summed["requests"] = summed["responses"] + queue_length + buffered
    return {"totals": summed, "batch_sizes": dict(sorted(sizes.items())), "statistics": stats,
            "queue_length": queue_length, "workers": live, "scaling": scaling or {}}


def _metric_name(key: str) -> str:
    name = re.sub(r"[^a-zA-Z0-9_]", "_", key)
    return "wkr_stat_" + (name if not name[:1].isdigit() else "_" + name)


class ServiceCollector(Collector):
    """Builds the service's metric families from heartbeats on each scrape."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot
        self._told: set[str] = set()  # keys whose metric name another key took, said once

    def describe(self) -> list[Metric]:
        return []  # families depend on the workers alive at scrape time

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        live = snap["workers"]
        yield GaugeMetricFamily("wkr_workers_alive", "workers with a fresh heartbeat",
                                value=len(live))
        yield GaugeMetricFamily("wkr_queue_depth", "requests waiting in the broker lists",
                                value=snap["queue_length"])
        scaling = snap["scaling"]
        if scaling:  # -num_worker_max: what the supervisor sees and decided
            yield GaugeMetricFamily("wkr_workers_running", "worker processes the supervisor runs",
                                    value=scaling.get("workers", 0))
            yield GaugeMetricFamily("wkr_workers_max", "most worker processes (-num_worker_max)",
                                    value=scaling.get("ceiling", 0))
            # Not wkr_queue_wait_seconds: that is the API's own histogram (ApiMetrics), and
            # one name declared twice with two types breaks Prometheus's parsers.
            yield GaugeMetricFamily("wkr_scaling_queue_wait_seconds",
                                    "the supervisor's estimated queue wait: queued / served rate",
                                    value=scaling.get("wait_s", 0.0))
            events = CounterMetricFamily("wkr_scale_events", "workers added and retired",
                                         labels=["direction"])
            events.add_metric(["up"], scaling.get("grown", 0))
            events.add_metric(["down"], scaling.get("retired", 0))
            yield events
        per_worker = (
            ("wkr_worker_requests", "requests answered by this worker process", "requests"),
            ("wkr_worker_failed", "requests this worker answered with an error", "failed"),
            ("wkr_worker_batches", "batches this worker passed to predict", "batches"),
            ("wkr_worker_predict_seconds", "seconds this worker spent in predict",
             "predict_seconds"),
        )
        for name, doc, field in per_worker:
            family = CounterMetricFamily(name, doc, labels=["worker", "device"])
            for wid, beat in sorted(live.items()):
                family.add_metric([wid, str(beat.get("device_id", ""))],
                                  float(beat.get(field, 0)))
            yield family
        buffered = GaugeMetricFamily("wkr_worker_buffered", "requests fetched, not yet predicted",
                                     labels=["worker"])
        for wid, beat in sorted(live.items()):
            buffered.add_metric([wid], float(beat.get("buffered", 0)))
        yield buffered
        yield _batch_histogram(snap["batch_sizes"])
        totals = snap["totals"]
        predict = SummaryMetricFamily("wkr_predict_seconds", "time in predict per batch")
        predict.add_metric([], count_value=totals["batches"], sum_value=totals["predict_seconds"])
        yield predict
        yield CounterMetricFamily("wkr_requests_refused", "requests refused at the queue's cap "
                                  "(-max_queue, ServiceOverloaded), from any client or API",
                                  value=totals["refused"])
        yield from self._statistics(snap["statistics"])

    def _statistics(self, statistics: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
        """A summary per ``record_statistic`` key, with the live workers' smallest and
        largest; a key whose metric name an earlier key took is left out (and said once)."""
        taken: dict[str, str] = {}  # every name a key's metrics use (x, x_count, x_min…)
        for key, s in sorted(statistics.items()):
            name = _metric_name(key)
            names = [name + suffix for suffix in ("", "_count", "_sum", "_min", "_max")]
            clash = next((n for n in names if n in taken), None)
            if clash is not None:  # one name declared twice: Prometheus refuses the scrape
                self._tell(key, taken[clash], clash)
                continue
            taken.update(dict.fromkeys(names, key))
            summary = SummaryMetricFamily(name, f"record_statistic key {key!r}")
            summary.add_metric([], count_value=s["count"], sum_value=s["sum"])
            yield summary
            if "min" in s:  # of the workers alive now
                yield GaugeMetricFamily(name + "_min", f"smallest {key!r} recorded by a live "
                                        "worker", value=s["min"])
                yield GaugeMetricFamily(name + "_max", f"largest {key!r} recorded by a live "
                                        "worker", value=s["max"])

    def _tell(self, key: str, first: str, name: str) -> None:
        if key not in self._told:
            self._told.add(key)
            log.warning("record_statistic keys %r and %r share the metric name %s; /metrics "
                        "exports %r only (the status page and the dashboard show both)",
                        first, key, name, first)


def _batch_histogram(sizes: dict[int, int]) -> Metric:
    top = max(sizes, default=1)
    bounds = [1]
    while bounds[-1] < top:
        bounds.append(bounds[-1] * 2)
    buckets = []
    for bound in bounds:
        buckets.append((str(bound), float(sum(c for s, c in sizes.items() if s <= bound))))
    total = float(sum(sizes.values()))
    buckets.append(("+Inf", total))
    return HistogramMetricFamily("wkr_batch_size", "batch sizes passed to predict",
                                 buckets=buckets,
                                 sum_value=float(sum(s * c for s, c in sizes.items())))
