"""Medians over repeats, wkr-celery-to-peer ratios, the printed table and the PNG plots."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from statistics import median
from typing import Any

from .systems import LABELS

_MEDIAN_KEYS = ("p50_ms", "p90_ms", "p99_ms", "throughput", "mean_batch", "gpu_busy_mean",
                "elapsed_s", "of_physical_limit", "predict_ms")


def aggregate(reps: list[dict[str, dict[str, dict[str, Any]]]]) -> dict[str, Any]:
    """One record per workload and system: medians of the figures, sums of the failures."""
    if len(reps) == 1:
        return reps[0]
    out: dict[str, Any] = {}
    for workload, by_system in reps[-1].items():
        for key in by_system:
            records = [r[workload][key] for r in reps if key in r.get(workload, {})]
            merged = copy.deepcopy(records[-1])
            merged["ok"] = all(r["ok"] for r in records)
            merged["error"] = "; ".join(r["error"] for r in records if r["error"]) or None
            merged["repeats"] = len(records)
            for scenario in ("latency", "stream"):
                found = [r[scenario] for r in records if scenario in r]
                if not found:
                    continue
                for name in _MEDIAN_KEYS:
                    values = [s[name] for s in found if name in s]
                    if values:
                        merged[scenario][name] = median(values)
                merged[scenario]["repeat_values"] = {
                    n: [s.get(n) for s in found] for n in ("throughput", "p50_ms", "p99_ms")}
                for name in ("wrong", "missing"):
                    merged[scenario][name] = sum(s[name] for s in found)
            sweeps = [r["sweep"] for r in records if "sweep" in r]
            for i, row in enumerate(merged.get("sweep", [])):
                for name in ("throughput", "p50_ms", "p90_ms", "p99_ms"):
                    row[name] = median(s[i][name] for s in sweeps if len(s) > i)
            out.setdefault(workload, {})[key] = merged
    return out


def _get(record: dict[str, Any], scenario: str, name: str) -> float:
    value = record.get(scenario, {}).get(name)
    return float(value) if isinstance(value, (int, float)) else math.nan


def ratios(runs: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    """wkr-celery's advantage over each peer, same run: > 1 means wkr-celery is better.

    Throughput: wkr ÷ peer. Latency: peer ÷ wkr (how many times faster wkr-celery answers).
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    for workload, by_system in runs.items():
        wkr = by_system.get("wkr")
        if wkr is None:
            continue
        for key, peer in by_system.items():
            if key == "wkr":
                continue
            out.setdefault(workload, {})[key] = {
                "stream_throughput": _div(_get(wkr, "stream", "throughput"),
                                          _get(peer, "stream", "throughput")),
                "stream_p50": _div(_get(peer, "stream", "p50_ms"), _get(wkr, "stream", "p50_ms")),
                "stream_p99": _div(_get(peer, "stream", "p99_ms"), _get(wkr, "stream", "p99_ms")),
                "single_p50": _div(_get(peer, "latency", "p50_ms"),
                                   _get(wkr, "latency", "p50_ms")),
                "single_p99": _div(_get(peer, "latency", "p99_ms"),
                                   _get(wkr, "latency", "p99_ms")),
            }
    return out


