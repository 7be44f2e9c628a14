"""Medians and tables for the many-clients and HTTP scenarios."""

from __future__ import annotations

import math
from statistics import median
from typing import Any

from .report import _f

_SUMMED = ("wrong", "missing", "non_2xx", "socket_errors")


def median_record(records: list[Any]) -> Any:
    """One record from several runs of the same scenario: the median of every number, ``ok``
    only if every run was, counts of failures summed, errors joined, other values from the
    last run."""
    last = records[-1]
    if isinstance(last, bool):
        return all(bool(r) for r in records)
    if isinstance(last, (int, float)) and all(isinstance(r, (int, float)) for r in records):
        # the same in every run (a setting such as ``workers``) stays as it is: the median of
        # an even count is a float, which the tables' integer formats refuse
        return last if all(r == last for r in records) else median(records)
    if isinstance(last, dict):
        out = {}
        for key in last:
            values = [r[key] for r in records if isinstance(r, dict) and key in r]
            if key in _SUMMED and all(isinstance(v, (int, float)) for v in values):
                out[key] = sum(values)
            elif key == "error":
                out[key] = "; ".join(str(v) for v in values if v) or None
            else:
                out[key] = median_record(values)
        return out
    return last


def merge_repeats(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """``{name: record}`` per repeat → ``{name: median record}``, with ``repeats`` counted."""
    out: dict[str, Any] = {}
    for name in reps[-1] if reps else {}:
        records = [r[name] for r in reps if name in r]
        merged = median_record(records)
        merged["repeats"] = len(records)
        out[name] = merged
    return out


def print_clients(records: dict[str, Any]) -> None:
    if not records:
        return
    first = next(iter(records.values()))
    print(f"\n== many clients: tiny, {first['clients']} client processes x {first['inflight']} "
          "in flight ==")
    print(f"{'system':17s} {'workers':>7s} {'capacity/s':>10s} {'batch':>6s} {'p50 ms':>7s} "
          f"{'CPU us/request: client':>23s} {'worker':>7s} {'redis':>6s} {'superv.':>7s}  status")
    for rec in records.values():
        cpu = rec.get("cpu_us_per_request", {})
        print(f"{rec['label']:17s} {rec['workers']:>7d} {_f(rec.get('capacity', math.nan), '.0f'):>10s} "
              f"{_f(rec.get('mean_batch', math.nan), '.1f'):>6s} "
              f"{_f(rec.get('p50_ms', math.nan), '.1f'):>7s} "
              f"{_f(cpu.get('client', math.nan), '.1f'):>23s} "
              f"{_f(cpu.get('worker', math.nan), '.1f'):>7s} "
              f"{_f(cpu.get('redis', math.nan), '.1f'):>6s} "
              f"{_f(cpu.get('supervisor', math.nan), '.1f'):>7s}  "
              f"{'ok' if rec['ok'] else 'FAILED: ' + str(rec['error'])[:200]}")


def print_http(records: dict[str, Any], note: str) -> None:
    if note:
        print(f"\n== HTTP: {note} ==")
    for rec in records.values():
        print(f"\n== HTTP (wrk): {rec['http_workers']} API process(es) ==")
        print(f"{'endpoint':10s} {'connections':>11s} {'req/s':>8s} {'p50 ms':>7s} "
              f"{'p99 ms':>7s}  status")
        for name, point in rec.get("points", {}).items():
            endpoint, connections = name.split("@")
            print(f"{endpoint:10s} {connections:>11s} {_f(point['rps'], '.0f'):>8s} "
                  f"{_f(point['p50_ms']):>7s} {_f(point['p99_ms']):>7s}  "
                  f"{'ok' if point['ok'] else 'FAILED'}")
        if rec.get("error"):
            print(f"FAILED: {str(rec['error'])[:500]}")


def markdown_clients(records: dict[str, Any]) -> list[str]:
    lines = ["| system | worker processes | capacity (inputs/s at the workers) | mean batch | "
             "client p50 ms | CPU µs per request: clients | workers | Redis | supervisor |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for rec in records.values():
        cpu = rec.get("cpu_us_per_request", {})
        lines.append(f"| {rec['label']} | {rec['workers']} | {_f(rec.get('capacity', math.nan), ',.0f')}"
                     f" | {_f(rec.get('mean_batch', math.nan), '.1f')} | "
                     f"{_f(rec.get('p50_ms', math.nan), '.1f')} | "
                     + " | ".join(_f(cpu.get(k, math.nan), '.0f')
                                  for k in ("client", "worker", "redis")) + " | "
                     + (_f(cpu["supervisor"], ".0f") if "supervisor" in cpu else "–") + " |")
    return lines


def markdown_http(records: dict[str, Any]) -> list[str]:
    lines = ["| API processes | endpoint | connections | req/s | p50 ms | p99 ms |",
             "| --- | --- | --- | --- | --- | --- |"]
    for rec in records.values():
        for name, point in rec.get("points", {}).items():
            endpoint, connections = name.split("@")
            lines.append(f"| {rec['http_workers']} | {endpoint} | {connections} | "
                         f"{_f(point['rps'], ',.0f')} | {_f(point['p50_ms'])} | "
                         f"{_f(point['p99_ms'])} |")
    return lines
