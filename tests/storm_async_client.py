"""A storm of real Ctrl+Cs on an :class:`AsyncWKRClient` in a notebook-style loop.

Not a test (pytest does not collect it): it measures how often a client is left waiting after
many interrupts, and where. Each run starts a client on a loop of its own (one loop, a
``run_until_complete`` per cell, as IPython runs cells), streams thousands of inputs per cell,
while a thread sends real SIGINTs at random moments under ``signal.default_int_handler``. After
the storm, a cell of fresh requests must be answered within ``--answer`` seconds; when it is
not, the stacks of every task and thread, and the state of the Redis pools, are printed.

    python -m tests.storm_async_client --runs 5 --interrupts 40
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import signal
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from wkr_celery import AsyncWKRClient
from wkr_celery.redis_embedded import EmbeddedRedis

from .helpers import free_port, queued, start_service


def _sender(count: int, spread: tuple[float, float], armed: threading.Event,
            done: threading.Event, sent: list[int]) -> None:
    """Send ``count`` SIGINTs at random gaps, each only while the storm's cells run."""
    for _ in range(count):
        time.sleep(random.uniform(*spread))
        armed.wait()
        os.kill(os.getpid(), signal.SIGINT)
        sent.append(1)
    done.set()


def _pool_state(client: AsyncWKRClient) -> str:
    lines = []
    for role, redis_ in (("broker", client._broker), ("results", client._results)):
        if redis_ is None:
            continue
        pool = redis_.connection_pool
        lock = getattr(pool, "_lock", None)
        waiters = getattr(lock, "_waiters", None)
        lines.append(f"{role}: pool lock locked={lock.locked() if lock else None} "
                     f"waiters={len(waiters) if waiters else 0} "
                     f"in_use={len(pool._in_use_connections)} "
                     f"idle={len(pool._available_connections)}")
    return "\n".join(lines)


