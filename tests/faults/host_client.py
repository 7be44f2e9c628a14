"""The client host's program in the many-hosts tests: send ints, record every answer.

``python tests/faults/host_client.py REPORT BROKER_URL NAME COUNT [options]`` sends ``COUNT``
requests (``n`` = 0, 1, …) in chunks, each with a timeout; touches ``REPORT.sent`` once all are
sent; waits for every future (and, with ``-linger``, for ``REPORT.release`` to appear, so late
duplicate answers reach a live client); then writes ``REPORT``: per request its task id, when it
was sent and settled (``time.monotonic()``: one clock for every namespace of the machine), its
timeout, and its result or error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

from wkr_celery.client import WKRClient


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("report", type=Path)
    parser.add_argument("broker_url")
    parser.add_argument("name")
    parser.add_argument("count", type=int)
    parser.add_argument("-chunk", type=int, default=0, help="requests per chunk; 0: all")
    parser.add_argument("-pause", type=float, default=0.0, help="seconds between chunks")
    parser.add_argument("-timeout", type=float, default=60.0)
    parser.add_argument("-short_every", type=int, default=0,
                        help="every Nth request gets -short_timeout instead")
    parser.add_argument("-short_timeout", type=float, default=2.0)
    parser.add_argument("-linger", action="store_true")
    args = parser.parse_args(argv)
    settled: dict[int, float] = {}
    rows: list[dict[str, Any]] = []
    futures: list[Future[Any]] = []
    chunk = args.chunk or args.count
    with WKRClient(name=args.name, broker_url=args.broker_url, connect_timeout=30) as client:
        for start in range(0, args.count, chunk):
            for n in range(start, min(args.count, start + chunk)):
                short = args.short_every and n % args.short_every == 0
                timeout = args.short_timeout if short else args.timeout
                future = client.encode(n, timeout=timeout)
                rows.append({"n": n, "task_id": future.task_id,  # type: ignore[attr-defined]
                             "sent": time.monotonic(), "timeout": timeout})
                future.add_done_callback(lambda _, n=n: settled.setdefault(n, time.monotonic()))
                futures.append(future)
            if args.pause:
                time.sleep(args.pause)  # spreading the load over the fault, not synchronisation
        Path(f"{args.report}.sent").touch()
        wait(futures, timeout=args.timeout + 30)
        release = Path(f"{args.report}.release")
        give_up = time.monotonic() + 90
        while args.linger and not release.exists() and time.monotonic() < give_up:
            time.sleep(0.05)
        for row, future in zip(rows, futures):
            row["settled"] = settled.get(row["n"])
            if not future.done():
                row["error"] = "never settled"
            elif future.exception() is not None:
                exc = future.exception()
                row["error"] = f"{type(exc).__name__}: {exc}"
            else:
                row["result"] = future.result()
        pending = client.pending
    args.report.write_text(json.dumps({"rows": rows, "pending": pending}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
