"""One ``WKRClient`` shared the ways users share it: by threads (a threaded web server), and by
processes forked after it was made (``multiprocessing`` on Linux, ``gunicorn --preload``).

Threads take turns on the lone path and the listener at every moment. A forked child gets no
thread, and shared the parent's client id: its reply list and its task-id counter, so parent and
child sent requests under the same task ids and popped each other's answers. Each process now
starts its own part of the client (a new client id, its own threads) on first use, so each
caller gets its own answer.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import numpy as np

from wkr_celery import WKRClient
from workers.linear import make_weights

from .helpers import wait_until


def _stream(client: WKRClient, seed: int, count: int) -> list[str]:
    """``count`` requests out at once, then their answers, each checked, all within 30 s;
    what went wrong."""
    weights = make_weights()
    x = np.random.default_rng(seed).standard_normal((count, 512)).astype(np.float32)
    problems = []
    futures = [client.encode(row) for row in x]
    deadline = time.monotonic() + 30
    for i, (row, future) in enumerate(zip(x, futures)):
        try:
            y = future.result(max(0.01, deadline - time.monotonic()))
        except Exception as exc:  # what went wrong is the test's finding
            problems.append(f"request {i}: {exc!r}")
            continue
        if not np.allclose(y, np.tanh(row @ weights), rtol=1e-5, atol=1e-5):
            problems.append(f"request {i}: another request's answer")
    return problems


def test_one_client_shared_by_many_threads_gives_each_thread_its_own_answers(
        make_service) -> None:
    service = make_service("workers.linear.Worker", "-num_worker", "2")
    client = service.client()
    weights = make_weights()
    wrong: list[str] = []

    def caller(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for i in range(150):
            x = rng.standard_normal(512).astype(np.float32)
            try:  # one at a time (the lone path), with a deadline, and a stream of two
                if (seed + i) % 3 == 0:
                    y = client.encode(x).result(30)
                elif (seed + i) % 3 == 1:
                    y = client.encode(x, timeout=30).result()
                else:
                    y = list(client.encode_many([x, -x]))[0]
                if not np.allclose(y, np.tanh(x @ weights), rtol=1e-5, atol=1e-5):
                    wrong.append(f"thread {seed} request {i}: a wrong answer")
            except Exception as exc:  # what went wrong is the test's finding
                wrong.append(f"thread {seed} request {i}: {exc!r}")

    threads = [threading.Thread(target=caller, args=(seed,), daemon=True) for seed in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "a thread still waits"
    assert not wrong, wrong[:5]
    assert client.pending == 0


def test_a_client_made_before_a_fork_gives_parent_and_children_their_own_answers(
        make_service) -> None:
    service = make_service("workers.linear.Worker", "-num_worker", "2")
    client = service.client()
    assert not _stream(client, 0, 50)  # the parent has used it: threads, ids, a reply list
    children = []
    for seed in (1, 2):
        pid = os.fork()
        if pid == 0:  # the child: a stream of its own on the inherited client, then out
            code = 1
            try:
                problems = _stream(client, seed, 300)
                print(f"child {seed}: {problems[:3]}", flush=True)
                code = 0 if not problems else 1
            finally:
                os._exit(code)
        children.append(pid)
    problems = _stream(client, 3, 300)  # the parent streams at the same time
    codes = [_exit_code(pid, timeout=60) for pid in children]
    assert not problems, problems[:5]
    assert codes == [0, 0], f"children ended with {codes} (-9: still waiting, killed)"
    assert client.pending == 0


def _exit_code(pid: int, timeout: float) -> int:
    """The child's exit code; it is killed (-9) if it has not ended within ``timeout``."""
    try:
        _, status = wait_until(lambda: (lambda done: done if done[0] else None)(
            os.waitpid(pid, os.WNOHANG)), timeout, what=f"child {pid} to end")
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_threads_that_make_requests_at_once_get_distinct_task_ids() -> None:
    """Task ids came from a generator, which raises "generator already executing" when a
    second thread asks while the first is inside it (3 of 1,800 requests once, in the test
    above): ids are made from ``itertools.count`` now. Thread switches are forced as often as
    CPython allows, so a shared generator fails here at once."""
    from wkr_celery.client.protocol import Requests
    from wkr_celery.keys import ServiceKeys, priority_step

    requests = Requests(ServiceKeys("ids"), {"protocol": "obj"}, reply_to="c" * 32,
                        timeout=None, priority=priority_step("normal"), clock=lambda: 1.0e9)
    made: list[list[str]] = [[] for _ in range(8)]
    errors: list[BaseException] = []

    def make(into: list[str]) -> None:
        try:
            for i in range(3000):
                into.append(requests.make(i).task_id)
        except BaseException as exc:  # what went wrong is the test's finding
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=make, args=(ids,)) for ids in made]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        sys.setswitchinterval(interval)
    assert not errors
    ids = [task_id for per_thread in made for task_id in per_thread]
    assert len(ids) == 8 * 3000 and len(set(ids)) == len(ids)
