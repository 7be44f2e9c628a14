"""The benchmark model, shared by every system so they all run exactly the same code.

``tiny`` is ``tanh(x @ W)`` on a float32 (512,) input: it costs microseconds, so what is measured
is the framework. ``gpu-sim`` adds a sleep of ``3 ms + 0.1 ms × n`` per batch of ``n`` with the CPU
idle, standing in for a GPU kernel: it measures how well batching and overlap hide the framework.

Each worker process writes its cumulative counters (simulated-GPU busy seconds, batches, inputs)
to ``$BENCH_STATS_DIR/<pid>.stats`` after every batch: one ``pwrite`` of 32 bytes, the same cost
for every system, and readable by the harness at any moment without asking the worker.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np

from workers.linear import make_weights

WORKLOADS = ("tiny", "gpu-sim")
GPU_BASE_S, GPU_PER_INPUT_S = 0.003, 0.0001
STATS_ENV = "BENCH_STATS_DIR"
_RECORD = struct.Struct("<dddd")  # nominal busy s, batches, inputs, measured (slept) busy s


def gpu_seconds(n: int) -> float:
    """Simulated kernel time for a batch of ``n`` inputs."""
    return GPU_BASE_S + GPU_PER_INPUT_S * n


class Model:
    """``tanh(x @ W)``, optionally with the simulated GPU, counting what it did."""

    def __init__(self, workload: str) -> None:
        if workload not in WORKLOADS:
            raise ValueError(f"workload {workload!r} is not one of {WORKLOADS}")
        self.workload = workload
        self.weights = make_weights()
        self.busy = 0.0  # nominal kernel seconds: what a GPU would have spent
        self.slept = 0.0  # what time.sleep really took (more on a loaded machine)
        self.batches = 0
        self.inputs = 0
        self._fd: int | None = None
        stats_dir = os.environ.get(STATS_ENV)
        if stats_dir:
            path = Path(stats_dir) / f"{os.getpid()}.stats"
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            self._flush()

    def __call__(self, x: Any) -> np.ndarray:
        """Results for a batch (n, 512) → (n, 128), or one input (512,) → (128,)."""
        x = np.asarray(x, dtype=np.float32)
        n = 1 if x.ndim == 1 else len(x)
        out = np.tanh(x @ self.weights)
        if self.workload == "gpu-sim":
            kernel = gpu_seconds(n)
            start = time.perf_counter()
            time.sleep(kernel)
            self.slept += time.perf_counter() - start
            self.busy += kernel
        self.batches += 1
        self.inputs += n
        self._flush()
        return out

    def _flush(self) -> None:
        if self._fd is not None:
            os.pwrite(self._fd, _RECORD.pack(self.busy, self.batches, self.inputs, self.slept), 0)


def physical_limit(workers: int, batch_size: int) -> float:
    """Inputs/s if every worker's simulated GPU ran full batches back to back."""
    return workers * batch_size / gpu_seconds(batch_size)


def read_stats(stats_dir: Path) -> dict[int, tuple[float, float, float, float]]:
    """``{pid: (nominal busy s, batches, inputs, slept s)}`` for every worker with counters."""
    found: dict[int, tuple[float, float, float, float]] = {}
    for path in stats_dir.glob("*.stats"):
        data = path.read_bytes()
        if len(data) >= _RECORD.size:
            found[int(path.stem)] = _RECORD.unpack(data[:_RECORD.size])
    return found
