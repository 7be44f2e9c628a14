"""Two versions of one model, for the rolling-deploy tests (``tests.faults.deploy_workers``).

``V1`` answers an int ``n`` with ``[1, n]``, ``V2`` with ``[2, n]``: every answer says which
version computed it. ``Narrow`` and ``Wide`` take float32 vectors of length 4 and 6 (a new
version whose input contract changed) and answer with their sum.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from wkr_celery.server import WKRHardWorker


class V1(WKRHardWorker):
    version = 1

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        if model_dir:  # a version whose model is missing fails to load, naming the path
            with open(f"{model_dir}/{model_name}") as handle:
                return handle.read()
        return None

    def predict(self, model: Any, input: Any) -> list[Any]:
        time.sleep(0.005)
        return [[self.version, n] for n in input]


class V2(V1):
    version = 2


class Narrow(WKRHardWorker):
    input_shape = (4,)
    input_dtype = "float32"

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        return None

    def predict(self, model: Any, input: Any) -> Any:
        return np.asarray(input).sum(axis=1)


class Wide(Narrow):
    input_shape = (6,)
