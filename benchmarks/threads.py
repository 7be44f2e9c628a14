"""``python -m benchmarks.threads``: CPU per request of each process, and of each client thread.

A stream on a CPU-bound machine goes as fast as the CPU all its processes spend per request
allows, so comparing two systems' streams means comparing these sums. Each round starts each
system on a fresh embedded Redis, warms it up, drives a stream (``--requests`` with
``--inflight`` out) and reads ``/proc`` before and after: user + system CPU of the client
(this process) per thread, named as Python names them, and of each worker process and Redis.
Systems alternate round by round (``--rounds``), so slow drift of the machine hits each alike.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
from pathlib import Path

from .cli import WORKERS
from .clients import cpu_seconds
from .model import prepare
from .scenarios import started
from .systems import SYSTEMS


def thread_cpu(pid: int) -> dict[int, tuple[float, int]]:
    """(CPU seconds, context switches) of each live thread of ``pid``, by thread id."""
    figures = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as handle:
                switches = sum(int(line.split()[1]) for line in handle
                               if "ctxt_switches:" in line)
            figures[int(tid)] = cpu_seconds(pid, int(tid)), switches
        except OSError:  # the thread ended meanwhile
            continue
    return figures


def process_cpu(processes: dict[str, int]) -> dict[str, float]:
    """CPU seconds of each named process so far."""
    return {name: cpu_seconds(pid) for name, pid in processes.items()}


#: What was measured, its CPU µs per request, and its context switches per request (counted for
#: each client thread; ``None`` for whole processes).
Row = tuple[str, float, float | None]


def measure(key: str, workload: str, requests: int, inflight: int,
            work: Path) -> tuple[float, list[Row]]:
    """One stream of system ``key`` (its files in ``work``): its inputs/s, and a :data:`Row` per
    thread and process."""
    with started(key, workload, WORKERS[workload], work, warmup=1000) as (server, system, run):
        processes = {"client, all threads": os.getpid(), "redis": server.pid or 0}
        processes.update({f"worker {i}": pid for i, pid in enumerate(system.worker_pids())})
        names = {t.native_id: t.name for t in threading.enumerate()}  # its threads run by now
        threads_before, before = thread_cpu(os.getpid()), process_cpu(processes)
        result = run.drive(inflight, count=requests)
        threads_after, after = thread_cpu(os.getpid()), process_cpu(processes)
    if result["wrong"] or result["missing"]:
        raise SystemExit(f"{key}: {result['wrong']} wrong, {result['missing']} missing "
                         f"answers: {result['errors'][:3]}")
    per_request = 1e6 / requests
    rows: list[Row] = []
    for tid, (seconds, switches) in sorted(threads_after.items()):
        was_seconds, was_switches = threads_before.get(tid, (0.0, 0))
        if (seconds - was_seconds) * per_request >= 0.1:  # idle threads (timers) left out
            rows.append(("client " + names.get(tid, f"thread {tid} (not a Python thread)"),
                         (seconds - was_seconds) * per_request,
                         (switches - was_switches) / requests))
    totals: list[Row] = [
        (what, (after[what] - before[what]) * per_request, None) for what in processes]
    return result["throughput"], [*rows, *totals,
                                  ("all processes", sum(row[1] for row in totals), None)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.threads", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", default="wkr,coalesce",
                   help=f"comma-separated, of {', '.join(SYSTEMS)}")
    p.add_argument("--workload", choices=tuple(WORKERS), default="tiny")
    p.add_argument("--requests", type=int, default=60000)
    p.add_argument("--inflight", type=int, default=256)
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args(argv)
    systems = args.systems.split(",")
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        p.error(f"unknown system(s) {', '.join(unknown)}; pick from {', '.join(SYSTEMS)}")
    with tempfile.TemporaryDirectory(prefix="wkr-threads-") as tmp:
        prepare([args.workload], Path(tmp))
        for round_ in range(1, args.rounds + 1):
            for key in systems:
                throughput, rows = measure(key, args.workload, args.requests, args.inflight,
                                           Path(tempfile.mkdtemp(dir=tmp)))
                print(f"round {round_}, {key} / {args.workload}, {args.inflight} in flight: "
                      f"{throughput:,.0f} inputs/s; CPU µs per request:")
                for what, value, switches in rows:
                    counted = "" if switches is None else f"  ({switches:.2f} context switches)"
                    print(f"  {what:32s} {value:7.1f}{counted}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
