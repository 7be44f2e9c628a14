"""The benchmark harness runs end to end: every system answers, every answer is checked.

Speeds are never asserted here: the box running the tests is shared and slow. What is checked is
that the harness works: exit code, a figure for every system and scenario, no wrong or missing
answer, the plots, and no process left running.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from .helpers import ROOT

SYSTEMS = ("wkr", "celery", "batches", "naive", "coalesce")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str],
                                                                 Path]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(  # typed from the checkout, as docs/performance.md has it
        [sys.executable, "-m", "benchmarks", "--quick", "--workloads", "tiny",
         "--systems", ",".join(SYSTEMS), "--requests", "200", "--latency-requests", "30",
         "--inflight", "64", "--sweep", "1,16", "--sweep-seconds", "0.3", "--out", str(out),
         "--scenarios", "systems"],
        cwd=ROOT, capture_output=True, text=True, timeout=110)
    return proc, out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_quick_benchmark_exits_zero_and_prints_the_table(quick_run: Any) -> None:
    proc, _ = quick_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ray not installed, skipped" in proc.stdout or "ray is installed" in proc.stdout
    assert "wkr-celery advantage" in proc.stdout
    for label in ("wkr-celery", "celery-batches", "naive-redis", "coalescing-redis"):
        assert label in proc.stdout


def test_every_system_has_every_figure_and_no_wrong_answer(quick_run: Any) -> None:
    _, out = quick_run
    result = json.loads((out / "results.json").read_text())
    runs = result["runs"]["tiny"]
    assert sorted(runs) == sorted(SYSTEMS)
    for key, record in runs.items():
        assert record["ok"], (key, record["error"])
        latency, stream = record["latency"], record["stream"]
        assert latency["answered"] == 30 and stream["answered"] == 200, key
        for scenario in (latency, stream, *record["sweep"]):
            assert scenario["wrong"] == 0 and scenario["missing"] == 0, (key, scenario)
            assert all(_finite(scenario[n]) for n in ("p50_ms", "p90_ms", "p99_ms")), key
        assert _finite(stream["throughput"]) and stream["throughput"] > 0, key
        assert _finite(stream["mean_batch"]) and stream["mean_batch"] >= 1, key
        assert all(_finite(v) for v in stream["rss_client_mib"]), key
        assert stream["rss_workers_mib"], key
        assert [row["inflight"] for row in record["sweep"]] == [1, 16], key
        assert all(_finite(row["throughput"]) for row in record["sweep"]), key


def test_ratios_compare_wkr_celery_with_each_peer(quick_run: Any) -> None:
    _, out = quick_run
    ratios = json.loads((out / "results.json").read_text())["ratios"]["tiny"]
    assert sorted(ratios) == ["batches", "celery", "coalesce", "naive"]
    for peer, figures in ratios.items():
        assert all(_finite(v) and v > 0 for v in figures.values()), (peer, figures)


def test_plots_are_written_as_png(quick_run: Any) -> None:
    _, out = quick_run
    for name in ("throughput_tiny.png", "latency_cdf_tiny.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_no_worker_process_outlives_the_run(quick_run: Any) -> None:
    _, out = quick_run
    runs = json.loads((out / "results.json").read_text())["runs"]["tiny"]
    pids = [int(p) for r in runs.values() for p in r["stream"]["rss_workers_mib"]]
    assert pids
    alive = [p for p in pids if psutil.pid_exists(p)
             and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive


def test_the_answer_check_counts_wrong_misshapen_and_nan_answers() -> None:
    from benchmarks.scenarios import Checker, Pool

    pool = Pool.make(size=16)
    checker = Checker(pool.expected, chunk=4)
    for index in range(10):
        checker.add(pool.expected[index], index)
    checker.add(pool.expected[3] + 1e-3, 3)
    checker.add(pool.expected[5][:64], 5)
    checker.add(pool.expected[6] * float("nan"), 6)
    assert checker.flush() == 3


def _bench(out: Path, *argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m benchmarks --quick`` typed from the checkout, as docs/performance.md has it."""
    return subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out),
                           *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def clients_and_http_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[
        subprocess.CompletedProcess[str], dict[str, Any]]:
    """The many-clients and HTTP scenarios with tiny counts: 2 clients x 100 requests, wrk
    for 1 s per point."""
    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed: apt-get install -y wrk (.ci/run does)")
    out = tmp_path_factory.mktemp("bench-clients-http")
    proc = _bench(out, "--scenarios", "clients,http", "--systems", "wkr", "--clients", "2",
                  "--clients-workers", "1", "--clients-requests", "100", "--inflight", "16",
                  "--http-seconds", "1", "--http-connections", "4,1", timeout=150)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, json.loads((out / "results.json").read_text())


