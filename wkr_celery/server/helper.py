"""Helpers for server code: the flag parser, device-pinned imports, and ``pad_batch``.

``import_tf`` and ``import_torch`` set ``CUDA_VISIBLE_DEVICES`` before the framework is imported,
so the process only ever sees its own device; call them from ``get_env``. ``pad_batch`` turns a
batch of variable-length inputs (token ids) into one array and its mask, inside ``predict``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from ..config import Settings, build_parser

__all__ = ["get_args_parser", "import_tf", "import_torch", "pad_batch", "pin_device"]


def get_args_parser() -> argparse.ArgumentParser:
    """The ``wkr-serving-start`` parser (worker class first, then the seed's flags)."""
    return build_parser()


def pin_device(device_id: int) -> None:
    """Make only ``device_id`` visible to CUDA in this process; -1 hides every GPU."""
    os.environ["CUDA_VISIBLE_DEVICES"] = "" if device_id < 0 else str(device_id)


def import_tf(device_id: int = -1, gpu_memory_fraction: float | None = None) -> ModuleType:
    """Import TensorFlow pinned to ``device_id``.

    TF2 has no per-process memory fraction; the GPU's memory grows on demand instead, and the
    fraction (default: the service's ``-gpu_memory_fraction``) is kept on the module as
    ``tf.wkr_gpu_memory_fraction`` for code that sets a limit.
    """
    if gpu_memory_fraction is None:
        gpu_memory_fraction = Settings.from_env().gpu_memory_fraction
    pin_device(device_id)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf  # type: ignore[import-not-found]

    if device_id >= 0:
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    tf.wkr_gpu_memory_fraction = gpu_memory_fraction
    return tf


def import_torch(device_id: int = -1, gpu_memory_fraction: float | None = None) -> ModuleType:
    """Import PyTorch pinned to ``device_id``; inside the process that GPU is ``cuda:0``.

    ``gpu_memory_fraction`` (default: the service's ``-gpu_memory_fraction``) caps the caching
    allocator on that GPU.
    """
    if gpu_memory_fraction is None:
        gpu_memory_fraction = Settings.from_env().gpu_memory_fraction
    pin_device(device_id)
    import torch  # type: ignore[import-not-found]

    if device_id >= 0 and gpu_memory_fraction is not None and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(gpu_memory_fraction, 0)
    return torch


def pad_batch(
    inputs: Sequence[Any], length: int | None = None, *, pad_value: Any = 0, dtype: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pad inputs of different lengths into one ``(n, length, ...)`` array and its mask.

    ``length`` is the longest input's by default; pass a bucket's size (the ``batch_key`` of a
    bucketing worker) to give every batch of that bucket one shape. Inputs are padded along
    their first axis with ``pad_value``; the rest of their shape must agree. The mask is
    ``(n, length)`` booleans, True where an input has a real element: mean-pool with it, or
    hand it to an attention layer. ``dtype`` defaults to the inputs' common dtype.
    """
    arrays = [np.asarray(x) for x in inputs]
    for i, array in enumerate(arrays):
        if array.ndim == 0:
            raise ValueError(f"input {i} is a scalar; pad_batch pads sequences (1-D or more)")
        if array.shape[1:] != arrays[0].shape[1:]:
            raise ValueError(f"input {i} has shape {array.shape}; after the first axis it must "
                             f"match input 0's {arrays[0].shape}")
    longest = max((len(a) for a in arrays), default=0)
    if length is None:
        length = longest
    elif longest > length:
        index = next(i for i, a in enumerate(arrays) if len(a) == longest)
        raise ValueError(f"input {index} has length {longest}; longer than the padded length "
                         f"{length} (give a larger length, or None for the longest)")
    if dtype is None:  # an empty list makes a float64 array: let it not decide the dtype
        sized = [a.dtype for a in arrays if a.size] or [a.dtype for a in arrays]
        dtype = np.result_type(*sized) if sized else np.float64
    trailing = arrays[0].shape[1:] if arrays else ()
    padded = np.full((len(arrays), length, *trailing), pad_value, dtype=dtype)
    mask = np.zeros((len(arrays), length), dtype=bool)
    for i, array in enumerate(arrays):
        padded[i, :len(array)] = array
        mask[i, :len(array)] = True
    return padded, mask
