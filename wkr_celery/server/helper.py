"""Helpers the seed's server examples import: the flag parser and device-pinned imports.

``import_tf`` and ``import_torch`` set ``CUDA_VISIBLE_DEVICES`` before the framework is imported,
so the process only ever sees its own device; call them from ``get_env``.
"""

from __future__ import annotations

import argparse
import os
from types import ModuleType

from ..config import Settings, build_parser

__all__ = ["get_args_parser", "import_tf", "import_torch", "pin_device"]


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
