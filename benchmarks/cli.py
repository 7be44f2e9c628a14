"""``python -m benchmarks``: every system, every workload, every scenario, in one run.

Three groups of scenarios (``--scenarios``): ``systems`` (each system alone: one at a time, a
stream, a sweep), ``clients`` (several client processes against one tiny service: capacity and CPU
per request per process) and ``http`` (the REST API under wrk). Issue 14's targets are printed
last, each as PASS or MISS."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .model import WORKLOADS, physical_limit, prepare, read_stats
from .report import aggregate, print_table, ratios, write_plots
from .scenarios import Pool, Run, one_at_a_time, stream, sweep
from .summary import merge_repeats, print_clients, print_http
from .systems import CLASSES, LABELS, SYSTEMS
from .targets import evaluate, print_targets

WORKERS = {"tiny": 1, "gpu-sim": 2, "torch": 2}
SCENARIOS = ("systems", "clients", "http")
CLIENT_SYSTEMS = ("wkr", "coalesce")  # the many-clients scenario: wkr-celery and the limit


def _ints(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma list of integers >= 1")
    return values


def _csv(choices: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{bad or text!r}: choose from {','.join(choices)}")
        return items
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="fewer requests and sweep points (under 2 minutes on 2 cores)")
    p.add_argument("--systems", type=_csv(SYSTEMS), default=list(SYSTEMS),
                   help="comma list of " + ",".join(SYSTEMS))
    p.add_argument("--workloads", type=_csv(WORKLOADS), default=None,
                   help="comma list of " + ",".join(WORKLOADS) + " (default: all; torch only "
                   "with the frameworks extra installed)")
    p.add_argument("--requests", type=int, default=None,
                   help="requests in the stream (default 20000, quick 1000)")
    p.add_argument("--latency-requests", type=int, default=None,
                   help="requests one at a time (default 1000, quick 100; at most --requests)")
    p.add_argument("--inflight", type=int, default=256, help="requests in flight in the stream")
    p.add_argument("--sweep", default=None,
                   help="in-flight points, comma list (default 1,8,32,128,256; quick 1,32,256)")
    p.add_argument("--sweep-seconds", type=float, default=None,
                   help="seconds per sweep point (default 2, quick 0.7)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeat", type=int, default=1, help="runs per system; figures are medians")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for one result")
    p.add_argument("--out", type=Path, default=Path("bench-results"),
                   help="directory for results.json and the PNG plots")
    p.add_argument("--keep-logs", action="store_true", help="keep worker logs (in --out/logs)")
    p.add_argument("--scenarios", type=_csv(SCENARIOS), default=list(SCENARIOS),
                   help="comma list of " + ",".join(SCENARIOS) + " (default: all)")
    p.add_argument("--clients", type=int, default=4,
                   help="client processes in the many-clients scenario (default 4; each with "
                   "--inflight requests out)")
    p.add_argument("--clients-workers", type=_ints, default=[1, 2],
                   help="worker processes in the many-clients scenario, comma list (default 1,2)")
    p.add_argument("--clients-requests", type=int, default=None,
                   help="requests per client process there (default 10000, quick 1000)")
    p.add_argument("--http-seconds", type=float, default=None,
                   help="seconds of wrk per HTTP point (default 5, quick 2)")
    p.add_argument("--http-connections", type=_ints, default=[64, 1],
                   help="wrk connections, comma list (default 64,1)")
    p.add_argument("--http-workers", type=_ints, default=[2],
                   help="also run with -http_workers N for each N, where the service has the "
                   "flag (default 2)")
    p.add_argument("--wrk", default="wrk", help="the wrk binary (default: wrk on PATH)")
    p.add_argument("--http-service-workers", type=int, default=1,
                   help="worker processes behind the HTTP API (default 1)")
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    quick = args.quick
    if args.workloads is None:
        args.workloads = list(WORKLOADS)
        if importlib.util.find_spec("torch") is None:
            args.workloads.remove("torch")
            print("torch not installed (pip install '.[frameworks]'), torch workload skipped",
                  flush=True)
    args.requests = args.requests or (1000 if quick else 20000)
    args.latency_requests = min(args.latency_requests or (100 if quick else 1000), args.requests)
    args.warmup = min(100 if quick else 300, args.requests)
    args.sweep = [int(v) for v in (args.sweep or ("1,32,256" if quick else "1,8,32,128,256"))
                  .split(",")]
    args.sweep_seconds = args.sweep_seconds or (0.7 if quick else 2.0)
    args.clients_requests = args.clients_requests or (1000 if quick else 10000)
    args.http_seconds = args.http_seconds or (2.0 if quick else 5.0)
    if min(args.requests, args.repeat, args.inflight, args.clients, args.clients_requests,
           args.http_service_workers) < 1:
        raise SystemExit("--requests, --repeat, --inflight, --clients, --clients-requests and "
                         "--http-service-workers must be at least 1")
    return args


def run_one(key: str, workload: str, args: argparse.Namespace, pool: Pool,
            run_dir: Path) -> dict[str, Any]:
    """Fresh Redis, fresh workers: warm up, then the three scenarios. Everything is stopped."""
    from wkr_celery.redis_embedded import EmbeddedRedis

    from .systems import free_port

    record: dict[str, Any] = {"system": key, "label": LABELS[key], "workload": workload,
                              "workers": WORKERS[workload], "ok": False, "error": None}
    redis_server = EmbeddedRedis(free_port()).start()
    system = CLASSES[key](workload, WORKERS[workload], args.batch_size, redis_server.url, run_dir)
    client = None
    started = time.monotonic()
    try:
        system.start(timeout=90)
        client = system.client()
        run = Run(client, pool, args.timeout)
        run.drive(min(args.inflight, 64), count=args.warmup)  # warm every path
        before = read_stats(system.stats_dir)
        record["latency"] = one_at_a_time(run, args.latency_requests, warmup=20)
        record["latency"]["predict_ms"] = predict_ms(before, read_stats(system.stats_dir))
        record["stream"] = stream(run, args.requests, args.inflight, system.worker_pids(),
                                  system.stats_dir)
        if workload == "gpu-sim":
            limit = physical_limit(WORKERS[workload], args.batch_size)
            record["stream"]["physical_limit"] = limit
            record["stream"]["of_physical_limit"] = record["stream"]["throughput"] / limit
        record["sweep"] = sweep(run, args.sweep, args.sweep_seconds)
        bad = [record["latency"], record["stream"], *record["sweep"]]
        record["ok"] = all(s["wrong"] == 0 and s["missing"] == 0 for s in bad)
        if not record["ok"]:
            record["error"] = "; ".join(e for s in bad for e in s["errors"])[:1000]
    except Exception as exc:  # one system failing must not stop the others
        record["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if client is not None:
            try:
                client.close()
            except Exception as exc:
                record.setdefault("close_error", str(exc))
        system.stop()
        redis_server.stop()
    record["seconds"] = round(time.monotonic() - started, 1)
    return record


def _said(record: dict[str, Any]) -> None:
    print("ok" if record["ok"] else f"FAILED: {record['error']}", f"({record['seconds']} s)",
          flush=True)


def run_clients(args: argparse.Namespace, work: Path, tag: str) -> dict[str, Any]:
    """The many-clients scenario for wkr-celery and the coalescing loop, if selected."""
    from . import clients

    records: dict[str, Any] = {}
    if "clients" not in args.scenarios:
        return records
    for key in (k for k in CLIENT_SYSTEMS if k in args.systems):
        for workers in args.clients_workers:
            run_dir = work / f"{key}-{workers}"
            run_dir.mkdir(parents=True)
            print(f"{tag} clients {LABELS[key]:15s} {args.clients} x {args.inflight}, "
                  f"{workers} worker(s) ...", end=" ", flush=True)
            records[f"{key}/{workers}"] = record = clients.measure(key, workers, args, run_dir)
            _said(record)
    return records


def http_plan(args: argparse.Namespace) -> tuple[list[int], str]:
    """API process counts to run (1, then each --http-workers N the service accepts) and a
    note on what is left out and why."""
    from . import rest

    if "http" not in args.scenarios:
        return [], ""
    if rest.wrk_binary(args.wrk) is None:
        message = (f"wrk not found ({args.wrk!r}): HTTP scenario skipped; install it "
                   "(Debian/Ubuntu: apt-get install -y wrk) to measure the REST API. Every other "
                   "scenario runs")
        print(message, flush=True)
        return [], message
    extra = [n for n in args.http_workers if n > 1]
    if extra and not rest.http_workers_supported():
        message = (f"this service has no {rest.HTTP_WORKERS_FLAG} flag: only one API process "
                   "measured")
        print(message, flush=True)
        return [1], message
    return [1, *extra], ""


def run_http(args: argparse.Namespace, plan: list[int], work: Path, tag: str) -> dict[str, Any]:
    from . import rest

    records: dict[str, Any] = {}
    for n in plan:
        run_dir = work / f"api-{n}"
        run_dir.mkdir(parents=True)
        print(f"{tag} http    {n} API process(es), wrk "
              f"{','.join(map(str, args.http_connections))} connection(s) ...", end=" ",
              flush=True)
        records[str(n)] = record = rest.measure(n, args, run_dir)
        _said(record)
    return records


Counts = dict[int, tuple[float, float, float, float]]


def predict_ms(before: Counts, after: Counts) -> float:
    """Mean simulated-kernel time per batch as the workers measured it (what ``time.sleep``
    really took), between two reads of their counters; NaN where nothing slept (tiny)."""
    zero = (0.0, 0.0, 0.0, 0.0)
    batches = sum(after[p][1] - before.get(p, zero)[1] for p in after)
    slept = sum(after[p][3] - before.get(p, zero)[3] for p in after)
    return slept / batches * 1000 if batches and slept else float("nan")


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"host": socket.gethostname(), "python": platform.python_version(),
                            "platform": platform.platform(), "cpus": os.cpu_count(),
                            "processor": platform.processor() or platform.machine()}
    try:
        info["loadavg_at_start"] = [round(v, 2) for v in os.getloadavg()]
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["processor"] = names[0]
    except OSError:
        pass
    return info


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # so every finally block stops its processes


def main(argv: list[str] | None = None) -> int:
    args = resolve(build_parser().parse_args(argv))
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    args.out.mkdir(parents=True, exist_ok=True)
    if importlib.util.find_spec("ray") is None:
        print("ray not installed, skipped", flush=True)
    else:
        print("ray is installed, but this harness has no Ray Serve adapter yet; skipped",
              flush=True)
    http_workers, http_note = http_plan(args)
    work = Path(tempfile.mkdtemp(prefix="wkr-bench-"))
    began = time.time()
    reps: list[dict[str, dict[str, dict[str, Any]]]] = []
    client_reps: list[dict[str, Any]] = []
    http_reps: list[dict[str, Any]] = []
    try:
        prepare(args.workloads, work)
        pools = {workload: Pool.make(workload=workload) for workload in args.workloads}
        for rep in range(args.repeat):
            tag = f"[{rep + 1}/{args.repeat}]"
            runs: dict[str, dict[str, dict[str, Any]]] = {}
            for workload in args.workloads if "systems" in args.scenarios else ():
                for key in args.systems:
                    run_dir = work / f"{rep}-{workload}-{key}"
                    run_dir.mkdir(parents=True)
                    print(f"{tag} {workload:7s} {LABELS[key]:15s} ...", end=" ", flush=True)
                    record = run_one(key, workload, args, pools[workload], run_dir)
                    runs.setdefault(workload, {})[key] = record
                    _said(record)
            reps.append(runs)
            client_reps.append(run_clients(args, work / f"{rep}-clients", tag))
            http_reps.append(run_http(args, http_workers, work / f"{rep}-http", tag))
    finally:
        if args.keep_logs:
            shutil.copytree(work, args.out / "logs", dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    runs = aggregate(reps)
    clients, http = merge_repeats(client_reps), merge_repeats(http_reps)
    result: dict[str, Any] = {
              "meta": {"machine": machine(), "argv": sys.argv[1:] if argv is None else argv,
                       "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(began)),
                       "seconds": round(time.time() - began, 1), "repeat": args.repeat,
                       "requests": args.requests, "latency_requests": args.latency_requests,
                       "inflight": args.inflight, "batch_size": args.batch_size,
                       "sweep": args.sweep, "sweep_seconds": args.sweep_seconds,
                       "workers": {w: WORKERS[w] for w in args.workloads},
                       "scenarios": args.scenarios, "clients": args.clients,
                       "clients_requests": args.clients_requests,
                       "clients_workers": args.clients_workers,
                       "http_seconds": args.http_seconds,
                       "http_connections": args.http_connections,
                       "http_service_workers": args.http_service_workers,
                       "loadavg_at_end": [round(v, 2) for v in os.getloadavg()]},
              "runs": runs, "ratios": ratios(runs), "clients": clients, "http": http,
              "http_note": http_note}
    result["targets"] = evaluate(result)
    (args.out / "results.json").write_text(json.dumps(result, indent=1, allow_nan=True))
    if runs:
        print_table(result)
    print_clients(clients)
    if "http" in args.scenarios:
        print_http(http, http_note)
    print_targets(result["targets"], args.repeat)
    plots = write_plots(runs, args.out)
    print(f"\nwrote {args.out / 'results.json'}"
          + (f" and {', '.join(p.name for p in plots)}" if plots else ""))
    failed = [f"{w}/{LABELS[k]}" for w, by in runs.items() for k, r in by.items() if not r["ok"]]
    failed += [f"clients {name}" for name, r in clients.items() if not r["ok"]]
    failed += [f"http {name}" for name, r in http.items() if not r["ok"]]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
