"""Many clients: several client processes, each with N requests in flight, against one service.

What a user sizing a deployment needs: the service's capacity measured where the work is done
(inputs/s counted by the worker processes themselves), and the CPU each kind of process spends per
request: the clients, the worker processes, Redis (and wkr-celery's supervisor). CPU time is read
from ``/proc/<pid>/stat`` (utime + stime) of every process just before the clients are released and
just after the last one finished, and divided by the requests answered in that window.

The parent starts Redis and the service, then the client processes
(``python -m benchmarks.clients KEY URL SERVICE INFLIGHT COUNT WARMUP TIMEOUT``). Each warms up,
says ``BENCH ready`` on stdout, waits for a line on stdin, runs its stream, prints
``BENCH {json}`` and waits for another line before it closes its client, so that its CPU time is
read while it is still alive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from .model import read_stats

PREFIX = "BENCH "
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/<pid>/stat`` fields 14, 15),
    or of its thread ``tid`` alone (``/proc/<pid>/task/<tid>/stat``)."""
    with open(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat") as handle:
        text = handle.read()
    fields = text[text.rindex(")") + 2:].split()  # the name may hold spaces; field 3 is fields[0]
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _read_line(proc: subprocess.Popen[str], what: str) -> str:
    """The next protocol line from a client process (other output is passed to stderr)."""
    stdout: IO[str] = proc.stdout  # type: ignore[assignment]
    for line in stdout:
        if line.startswith(PREFIX):
            return line[len(PREFIX):].strip()
        sys.stderr.write(line)
    raise RuntimeError(f"client process {proc.pid} exited ({proc.wait()}) before {what}")


def _spawn(key: str, url: str, service: str, args: Any, env: dict[str, str],
           run_dir: Path) -> list[subprocess.Popen[str]]:
    from .systems import ROOT

    procs: list[subprocess.Popen[str]] = []
    for i in range(args.clients):
        with open(run_dir / f"client-{i}.log", "ab") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "benchmarks.clients", key, url, service,
                 str(args.inflight), str(args.clients_requests), str(args.warmup),
                 str(args.timeout)], cwd=ROOT, env=env, text=True, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=log))
    return procs


def _window(procs: list[subprocess.Popen[str]], groups: dict[str, list[int]],
            stats_dir: Path) -> dict[str, Any]:
    """Release the warmed-up clients, wait for every stream's report; the figures in between."""
    cpu_before = {kind: sum(cpu_seconds(p) for p in pids) for kind, pids in groups.items()}
    stats_before = read_stats(stats_dir)
    began = time.monotonic()
    for proc in procs:
        proc.stdin.write("go\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
    results = [json.loads(_read_line(proc, "its stream ended")) for proc in procs]
    elapsed = time.monotonic() - began
    cpu = {kind: sum(cpu_seconds(p) for p in pids) - cpu_before[kind]
           for kind, pids in groups.items()}
    stats_after = read_stats(stats_dir)
    zero = (0.0, 0.0, 0.0, 0.0)
    inputs = sum(stats_after[p][2] - stats_before.get(p, zero)[2] for p in stats_after)
    batches = sum(stats_after[p][1] - stats_before.get(p, zero)[1] for p in stats_after)
    answered = sum(r["answered"] for r in results)
    errors = [e for r in results for e in r["errors"]]
    return {"answered": answered, "wrong": sum(r["wrong"] for r in results),
            "missing": sum(r["missing"] for r in results), "elapsed_s": elapsed,
            "capacity": inputs / elapsed, "mean_batch": inputs / batches if batches else 0.0,
            "client_throughput": [r["throughput"] for r in results],
            "p50_ms": sorted(r["p50_ms"] for r in results)[len(results) // 2],
            "cpu_us_per_request": {k: v * 1e6 / max(answered, 1) for k, v in cpu.items()},
            "cpu_share_of_one_core": {k: v / elapsed for k, v in cpu.items()},
            "errors": errors}


def measure(key: str, workers: int, args: Any, run_dir: Path) -> dict[str, Any]:
    """One run: fresh Redis, a ``tiny`` service with ``workers`` worker processes,
    ``args.clients`` client processes with ``args.inflight`` in flight each."""
    from wkr_celery.redis_embedded import EmbeddedRedis

    from .systems import CLASSES, LABELS, free_port

    record: dict[str, Any] = {"system": key, "label": LABELS[key], "workers": workers,
                              "clients": args.clients, "inflight": args.inflight,
                              "ok": False, "error": None}
    redis_server = EmbeddedRedis(free_port()).start()
    system = CLASSES[key]("tiny", workers, args.batch_size, redis_server.url, run_dir)
    procs: list[subprocess.Popen[str]] = []
    started = time.monotonic()
    try:
        system.start(timeout=90)
        procs = _spawn(key, redis_server.url, getattr(system, "name", ""), args, system.env(),
                       run_dir)
        for proc in procs:
            _read_line(proc, "warming up")
        groups = {"client": [p.pid for p in procs], "worker": system.worker_pids(),
                  "redis": [redis_server.pid or 0]}
        if key == "wkr":
            groups["supervisor"] = [system.service_pid()]  # type: ignore[attr-defined]
        record.update(_window(procs, groups, system.stats_dir))
        errors = record.pop("errors")
        record["ok"] = not errors and record["wrong"] == record["missing"] == 0
        record["error"] = "; ".join(errors)[:1000] or None
    except Exception as exc:  # one failing run must not stop the others
        record["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        for proc in procs:
            try:
                proc.communicate("bye\n", timeout=30)
            except (subprocess.TimeoutExpired, OSError, ValueError):
                proc.kill()
                proc.wait(10)
        system.stop()
        redis_server.stop()
    record["seconds"] = round(time.monotonic() - started, 1)
    return record


def client_main(argv: list[str]) -> None:
    """One client process: warm up, wait for ``go``, stream, report, wait for ``bye``."""
    from .scenarios import Pool, Run, percentiles
    from .systems import client_for

    key, url, service, inflight, count, warmup, timeout = argv
    client = client_for(key, url, service)
    try:
        run = Run(client, Pool.make(workload="tiny"), float(timeout))
        run.drive(min(int(inflight), 64), count=int(warmup))
        print(PREFIX + "ready", flush=True)
        sys.stdin.readline()
        result = run.drive(int(inflight), count=int(count))
        latencies = result.pop("latencies")
        print(PREFIX + json.dumps({**result, **percentiles(latencies)}), flush=True)
        sys.stdin.readline()
    finally:
        client.close()


if __name__ == "__main__":
    client_main(sys.argv[1:])
