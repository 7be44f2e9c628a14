"""The model of ``torch_worker.py``, served through ONNX Runtime: no torch in the worker.

The setup step of ``torch_worker.py`` exports the model to ``model.onnx`` next to its weights::

    cd examples && python torch_worker.py --setup /tmp/torch-model
    cd examples && wkr-serving-start onnx_worker.Worker -model_dir /tmp/torch-model -protocol npy

Inputs and results are those of ``torch_worker.py``: float32 (16, 32) in, float32 (128,) out.
With ``-device_map 0`` the session runs on CUDA, which needs the ``onnxruntime-gpu`` package.
Each worker's session uses ``OMP_NUM_THREADS`` intra-op threads (1 unless you set it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from torch_worker import FEATURES, ONNX_FILE, SEQ_LEN, threads_per_worker

from wkr_celery import ConfigError
from wkr_celery.server import WKRHardWorker
from wkr_celery.server.helper import pin_device


class Worker(WKRHardWorker):
    input_shape = (SEQ_LEN, FEATURES)
    input_dtype = "float32"

    def get_env(self, device_id: int, tmp_dir: str) -> Any:
        pin_device(device_id)  # before onnxruntime loads CUDA: this GPU is device 0 from here on
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device_id >= 0:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ConfigError(
                    f"-device_map {device_id} asks for a GPU, but onnxruntime "
                    f"{ort.__version__} has no CUDAExecutionProvider; install onnxruntime-gpu "
                    "or use -device_map -1")
            providers.insert(0, "CUDAExecutionProvider")
        return ort, providers, self.new_logger()

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        ort, providers, logger = envs
        path = Path(model_dir) / (model_name or ONNX_FILE)
        if not model_dir or not path.is_file():
            raise ConfigError(f"no ONNX model at {str(path)!r}: run `python torch_worker.py "
                              "--setup DIR` once, then start the service with -model_dir DIR")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads_per_worker()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        threads = session.get_session_options().intra_op_num_threads
        logger.info("onnxruntime %s session from %s on %s, %d threads", ort.__version__, path,
                    session.get_providers(), threads)
        # Reported with every heartbeat: where the session runs and how many threads it has.
        self.record_statistic({"onnx_threads": threads, "onnx_on_cuda":
                               float(session.get_providers()[0] == "CUDAExecutionProvider")})
        return session, session.get_inputs()[0].name

    def predict(self, model: Any, input: Any) -> Any:
        session, input_name = model
        start = time.perf_counter()
        batch = np.ascontiguousarray(input, dtype=np.float32)
        (out,) = session.run(None, {input_name: batch})
        self.record_statistic({"predict_ms_per_item": (time.perf_counter() - start) * 1000
                               / len(out), "batchsize": len(out)})
        return out
