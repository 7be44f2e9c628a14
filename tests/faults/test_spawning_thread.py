"""A service started from a thread that ends keeps its children.

Linux sends a child's parent-death signal when the *thread* that forked it ends, not its
process. Before, each child was forked by whichever thread called ``start()``: a service
started through ``asyncio.to_thread`` (or a thread pool, or a request handler) got its workers
and its embedded Redis killed as soon as that thread was done. Every child is now forked by one
thread that lives as long as the process (``processes.spawn``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np

from tests.helpers import free_port, wait_until
from wkr_celery import WKRClient
from wkr_celery.processes import spawn
from wkr_celery.server import WKRServer
from workers.linear import make_weights


def _gone(native_id: int) -> bool:
    """The thread has left the kernel, not only Python: its children's signal has been sent
    by then (the kernel reparents a thread's children, signalling them, before it reaps it)."""
    return not os.path.exists(f"/proc/self/task/{native_id}")


def test_a_service_started_through_asyncio_to_thread_serves_after_that_thread_ends(
    tmp_path: Path,
) -> None:
    name = f"s{uuid.uuid4().hex[:8]}"
    port, port_out = free_port(), free_port()
    server = WKRServer("workers.linear.Worker", name=name, num_worker=1, port_in=port,
                       port_out=port_out, log_dir=str(tmp_path))
    started_on: list[int] = []

    def start() -> None:
        started_on.append(threading.get_native_id())
        server.start()

    async def main() -> None:
        await asyncio.to_thread(start)

    try:
        asyncio.run(main())  # ends by shutting its executor down: the thread that started is gone
        wait_until(lambda: _gone(started_on[0]), 10, what="the starting thread to end")
        pids = [slot.pid for slot in server.workers]
        x = np.random.default_rng(1).standard_normal((20, 512)).astype(np.float32)
        with WKRClient(port=port, port_out=port_out, name=name, timeout=20) as client:
            answers = [client.encode(row).result(20) for row in x]
        np.testing.assert_allclose(np.stack(answers), np.tanh(x @ make_weights()), rtol=1e-5,
                                   atol=1e-5)
        assert [slot.pid for slot in server.workers] == pids
        assert all(slot.process is not None and slot.process.poll() is None
                   for slot in server.workers)
        assert "warm shutdown" not in (tmp_path / f"{name}.log").read_text()
    finally:
        server.stop()


# A child that says which signals reached it, in the order they were sent: Python runs pending
# handlers by signal number, and SIGTERM (15) comes before the real-time signal (34+).
_REPORTER = """
import signal, sys
def term(*_):
    print("TERM", flush=True)
def done(*_):
    print("DONE", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
signal.signal(signal.SIGRTMIN, done)
print("ready", flush=True)
while True:
    signal.pause()
"""


def test_a_child_spawned_from_a_thread_that_ends_gets_no_signal_until_its_process_dies() -> None:
    children: list[subprocess.Popen[bytes]] = []
    ids: list[int] = []

    def start() -> None:
        ids.append(threading.get_native_id())
        children.append(spawn([sys.executable, "-c", _REPORTER], stdout=subprocess.PIPE))

    thread = threading.Thread(target=start)
    thread.start()
    thread.join(30)
    (child,) = children
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        wait_until(lambda: _gone(ids[0]), 10, what="the spawning thread to end")
        child.send_signal(signal.SIGRTMIN)
        output, _ = child.communicate(timeout=10)
        assert output == b"DONE\n"
        assert child.returncode == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