def _div(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def _f(value: float, spec: str = ".2f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else format(value, spec)


def print_table(result: dict[str, Any]) -> None:
    meta = result["meta"]
    print(f"\nbatch size {meta['batch_size']}, stream {meta['requests']} requests with "
          f"{meta['inflight']} in flight, {meta['latency_requests']} one at a time, "
          f"median of {meta['repeat']} run(s); {meta['machine']['cpus']} CPUs "
          f"({meta['machine']['processor']})")
    header = (f"{'system':15s} {'1-at-a-time ms p50/p90/p99':>27s} {'inputs/s':>9s} "
              f"{'p50 ms':>7s} {'p99 ms':>7s} {'batch':>6s} {'GPU busy':>9s} "
              f"{'client MiB':>12s} {'worker MiB':>14s}  status")
    for workload, by_system in result["runs"].items():
        workers = meta["workers"][workload]
        print(f"\n== {workload}: {workers} worker process(es); stream = "
              f"{meta['inflight']} in flight ==")
        print(header)
        for key, rec in by_system.items():
            lat, st = rec.get("latency", {}), rec.get("stream", {})
            single = "/".join(_f(_get(rec, "latency", n)) for n in ("p50_ms", "p90_ms", "p99_ms"))
            busy = st.get("gpu_busy_per_worker", {})
            busy_text = ("-" if workload != "gpu-sim" or not busy
                         else "/".join(f"{v * 100:.0f}%" for v in busy.values()))
            client = st.get("rss_client_mib", [math.nan, math.nan])
            workers_rss = list(st.get("rss_workers_mib", {}).values())
            worker_text = " ".join(f"{a:.0f}>{b:.0f}" for a, b in workers_rss) or "-"
            status = "ok" if rec["ok"] else "FAILED (see results.json)"
            del lat
            rate = _f(_get(rec, "stream", "throughput"), ".0f")
            p50, p99 = _f(_get(rec, "stream", "p50_ms")), _f(_get(rec, "stream", "p99_ms"))
            print(f"{LABELS[key]:15s} {single:>27s} {rate:>9s} {p50:>7s} {p99:>7s} "
                  f"{_f(_get(rec, 'stream', 'mean_batch'), '.1f'):>6s} {busy_text:>9s} "
                  f"{_f(client[0], '.0f') + '>' + _f(client[1], '.0f'):>12s} {worker_text:>14s}"
                  f"  {status}")
        limits = {LABELS[k]: r["stream"]["of_physical_limit"] for k, r in by_system.items()
                  if "of_physical_limit" in r.get("stream", {})}
        if limits:
            limit = next(r["stream"]["physical_limit"] for r in by_system.values()
                         if "physical_limit" in r.get("stream", {}))
            print(f"share of the physical limit ({limit:.0f} inputs/s = {workers} workers x "
                  f"full batches back to back): "
                  + ", ".join(f"{k} {v * 100:.0f}%" for k, v in limits.items()))
        ratio = result["ratios"].get(workload)
        if ratio:
            print("wkr-celery advantage (x, > 1 = wkr-celery better; throughput wkr/peer, "
                  "latency peer/wkr):")
            for key, r in ratio.items():
                print(f"  vs {LABELS[key]:15s} throughput {_f(r['stream_throughput'])}x  "
                      f"stream p50 {_f(r['stream_p50'])}x  stream p99 {_f(r['stream_p99'])}x  "
                      f"1-at-a-time p50 {_f(r['single_p50'])}x  p99 {_f(r['single_p99'])}x")


def write_plots(runs: dict[str, dict[str, dict[str, Any]]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for workload, by_system in runs.items():
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for key, rec in by_system.items():
            rows = rec.get("sweep") or []
            if rows:
                ax.plot([r["inflight"] for r in rows], [r["throughput"] for r in rows],
                        marker="o", label=LABELS[key])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("requests in flight (one client)")
        ax.set_ylabel("inputs / s")
        ax.set_title(f"Throughput vs in-flight — {workload}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        path = out / f"throughput_{workload}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
        for ax, scenario, title in ((axes[0], "latency", "one request at a time"),
                                    (axes[1], "stream", "stream")):
            for key, rec in by_system.items():
                points = rec.get(scenario, {}).get("cdf_ms") or []
                if points:
                    ys = [i / max(1, len(points) - 1) for i in range(len(points))]
                    ax.plot(points, ys, label=LABELS[key])
            ax.set_xscale("log")
            ax.set_xlabel("latency (ms)")
            ax.set_ylabel("fraction of requests")
            ax.set_title(f"Latency CDF — {workload}, {title}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        path = out / f"latency_cdf_{workload}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def markdown(result: dict[str, Any]) -> str:
    """The results as markdown tables, for docs: ``python -m benchmarks.report results.json``."""
    lines = []
    for workload, by_system in result["runs"].items():
        lines += [f"**{workload}** ({result['meta']['workers'][workload]} worker process(es), "
                  f"stream {result['meta']['requests']} requests, "
                  f"{result['meta']['inflight']} in flight)", "",
                  "| system | one at a time p50 / p90 / p99 ms | stream inputs/s | stream p50 / "
                  "p99 ms | mean batch | simulated GPU busy | RSS client / worker MiB "
                  "(start → end) | status |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for key, rec in by_system.items():
            st = rec.get("stream", {})
            single = " / ".join(_f(_get(rec, "latency", n), ".1f")
                                for n in ("p50_ms", "p90_ms", "p99_ms"))
            busy = st.get("gpu_busy_per_worker", {})
            busy_text = ("–" if workload != "gpu-sim" or not busy
                         else " / ".join(f"{v * 100:.0f}%" for v in busy.values()))
            client = st.get("rss_client_mib", [math.nan, math.nan])
            workers = ", ".join(f"{a:.0f} → {b:.0f}" for a, b in
                                st.get("rss_workers_mib", {}).values())
            lines.append(
                f"| {LABELS[key]} | {single} | {_f(_get(rec, 'stream', 'throughput'), ',.0f')} | "
                f"{_f(_get(rec, 'stream', 'p50_ms'), '.1f')} / "
                f"{_f(_get(rec, 'stream', 'p99_ms'), '.1f')} | "
                f"{_f(_get(rec, 'stream', 'mean_batch'), '.1f')} | {busy_text} | "
                f"{client[0]:.0f} → {client[1]:.0f} / {workers} | "
                f"{'ok' if rec['ok'] else 'FAILED'} |")
        ratio = result["ratios"].get(workload)
        if ratio:
            lines += ["", "wkr-celery's advantage, same run (× > 1 means wkr-celery is better; "
                      "throughput wkr ÷ peer, latency peer ÷ wkr):", "",
                      "| vs | stream inputs/s | stream p50 | stream p99 | one at a time p50 | "
                      "one at a time p99 |", "| --- | --- | --- | --- | --- | --- |"]
            for key, r in ratio.items():
                lines.append(f"| {LABELS[key]} | " + " | ".join(
                    f"{_f(r[n], '.1f')}×" for n in ("stream_throughput", "stream_p50",
                                                   "stream_p99", "single_p50", "single_p99"))
                    + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys

    from .summary import markdown_clients, markdown_http
    from .targets import markdown_targets

    loaded = json.loads(Path(sys.argv[1]).read_text())
    print(markdown(loaded))
    for title, lines in (("Many clients", markdown_clients(loaded.get("clients", {}))),
                         ("HTTP (wrk)", markdown_http(loaded.get("http", {}))),
                         ("Issue 14 targets", markdown_targets(loaded.get("targets", [])))):
        print(f"**{title}**\n\n" + "\n".join(lines) + "\n")
