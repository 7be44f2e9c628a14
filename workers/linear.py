"""``tanh(x @ W)`` in numpy: a real (if small) model, batched as one matrix product.

Inputs are float32 vectors of length 512; results are float32 vectors of length 128. ``W`` is
drawn from a fixed seed, or loaded from ``<model_dir>/<model_name>`` (a ``.npy`` file) when given,
so a client can check every answer against ``numpy.tanh(x @ W)``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from wkr_celery.server import WKRHardWorker

IN_DIM, OUT_DIM, SEED = 512, 128, 0


def make_weights(in_dim: int = IN_DIM, out_dim: int = OUT_DIM, seed: int = SEED) -> np.ndarray:
    """The weights the worker uses when no model file is given."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((in_dim, out_dim)) / np.sqrt(in_dim)).astype(np.float32)


class Worker(WKRHardWorker):
    input_shape = (IN_DIM,)
    input_dtype = "float32"

    def get_env(self, device_id: int, tmp_dir: str) -> Any:
        return [self.new_logger()]

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        (logger,) = envs
        path = os.path.join(model_dir, model_name) if model_dir and model_name else ""
        weights = np.load(path) if path else make_weights()
        logger.info("linear model loaded: W %s from %s", weights.shape, path or "seed")
        return weights

    def predict(self, model: Any, input: Any) -> Any:
        start = time.perf_counter()
        x = np.asarray(input, dtype=np.float32)
        out = np.tanh(x @ model)
        self.record_statistic({"predict_ms_per_item": (time.perf_counter() - start) * 1000 / len(x),
                               "batchsize": len(x)})
        return out