def _dump(loop: asyncio.AbstractEventLoop, client: AsyncWKRClient) -> None:
    print("=== WEDGED: pools ===\n" + _pool_state(client), flush=True)
    print(f"publisher={client._publisher!r} outbox={len(client._outbox)} "
          f"pending={client.pending} sending={len(client._sending[0])}", flush=True)
    replies = client._replies
    if replies is not None:
        print(f"reply tasks={replies._tasks!r}", flush=True)
    for task in asyncio.all_tasks(loop):
        name = task.get_name()
        coro = task.get_coro()
        if getattr(coro, "__qualname__", "").endswith("encode"):
            continue  # thousands of callers waiting on their futures
        print(f"--- task {name} {coro!r}", flush=True)
        while coro is not None:  # print_stack shows a coroutine's own frame only
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is not None:
                print(f"    {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        print(f"    awaiting {task._fut_waiter!r}", flush=True)
    for ident, frame in sys._current_frames().items():
        print(f"--- thread {ident}", flush=True)
        traceback.print_stack(frame, file=sys.stdout)


def _storm(loop: asyncio.AbstractEventLoop, client: AsyncWKRClient, args: argparse.Namespace
           ) -> tuple[int, int]:
    """Cells of ``--per_cell`` inputs until the sender is done; returns (interrupts, stalls).
    An interrupted cell is cancelled (as a user stopping it would): left pending, thousands of
    them filled the service's queue to its cap."""
    cell = loop.run_until_complete
    task: asyncio.Task[Any] | None = None
    armed, done, sent = threading.Event(), threading.Event(), []
    thread = threading.Thread(target=_sender, daemon=True, args=(
        args.interrupts, (args.gap_min, args.gap_max), armed, done, sent))
    caught = stalls = 0
    thread.start()
    for _ in range(args.interrupts * 3 + 10):  # a signal in the handler itself: go round
        try:
            while not done.is_set():
                try:
                    armed.set()
                    xs = range(args.per_cell)
                    task = loop.create_task(asyncio.wait_for(_gather(client, xs), args.stall))
                    got = cell(task)
                    assert got == [2 * x for x in xs]
                except asyncio.TimeoutError:
                    stalls += 1
                except Exception as exc:  # noqa: BLE001 - counted as a stall, shown
                    print(f"cell failed: {exc!r}", flush=True)
                    stalls += 1
                except KeyboardInterrupt as exc:
                    caught += 1
                    _where(exc)
                    if task is not None:
                        task.cancel()  # withdrawn when the loop next runs: the queue stays short
            armed.clear()
            thread.join()
            time.sleep(0.5)  # a signal sent last lands here
            break
        except KeyboardInterrupt:
            caught += 1
    return caught, stalls


#: Where the interrupts landed: the innermost frame, as ``file:function``.
LANDED: collections.Counter[str] = collections.Counter()


def _where(exc: BaseException) -> None:
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        LANDED[f"{Path(last.filename).parent.name}/{Path(last.filename).name}:{last.name}"] += 1


async def _gather(client: AsyncWKRClient, xs: Any) -> list[Any]:
    return list(await asyncio.gather(*(client.encode(x) for x in xs)))


def _settled(loop: asyncio.AbstractEventLoop, client: AsyncWKRClient, service: Any,
             seconds: float) -> bool:
    """Cancel what cells left running, then wait (running the loop) until the client has
    nothing left to send and the queue is empty: the check measures the client, not a backlog of
    tens of thousands of requests a storm leaves."""
    async def settle() -> None:
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task() and "_gather" in repr(task.get_coro()):
                task.cancel()
        # Not ``client.pending``: what the check needs is nothing left to send (and an
        # interrupt inside ``_send`` left an entry there that was never sent, until fixed).
        while client._outbox or client._sending[0] or queued(service):
            await asyncio.sleep(0.5)

    for _ in range(5):  # a resurfaced interrupt: go on waiting
        try:
            loop.run_until_complete(asyncio.wait_for(settle(), seconds))
            return True
        except asyncio.TimeoutError:
            return False
        except KeyboardInterrupt:
            continue
    return False


def _check(loop: asyncio.AbstractEventLoop, client: AsyncWKRClient, answer: float
           ) -> tuple[bool, int]:
    """The cell after the storm; on Python 3.11 an interrupt stored in an inner task of
    ``asyncio.wait_for`` (redis-py's send) is raised again when its outer task reads it: such
    a resurfaced one is counted, and the cell run again."""
    for resurfaced in range(5):
        try:
            loop.run_until_complete(asyncio.wait_for(_gather(client, range(200)), answer))
            return True, resurfaced
        except asyncio.TimeoutError:
            _dump(loop, client)
            return False, resurfaced
        except KeyboardInterrupt:
            continue
    return False, 5


def one_run(service: Any, args: argparse.Namespace) -> bool:
    """One storm on a fresh loop and client; True when the client answered afterwards."""
    loop = asyncio.new_event_loop()
    cell = loop.run_until_complete
    client = AsyncWKRClient(name=service.name, broker_url=service.broker_url,
                            result_url=service.result_url, connect_timeout=10)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        cell(client.connect())
        caught, stalls = _storm(loop, client, args)
        if not _settled(loop, client, service, args.backlog):
            print(f"run: interrupts={caught} backlog not settled in {args.backlog}s", flush=True)
            _dump(loop, client)
            return False
        started = time.monotonic()
        answered, resurfaced = _check(loop, client, args.answer)
        print(f"run: interrupts={caught} stalled cells={stalls} answered={answered} "
              f"resurfaced={resurfaced} after={time.monotonic() - started:.1f}s", flush=True)
        return answered
    finally:
        signal.signal(signal.SIGINT, previous)
        try:
            cell(asyncio.wait_for(client.close(), 30))
        except Exception as exc:  # noqa: BLE001 - a wedged client may not close
            print(f"close: {exc!r}", flush=True)
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--interrupts", type=int, default=40)
    parser.add_argument("--per_cell", type=int, default=2000)
    parser.add_argument("--gap_min", type=float, default=0.05)
    parser.add_argument("--gap_max", type=float, default=0.6)
    parser.add_argument("--stall", type=float, default=30.0)
    parser.add_argument("--answer", type=float, default=20.0)
    parser.add_argument("--backlog", type=float, default=240.0)
    args = parser.parse_args()
    server = EmbeddedRedis(free_port()).start()
    service = start_service(f"storm{uuid.uuid4().hex[:8]}", server.url, server.url,
                            Path(tempfile.mkdtemp()), "tests.workers_for_tests.PoisonWorker",
                            ("-max_queue", "10000000"), wait=1)
    wedged = 0
    try:
        for _ in range(args.runs):
            wedged += not one_run(service, args)
    finally:
        service.stop()
        server.stop()
    print(f"STORM: runs={args.runs} wedged={wedged}", flush=True)
    locks = sum(n for where, n in LANDED.items() if "locks.py" in where or "Lock" in where)
    print(f"landed in asyncio/locks.py: {locks} of {sum(LANDED.values())}; most often:",
          flush=True)
    for where, count in LANDED.most_common(25):
        print(f"  {count:4d} {where}", flush=True)


if __name__ == "__main__":
    main()
