"""wkr-celery worker classes for the benchmark: ``benchmarks.workers.Tiny`` / ``GpuSim`` / ``Torch``."""

from __future__ import annotations

from typing import Any

import numpy as np

from examples.torch_worker import Worker as TorchWorker
from wkr_celery.server import WKRHardWorker

from .model import Counters, Model


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
    """The same model plus a simulated GPU kernel of 5 ms + 0.05 ms per input (CPU idle)."""

    workload = "gpu-sim"


class Torch(TorchWorker):
    """The PyTorch example worker as users run it, plus the batch counters every system writes."""

    workload = "torch"

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        self.counters = Counters()
        return super().get_model(envs, model_dir, model_name, tmp_dir)

    def predict(self, model: Any, input: Any) -> Any:
        out = super().predict(model, input)
        self.counters.add(len(out))
        return out


WORKER_CLASSES = {"tiny": "benchmarks.workers.Tiny", "gpu-sim": "benchmarks.workers.GpuSim",
                  "torch": "benchmarks.workers.Torch"}
