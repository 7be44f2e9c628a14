"""What the production tests serve: a worker whose model loading and predict a test can hold."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from wkr_celery.server import WKRHardWorker

_HOLD_LIMIT = 60.0


class GatedDoubler(WKRHardWorker):
    """Answers ``2 * x``. With ``-model_dir D``, each predict first writes ``D/predicting-<n>``
    and then waits while ``D/hold`` exists, so a test can keep a batch in predict; loading the
    model waits while ``D/hold-load`` exists, so a test can keep a worker from serving."""

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        _wait_while(os.path.join(model_dir, "hold-load") if model_dir else "")
        return {"dir": model_dir, "count": 0}

    def predict(self, model: Any, input: Any) -> list[Any]:
        if model["dir"]:
            model["count"] += 1
            marker = os.path.join(model["dir"], f"predicting-{os.getpid()}-{model['count']}")
            with open(marker, "w") as handle:
                handle.write(json.dumps(list(input)))
            _wait_while(os.path.join(model["dir"], "hold"))
        return [2 * x for x in input]


class PacedVector(GatedDoubler):
    """Answers ``2 * x`` for float32 vectors of shape (1,), a fixed shape ``-probe`` can send.
    Every batch takes at least :attr:`pace` seconds, so a backlog of n requests at batch size
    1 takes at least n × pace to drain; ``D/hold`` holds predict as in :class:`GatedDoubler`."""

    input_shape = (1,)
    input_dtype = "float32"
    pace = 0.1

    def predict(self, model: Any, input: Any) -> list[Any]:
        time.sleep(self.pace)
        _wait_while(os.path.join(model["dir"], "hold") if model["dir"] else "")
        return [2 * x for x in input]


def _wait_while(path: str) -> None:
    deadline = time.monotonic() + _HOLD_LIMIT
    while path and os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
