"""Sentence embeddings in numpy: embedding lookup, then mean pooling over the real tokens.

Inputs are token ids of any length (a 1-D int array or a list of ints, as a tokenizer's
``encode(text).ids`` gives them); results are float32 vectors of length 64. Inputs batch by
length bucket (the next power of two, at least 8) and cost their padded length, so with
``-max_batch_cost 4096`` a batch holds at most 4096 token slots however long its inputs are.
The table ``E`` is drawn from a fixed seed, or loaded from ``<model_dir>/<model_name>`` (a
``.npy`` file of shape ``(vocabulary, dim)``), so a client can check every answer against
``E[ids].mean(axis=0)``. An empty input embeds to zeros.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from wkr_celery.server import WKRHardWorker, pad_batch

VOCABULARY, DIM, SEED = 32_768, 64, 0
SMALLEST_BUCKET = 8


def make_table(vocabulary: int = VOCABULARY, dim: int = DIM, seed: int = SEED) -> np.ndarray:
    """The embedding table the worker uses when no model file is given."""
    return np.random.default_rng(seed).standard_normal((vocabulary, dim)).astype(np.float32)


def bucket(length: int) -> int:
    """The padded length of an input of ``length`` tokens: the next power of two, at least 8."""
    return max(SMALLEST_BUCKET, 1 << max(0, length - 1).bit_length())


class Worker(WKRHardWorker):
    input_shape = (None,)  # one axis, any length; ints of any width (no input_dtype)
    pad_to_bucket = True  # False: pad each batch to its longest input only

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        path = os.path.join(model_dir, model_name) if model_dir and model_name else ""
        return np.load(path) if path else make_table()

    def batch_key(self, input: Any) -> int:
        return bucket(len(input))

    def batch_cost(self, input: Any) -> int:
        return bucket(len(input))

    def predict(self, model: Any, input: Any) -> Any:
        lengths = [len(x) for x in input]
        longest = max(lengths)
        ids, mask = pad_batch(input, bucket(longest) if self.pad_to_bucket else longest)
        if ids.dtype.kind not in "iu":
            if mask.any():
                raise ValueError(f"token ids must be integers; got {ids.dtype}")
            ids = ids.astype(np.int64)  # only empty inputs, which decode as float64
        real = ids[mask]
        if real.size and (real.min() < 0 or real.max() >= len(model)):
            bad = int(real.min() if real.min() < 0 else real.max())
            raise ValueError(f"token id {bad} is outside the vocabulary of {len(model)}")
        vectors = model[ids]  # (n, length, dim); padding looks up id 0 and is masked out
        summed = (vectors * mask[:, :, None]).sum(axis=1)
        counts = np.maximum(mask.sum(axis=1, keepdims=True), 1)
        self.record_statistic({"batchsize": len(input), "tokens": sum(lengths),
                               "padded_tokens": ids.size})
        return (summed / counts).astype(np.float32)
