"""``python -m benchmarks.pairs BASE [NEW]``: paired A/B runs of wkr-celery between two versions.

A machine shared with other work drifts by 2x within minutes, so two versions are compared by
alternating short runs (A, B, A, B, ...) and taking the median of the per-pair ratios B/A, which
cancels drift slower than one pair. Each run starts a fresh embedded Redis and
``wkr-serving-start`` from that version's tree (``git archive`` of ``BASE`` / ``NEW``; ``NEW``
defaults to the working tree), warms up, then measures one at a time (p50/p99 of 1,000) and a
stream (``--requests`` with 256 in flight): inputs/s and CPU microseconds per request of each
process (client, each worker, Redis), read from ``/proc`` over the stream.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("p50_ms", "p99_ms", "stream", "cpu_client_us", "cpu_redis_us")


def measure(workload: str, workers: int, requests: int) -> dict[str, Any]:
    """One run from the tree in the current directory (run there as a script)."""
    import psutil

    from benchmarks.scenarios import Pool, Run, one_at_a_time
    from benchmarks.systems import WKRSystem, free_port
    from wkr_celery.redis_embedded import EmbeddedRedis

    server = EmbeddedRedis(free_port()).start()
    system = WKRSystem(workload, workers, 32, server.url,
                       Path(tempfile.mkdtemp(prefix="wkr-pairs-")))
    client = None
    try:
        system.start(timeout=90)
        client = system.client()
        run = Run(client, Pool.make(workload=workload), 30)
        run.drive(64, count=300)
        latency = one_at_a_time(run, 1000, warmup=20)
        procs = {"client": psutil.Process(), "redis": psutil.Process(server.pid)}
        procs.update({f"worker{i}": psutil.Process(pid)
                      for i, pid in enumerate(system.worker_pids())})
        before = {name: sum(p.cpu_times()[:2]) for name, p in procs.items()}
        stream = run.drive(256, count=requests)
        after = {name: sum(p.cpu_times()[:2]) for name, p in procs.items()}
        return {"p50_ms": latency["p50_ms"], "p99_ms": latency["p99_ms"],
                "stream": stream["throughput"],
                "bad": stream["wrong"] + stream["missing"] + latency["wrong"] + latency["missing"],
                **{f"cpu_{name}_us": (after[name] - before[name]) / requests * 1e6
                   for name in procs}}
    finally:
        if client is not None:
            client.close()
        system.stop()
        server.stop()


def tree_of(ref: str | None, into: Path) -> Path:
    """A checkout of ``ref`` (the working tree itself when ``None``)."""
    if ref is None:
        return ROOT
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_in(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--measure", "--workload",
               args.workload, "--workers", str(args.workers), "--requests", str(args.requests)]
    done = subprocess.run(command, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"run in {tree} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def report(runs: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    names = [n for n in runs[0][0] if n in FIGURES or n.startswith("cpu_worker")]
    for name in names:
        a = [pair[0][name] for pair in runs]
        b = [pair[1].get(name, 0.0) for pair in runs]
        # A run too short for the CPU clock's 10 ms ticks can read 0: no ratio from that pair
        ratios = [y / x for x, y in zip(a, b) if x]
        compared = (f"B/A median of {len(ratios)} paired ratios {statistics.median(ratios):.3f} "
                    f"(range {min(ratios):.2f}-{max(ratios):.2f})" if ratios
                    else "B/A: no pair with a figure for A")
        print(f"{name:16s} A {statistics.median(a):9.2f}  B {statistics.median(b):9.2f}  "
              f"{compared}")
    print("wrong or missing answers:", [p[0]["bad"] for p in runs], [p[1]["bad"] for p in runs])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pairs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", nargs="?", help="git ref of version A")
    parser.add_argument("new", nargs="?", help="git ref of version B (default: working tree)")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--workload", default="tiny", choices=("tiny", "gpu-sim"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.workload, args.workers, args.requests)))
        return 0
    if not args.base:
        parser.error("name the base version: a git ref such as main or HEAD~1")
    with tempfile.TemporaryDirectory(prefix="wkr-pairs-") as tmp:
        trees = (tree_of(args.base, Path(tmp) / "a"), tree_of(args.new, Path(tmp) / "b"))
        runs = []
        for i in range(args.pairs):
            runs.append((run_in(trees[0], args), run_in(trees[1], args)))
            print(f"pair {i + 1}/{args.pairs} done", file=sys.stderr)
    report(runs)
    return 0


if __name__ == "__main__":
    if "--measure" in sys.argv:  # run from the tree under test: import its packages, not ours
        sys.path[0] = os.getcwd()
    sys.exit(main())