def test_many_clients_report_capacity_and_cpu_per_request_per_process_kind(
        clients_and_http_run: Any) -> None:
    proc, result = clients_and_http_run
    record = result["clients"]["wkr/1"]
    assert record["ok"], record["error"]
    assert record["answered"] == 200 and record["wrong"] == record["missing"] == 0
    assert _finite(record["capacity"]) and record["capacity"] > 0
    cpu = record["cpu_us_per_request"]
    assert sorted(cpu) == ["client", "redis", "supervisor", "worker"]
    assert all(_finite(v) and v >= 0 for v in cpu.values()), cpu
    assert cpu["client"] + cpu["worker"] > 0, cpu  # 200 requests cost the processes something
    assert "many clients: tiny, 2 client processes x 16 in flight" in proc.stdout


def test_http_scenario_measures_every_endpoint_with_wrk(clients_and_http_run: Any) -> None:
    proc, result = clients_and_http_run
    one = result["http"]["1"]
    assert one["ok"], one["error"]
    assert sorted(one["points"]) == sorted(f"{e}@{c}" for e in ("healthz", "msgpack", "json")
                                           for c in (4, 1))
    for name, point in one["points"].items():
        assert point["non_2xx"] == 0 and point["requests"] > 0, (name, point)
        assert _finite(point["rps"]) and _finite(point["p50_ms"]), (name, point)
    if result["http_note"]:  # no -http_workers on this service: said, and only one measured
        assert "-http_workers" in result["http_note"] and sorted(result["http"]) == ["1"]
    else:
        assert result["http"]["2"]["ok"], result["http"]["2"]["error"]


def test_every_issue_14_target_is_printed_as_pass_miss_or_not_measured(
        clients_and_http_run: Any) -> None:
    proc, result = clients_and_http_run
    by_name = {row["target"]: row for row in result["targets"]}
    assert {row["status"] for row in result["targets"]} <= {"PASS", "MISS", "not measured"}
    http_ratio = by_name["HTTP, 64 connections: /encode JSON / msgpack req/s"]
    assert http_ratio["status"] == "not measured"  # this run had no 64-connection point
    cpu = by_name["2 clients x 16, 1 worker(s): worker CPU us per request"]
    assert cpu["status"] in ("PASS", "MISS") and _finite(cpu["value"])
    assert by_name["tiny, 256 in flight: inputs/s wkr-celery / coalescing loop"][
        "status"] == "not measured"
    for row in result["targets"]:
        assert f"{row['status']:12s} {row['target']}:" in proc.stdout


def test_a_missing_wrk_skips_only_the_http_scenario_and_says_so(tmp_path: Path) -> None:
    proc = _bench(tmp_path, "--scenarios", "systems,http", "--systems", "naive",
                  "--workloads", "tiny", "--requests", "50", "--latency-requests", "5",
                  "--sweep", "1", "--sweep-seconds", "0.2", "--wrk", str(tmp_path / "no-wrk"),
                  timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "wrk not found" in proc.stdout and "apt-get install -y wrk" in proc.stdout
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["http"] == {} and result["runs"]["tiny"]["naive"]["ok"]


def test_the_lane_benchmark_prints_a_cost_per_call_for_each_way() -> None:
    """``python -m benchmarks.lane`` as docs/performance.md has it typed, from the checkout."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.lane", "--calls", "200",
                           "--rounds", "1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split("  ")[1].strip() for line in lines] == [
        "Redis.lpush", "send_command + read_response", "Lane.execute"]
    for line in lines:
        figures = [float(word) for word in line.split() if word.replace(".", "", 1).isdigit()]
        assert len(figures) == 3 and all(f > 0 for f in figures[1:]), line  # round, CPU, wall


def test_paired_runs_print_each_figure_for_both_versions_and_no_wrong_answer() -> None:
    """``python -m benchmarks.pairs BASE NEW`` as docs/performance.md has it typed, from the
    checkout: both versions come from git (here the same one), one short pair."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.pairs", "HEAD", "HEAD",
                           "--pairs", "1", "--requests", "500"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.strip()}
    for figure in ("p50_ms", "p99_ms", "stream", "cpu_client_us", "cpu_redis_us",
                   "cpu_worker0_us"):
        words = lines[figure]
        assert words[1] == "A" and words[3] == "B", words
        if figure in ("p50_ms", "p99_ms", "stream"):  # CPU figures may read 0 in so short a run
            assert float(words[2]) > 0 and float(words[4]) > 0, words
    assert "wrong or missing answers: [0] [0]" in proc.stdout


def test_medians_of_an_even_number_of_runs_keep_each_setting_as_it_was() -> None:
    """``--repeat 2`` with the clients scenario ended in a traceback: the median of two runs'
    ``workers`` (1 and 1) was 1.0, which the table's integer format refuses."""
    from benchmarks.summary import median_record

    merged = median_record([{"workers": 1, "capacity": 100.0, "wrong": 1},
                            {"workers": 1, "capacity": 300.0, "wrong": 0}])
    assert merged == {"workers": 1, "capacity": 200.0, "wrong": 1}
    assert type(merged["workers"]) is int
