"""wkr-celery worker classes for the benchmark: ``benchmarks.workers.Tiny`` / ``GpuSim``."""

from __future__ import annotations

from typing import Any

import numpy as np

from wkr_celery.server import WKRHardWorker

from .model import Model


class Tiny(WKRHardWorker):
    """``tanh(x @ W)`` on float32 (512,) inputs, one matrix product per batch."""

    input_shape = (512,)
    input_dtype = "float32"
    workload = "tiny"

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        return Model(self.workload)

    def predict(self, model: Any, input: Any) -> Any:
        busy = model.busy
        out = model(np.asarray(input))
        self.record_statistic({"gpu_busy_ms": (model.busy - busy) * 1000, "batchsize": len(out)})
        return out


class GpuSim(Tiny):
    """The same model plus a simulated GPU kernel of 3 ms + 0.1 ms per input (CPU idle)."""

    workload = "gpu-sim"


WORKER_CLASSES = {"tiny": "benchmarks.workers.Tiny", "gpu-sim": "benchmarks.workers.GpuSim"}
