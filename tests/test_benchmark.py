"""The benchmark harness runs end to end: every system answers, every answer is checked.

Speeds are never asserted here: the box running the tests is shared and slow. What is checked is
that the harness works: exit code, a figure for every system and scenario, no wrong or missing
answer, the plots, and no process left running.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from .helpers import ROOT

SYSTEMS = ("wkr", "celery", "batches", "naive")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str],
                                                                 Path]:
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--workloads", "tiny",
         "--systems", ",".join(SYSTEMS), "--requests", "200", "--latency-requests", "30",
         "--inflight", "64", "--sweep", "1,16", "--sweep-seconds", "0.3", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=110)
    return proc, out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_quick_benchmark_exits_zero_and_prints_the_table(quick_run: Any) -> None:
    proc, _ = quick_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ray not installed, skipped" in proc.stdout or "ray is installed" in proc.stdout
    assert "wkr-celery advantage" in proc.stdout
    for label in ("wkr-celery", "celery-batches", "naive-redis"):
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
    assert sorted(ratios) == ["batches", "celery", "naive"]
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
