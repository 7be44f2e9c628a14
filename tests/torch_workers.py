"""PyTorch worker classes the tests serve, written as the README's worker contract reads: a
``torch.nn.Linear(8, 4)`` drawn from seed 0, imported in ``get_env`` through ``import_torch``.

``reference()`` builds the same model in the test process, to check every answer against.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wkr_celery.server import WKRHardWorker
from wkr_celery.server.helper import import_torch

IN_DIM = 8


def reference(torch: Any) -> Any:
    """The model every worker here serves: ``Linear(8, 4)`` with seed 0's weights."""
    torch.manual_seed(0)
    return torch.nn.Linear(IN_DIM, 4)


class TensorResultsWorker(WKRHardWorker):
    """Returns torch tensors, as a user would: each input is ``{"x": 8 floats, "as": how}``,
    and ``how`` picks what its result is: ``tensor`` (a row of the batch's output, still
    requiring grad), ``bf16``, ``strided`` (every other value: not contiguous) or ``dict``
    (``{"logits": tensor, "label": 0-d tensor}``). A batch whose inputs all say ``batch`` gets
    the whole output tensor, shape ``(batch, 4)``, as its results."""

    def get_env(self, device_id: int, tmp_dir: str) -> Any:
        return import_torch(device_id)

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        return envs, reference(envs)

    def predict(self, model: Any, input: Any) -> Any:
        torch, net = model
        out = net(torch.as_tensor(np.stack([x["x"] for x in input]), dtype=torch.float32))
        if all(x["as"] == "batch" for x in input):
            return out
        shaped = {"tensor": lambda row: row, "bf16": lambda row: row.to(torch.bfloat16),
                  "strided": lambda row: row[::2],
                  "dict": lambda row: {"logits": row, "label": row.argmax()}}
        return [shaped[x["as"]](row) for x, row in zip(input, out)]
