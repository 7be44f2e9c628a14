"""A worker whose inputs say what to do, so REST tests can ask for each outcome by name.

Inputs are ``{"op": ..., ...}``: ``double`` (x * 2, numbers or arrays), ``echo``, ``raise``
(predict raises), ``short`` (predict returns one result too few: a contract error), ``complex`` (a result JSON
cannot carry), ``hold``
(block in predict until the file ``gate`` exists, after creating ``gate + ".held"``).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from wkr_celery.server import WKRHardWorker

_HOLD_LIMIT = 30.0


class Calc(WKRHardWorker):
    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        return None

    def predict(self, model: Any, input: Any) -> list[Any]:
        self.record_statistic({"batchsize": len(input)})
        if any(isinstance(x, dict) and x.get("op") == "short" for x in input):
            return [None] * (len(input) - 1)
        return [self._one(x) for x in input]

    def _one(self, x: Any) -> Any:
        op = x.get("op") if isinstance(x, dict) else None
        if op == "double":
            value = x["x"]
            return np.asarray(value) * 2 if isinstance(value, (list, np.ndarray)) else value * 2
        if op == "complex":
            return complex(x.get("real", 1), x.get("imag", 2))
        if op == "raise":
            raise ValueError(f"refusing {x.get('why', 'this input')}")
        if op == "hold":
            gate = x["gate"]
            open(gate + ".held", "w").close()
            give_up = time.monotonic() + _HOLD_LIMIT
            while not os.path.exists(gate) and time.monotonic() < give_up:
                time.sleep(0.01)
            return "released"
        return x
