"""The benchmark model, shared by every system so they all run exactly the same code.

``tiny`` is ``tanh(x @ W)`` on a float32 (512,) input: it costs microseconds, so what is measured
is the framework. ``gpu-sim`` adds a sleep of ``5 ms + 0.05 ms × n`` per batch of ``n`` with the CPU
idle, standing in for a GPU kernel: it measures how well batching and overlap hide the framework.
``torch`` is the PyTorch example (``examples/torch_worker.py``: a two-layer transformer encoder,
(16, 32) → 128, one math thread per process) on the CPU: a real framework's cost per batch.
Its weights are written once per run by the example's own setup step (:func:`prepare`) and every
process loads them from ``$BENCH_MODEL_DIR``; the answers are checked against torch run directly.

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

WORKLOADS = ("tiny", "gpu-sim", "torch")
GPU_BASE_S, GPU_PER_INPUT_S = 0.005, 0.00005
STATS_ENV = "BENCH_STATS_DIR"
MODEL_DIR_ENV = "BENCH_MODEL_DIR"
_RECORD = struct.Struct("<dddd")  # nominal busy s, batches, inputs, measured (slept) busy s


def gpu_seconds(n: int) -> float:
    """Simulated kernel time for a batch of ``n`` inputs."""
    return GPU_BASE_S + GPU_PER_INPUT_S * n


def prepare(workloads: list[str], work: Path) -> None:
    """Write what the workloads' workers load, before any starts: the torch example's weights,
    in ``work/torch-model``, named to every worker process by ``$BENCH_MODEL_DIR``."""
    if "torch" in workloads:
        from examples.torch_worker import save_weights

        model_dir = work / "torch-model"
        save_weights(model_dir)
        os.environ[MODEL_DIR_ENV] = str(model_dir)


class TorchNet:
    """The torch example's model on the CPU: inputs (16, 32), (512,) or a batch of either."""

    def __init__(self) -> None:
        import torch

        from examples.torch_worker import FEATURES, SEQ_LEN, load_model, threads_per_worker

        model_dir = os.environ.get(MODEL_DIR_ENV, "")
        if not model_dir:
            raise RuntimeError(f"${MODEL_DIR_ENV} is not set: benchmarks.model.prepare() first")
        torch.set_num_threads(threads_per_worker())
        self.torch = torch
        self.shape = (SEQ_LEN, FEATURES)
        self.net = load_model(torch, model_dir)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # One input is (512,) or (16, 32); a stacked batch of one, (1, 512), is still a batch.
        single = x.ndim == 1 or x.shape == self.shape
        batch = np.ascontiguousarray(x.reshape(-1, *self.shape), dtype=np.float32)
        with self.torch.inference_mode():
            out = self.net(self.torch.from_numpy(batch)).numpy()
        return out[0] if single else out


class Counters:
    """What one worker process did, rewritten to ``$BENCH_STATS_DIR/<pid>.stats`` per batch."""

    def __init__(self) -> None:
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

    def add(self, n: int, busy: float = 0.0, slept: float = 0.0) -> None:
        """One more batch of ``n`` inputs (and its simulated kernel time)."""
        self.busy += busy
        self.slept += slept
        self.batches += 1
        self.inputs += n
        self._flush()

    def _flush(self) -> None:
        if self._fd is not None:
            os.pwrite(self._fd, _RECORD.pack(self.busy, self.batches, self.inputs, self.slept), 0)


class Model:
    """``tanh(x @ W)`` or the torch model, optionally with the simulated GPU, counting batches."""

    def __init__(self, workload: str) -> None:
        if workload not in WORKLOADS:
            raise ValueError(f"workload {workload!r} is not one of {WORKLOADS}")
        self.workload = workload
        self.weights = make_weights()
        self.net = TorchNet() if workload == "torch" else None
        self.counters = Counters()

    @property
    def busy(self) -> float:
        return self.counters.busy

    def __call__(self, x: Any) -> np.ndarray:
        """Results for a batch (n, 512) → (n, 128), or one input (512,) → (128,); ``torch``
        takes (16, 32) inputs too."""
        x = np.asarray(x, dtype=np.float32)
        out = self.net(x) if self.net is not None else np.tanh(x @ self.weights)
        n = 1 if out.ndim == 1 else len(out)
        kernel = slept = 0.0
        if self.workload == "gpu-sim":
            kernel = gpu_seconds(n)
            start = time.perf_counter()
            time.sleep(kernel)
            slept = time.perf_counter() - start
        self.counters.add(n, kernel, slept)
        return out


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
