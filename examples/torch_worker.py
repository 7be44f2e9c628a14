"""A PyTorch model served by wkr-celery: a small transformer encoder built from ``torch.nn``.

Each input is a float32 array of shape (16, 32), a sequence of 16 tokens with 32 features; each
result is a float32 vector of 128. The weights are random, drawn from a fixed seed by the setup
step and saved, so every worker process (and ``examples/onnx_worker.py``, through the ONNX file the
same step exports) loads exactly the same model::

    cd examples && python torch_worker.py --setup /tmp/torch-model
    cd examples && wkr-serving-start torch_worker.Worker -model_dir /tmp/torch-model -protocol npy

Add ``-device_map 0`` to run it on GPU 0 (a CUDA build of torch): ``import_torch`` pins the worker
process to that GPU before torch is imported, so inside the process it is ``cuda:0``. Each worker
uses ``OMP_NUM_THREADS`` math threads (``wkr-serving-start`` sets 1 per worker unless you set it).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from wkr_celery import ConfigError
from wkr_celery.server import WKRHardWorker
from wkr_celery.server.helper import import_torch

SEQ_LEN, FEATURES, OUT_DIM, SEED = 16, 32, 128, 0
WEIGHTS_FILE, ONNX_FILE = "weights.pt", "model.onnx"


def build_model(torch: ModuleType) -> Any:
    """The architecture, with fresh (random) weights: project, two encoder layers, a head."""
    nn = torch.nn
    layer = nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128, dropout=0.0,
                                       batch_first=True)
    return nn.Sequential(
        nn.Linear(FEATURES, 64),
        nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False),
        nn.Flatten(),
        nn.Linear(SEQ_LEN * 64, OUT_DIM),
        nn.Tanh(),
    )


def load_model(torch: ModuleType, model_dir: str, device: Any = "cpu") -> Any:
    """The model with the weights the setup step saved in ``model_dir``, in eval mode."""
    if not model_dir:
        raise ConfigError("-model_dir is empty: run `python torch_worker.py --setup DIR` once, "
                          "then start the service with -model_dir DIR")
    path = Path(model_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: run `python torch_worker.py --setup "
                          f"{model_dir}` first")
    model = build_model(torch)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.to(device).eval()


def threads_per_worker() -> int:
    """Math threads for one worker: ``OMP_NUM_THREADS``, which wkr-serving-start sets to 1."""
    text = os.environ.get("OMP_NUM_THREADS", "1")
    try:
        threads = int(text)
    except ValueError:
        raise ConfigError(f"OMP_NUM_THREADS={text!r} is not a whole number of threads") from None
    if threads < 1:
        raise ConfigError(f"OMP_NUM_THREADS={threads} is below 1; use 1 or more threads")
    return threads


def save_weights(model_dir: Path) -> Path:
    """Draw the weights from ``SEED`` and save them: every process then loads the same model."""
    import torch

    model_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    path = model_dir / WEIGHTS_FILE
    torch.save(build_model(torch).state_dict(), path)
    return path


def export_onnx(model_dir: Path) -> Path:
    """Export the saved model to ONNX, with the batch dimension left free, for onnx_worker.py."""
    import torch

    path = model_dir / ONNX_FILE
    example = torch.zeros(2, SEQ_LEN, FEATURES)
    # The torch.export-based exporter (the one torch keeps; it needs onnxscript). Its notes about
    # torchvision and its own deprecations say nothing about this model: kept off the terminal.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(load_model(torch, str(model_dir)), (example,), str(path),
                          input_names=["tokens"], output_names=["vector"], dynamo=True,
                          external_data=False, verbose=False,
                          dynamic_shapes=({0: torch.export.Dim("batch")},))
    return path


class Worker(WKRHardWorker):
    input_shape = (SEQ_LEN, FEATURES)
    input_dtype = "float32"

    def get_env(self, device_id: int, tmp_dir: str) -> Any:
        torch = import_torch(device_id)  # pins the device first: this GPU is cuda:0 from here on
        if device_id >= 0 and not torch.cuda.is_available():
            raise ConfigError(
                f"-device_map {device_id} asks for a GPU, but torch {torch.__version__} sees "
                f"none (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); "
                "install a CUDA build of torch or use -device_map -1")
        torch.set_num_threads(threads_per_worker())
        torch.set_num_interop_threads(1)  # one batch at a time: no parallel operators to overlap
        device = torch.device("cuda:0" if device_id >= 0 else "cpu")
        return torch, device, self.new_logger()

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        torch, device, logger = envs
        model = load_model(torch, model_dir, device)
        on = next(model.parameters()).device
        logger.info("torch %s model loaded from %s on %s, %d threads", torch.__version__,
                    model_dir, on, torch.get_num_threads())
        # Reported with every heartbeat: where the model is and how many threads it has.
        self.record_statistic({"torch_threads": torch.get_num_threads(),
                               "torch_on_cuda": float(on.type == "cuda")})
        return torch, model, device

    def predict(self, model: Any, input: Any) -> Any:
        torch, net, device = model
        start = time.perf_counter()
        batch = torch.from_numpy(np.ascontiguousarray(input, dtype=np.float32)).to(device)
        with torch.inference_mode():
            out = net(batch).cpu().numpy()
        self.record_statistic({"predict_ms_per_item": (time.perf_counter() - start) * 1000
                               / len(out), "batchsize": len(out)})
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", type=Path, required=True, metavar="DIR",
                        help=f"write {WEIGHTS_FILE} and {ONNX_FILE} into DIR")
    args = parser.parse_args()
    print(f"wrote {save_weights(args.setup)} and {export_onnx(args.setup)}")


if __name__ == "__main__":
    main()
