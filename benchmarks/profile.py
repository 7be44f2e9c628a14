"""``python -m benchmarks.profile``: where the time goes, client side and worker side.

Starts one system on a fresh Redis, drives a stream (default wkr-celery, tiny, 256 in flight)
and runs ``py-spy record`` on the client (this process) and on every worker process meanwhile.
Prints the top functions by own time and by inclusive time for each, from py-spy's collapsed
stacks (written next to the summary, ``--out``, for flame graphs). Needs ``pip install py-spy``.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from .cli import WORKERS
from .model import prepare
from .scenarios import Run, started
from .systems import SYSTEMS


def top(collapsed: Path, count: int) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """(samples, [(frame, own %)], [(frame, inclusive %)]) from py-spy's raw output."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        samples = int(n)
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames[1:]):  # the first frame is the thread
            incl[frame] += samples
    pct = 100 / total if total else 0
    return (total, [(f, n * pct) for f, n in own.most_common(count)],
            [(f, n * pct) for f, n in incl.most_common(count)])


def record(run: Run, targets: list[tuple[str, int]],
           args: argparse.Namespace) -> tuple[dict[str, Any], list[tuple[str, Path]]]:
    """Drive a stream while ``py-spy`` records each of ``targets`` (name, pid): the stream's
    figures, and where each profile was written."""
    done = threading.Event()
    result: dict[str, Any] = {}

    def drive() -> None:
        result.update(run.drive(args.inflight, count=args.requests))
        done.set()

    threading.Thread(target=drive, daemon=True).start()
    spies: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
    try:
        for name, pid in targets:
            path = args.out / f"{args.system}-{args.workload}-{name.split('-')[0]}-{pid}.txt"
            spies.append((name, path, subprocess.Popen(
                ["py-spy", "record", "--pid", str(pid), "--duration", str(args.seconds),
                 "--format", "raw", "--rate", "200", "--nonblocking", "--output", str(path),
                 *(["--gil"] if args.gil else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        for _, _, spy in spies:
            spy.wait(args.seconds + 60)
        done.wait(600)
    finally:
        for _, _, spy in spies:
            if spy.poll() is None:
                spy.kill()
                spy.wait(10)
    return result, [(name, path) for name, path, _ in spies]


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    p.add_argument("--system", choices=SYSTEMS, default="wkr")
    p.add_argument("--workload", choices=tuple(WORKERS), default="tiny")
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--inflight", type=int, default=256)
    p.add_argument("--seconds", type=int, default=10, help="how long py-spy records")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--gil", action="store_true",
                   help="sample only threads holding the GIL (Python CPU time, no waits)")
    p.add_argument("--out", type=Path, default=Path("bench-results/profile"))
    args = p.parse_args()
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="wkr-profile-"))
    prepare([args.workload], work)
    try:
        with started(args.system, args.workload, WORKERS[args.workload], work,
                     warmup=500) as (_, system, run):
            targets = [("client", os.getpid())] + [(f"worker-{pid}", pid)
                                                   for pid in system.worker_pids()]
            result, profiles = record(run, targets, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.system} / {args.workload}: {result.get('throughput', 0):.0f} inputs/s "
          f"while profiled ({args.inflight} in flight), wrong {result.get('wrong')}, "
          f"missing {result.get('missing')}")
    for name, path in profiles:
        if not path.exists():
            print(f"\n{name}: no profile (py-spy failed)")
            continue
        samples, own, incl = top(path, args.top)
        kind = "holding the GIL" if args.gil else "threads not idle"
        print(f"\n== {name}: {samples} samples ({kind}) — own time ==")
        for frame, share in own:
            print(f"  {share:5.1f}%  {frame}")
        print(f"-- {name}: inclusive --")
        for frame, share in incl:
            print(f"  {share:5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
