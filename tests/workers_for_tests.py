"""Worker classes the tests serve; each misbehaves in one deliberate way."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import numpy as np

from wkr_celery.server import WKRHardWorker


class EnvWorker(WKRHardWorker):
    """Answers each input with what its process was given: device, CUDA mask, pid."""

    def get_env(self, device_id: int, tmp_dir: str) -> Any:
        return {"device_id": device_id, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        return {**envs, "model_dir": model_dir, "model_name": model_name, "pid": os.getpid()}

    def predict(self, model: Any, input: Any) -> list[Any]:
        return [{**model, "input": x, "batch": len(input)} for x in input]


class BatchSizeWorker(WKRHardWorker):
    """Answers each input with the size of the batch it was predicted in; predict is slow
    enough (20 ms) that requests pile up behind it under concurrent load."""

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        return None

    def predict(self, model: Any, input: Any) -> list[Any]:
        time.sleep(0.02)
        return [{"x": x, "batch": len(input)} for x in input]


class PoisonWorker(WKRHardWorker):
    """Raises whenever a batch contains the string "poison"; doubles numbers otherwise."""

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        return None

    def predict(self, model: Any, input: Any) -> list[Any]:
        if any(x == "poison" for x in input):
            raise ValueError("cannot digest poison")
        if any(x == "die" for x in input):
            os._exit(13)
        return [x * 2 for x in input]


class WrongLengthWorker(WKRHardWorker):
    """Returns one result too few for batches of more than one input."""

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        return None

    def predict(self, model: Any, input: Any) -> list[Any]:
        return list(input)[:-1] if len(input) > 1 else list(input)


class _LenRaises:
    def __len__(self) -> int:
        return -1  # len() raises ValueError


class _IterRaises:
    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Any:
        raise RuntimeError("results are not ready")


class _UnreadableArray(np.ndarray):
    @property  # type: ignore[override]
    def shape(self) -> Any:
        raise RuntimeError("device memory is gone")


class BrokenResultsWorker(WKRHardWorker):
    """Returns results whose len() or iteration raises when a batch holds "badlen" or
    "baditer", a float128 array (no decoder reads it) for "float128", an array whose shape
    cannot be read for "unreadable"; doubles numbers otherwise."""

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        return None

    def predict(self, model: Any, input: Any) -> Any:
        if "badlen" in input:
            return _LenRaises()
        if "baditer" in input:
            return _IterRaises(len(input))
        odd = {"float128": lambda: np.ones(2, np.longdouble),
               "unreadable": lambda: np.ones(2, np.float32).view(_UnreadableArray)}
        return [odd[x]() if x in odd else x * 2 for x in input]


class GateWorker(WKRHardWorker):
    """Blocks predict until a file named by the input exists: lets a test hold a batch in
    predict (to stop or kill the worker mid-batch) and release it when it chooses."""

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        return threading.Event()

    def predict(self, model: Any, input: Any) -> list[Any]:
        for item in input:
            gate = item.get("gate") if isinstance(item, dict) else None
            if gate:
                with open(gate + ".entered", "w") as marker:
                    marker.write(str(os.getpid()))
                deadline = time.monotonic() + 60
                while not os.path.exists(gate) and time.monotonic() < deadline:
                    model.wait(0.01)
        return [np.asarray(item["value"]) * 2 if isinstance(item, dict) else item for item in input]


class InputTypeWorker(WKRHardWorker):
    """Declares float32 inputs of shape (3,) and answers each with what predict was given:
    its type and dtype, ``"list"`` for a list."""

    input_shape = (3,)
    input_dtype = "float32"

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        return None

    def predict(self, model: Any, input: Any) -> list[Any]:
        return [f"{type(x).__name__} {getattr(x, 'dtype', '')}".strip() for x in input]


class Int32InputTypeWorker(InputTypeWorker):
    """``InputTypeWorker`` declaring int32 inputs."""

    input_dtype = "int32"


class Uint8InputTypeWorker(InputTypeWorker):
    """``InputTypeWorker`` declaring uint8 inputs (an image model's pixels)."""

    input_dtype = "uint8"


def _unlucky(doubled: int) -> int:
    if doubled == 26:
        raise ValueError("13 is unlucky")
    return doubled


class ResultFormsWorker(WKRHardWorker):
    """Doubles numbers, returning them in the form the batch's first input names (each input is
    ``{"form": ..., "x": n}``): ``list``; ``generator``, one doubled number yielded per input;
    ``dict``, one dict of lists for the whole batch (``{"y": [...]}``, a batch's outputs by
    name, as a Hugging Face model returns them). A generator meeting ``x`` 13 raises there,
    after yielding the results before it: the work a generator does is done as it is read."""

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        return None

    def predict(self, model: Any, input: Any) -> Any:
        doubled = [2 * x["x"] for x in input]
        form = input[0]["form"]
        if form == "generator":
            return (_unlucky(y) for y in doubled)
        if form == "dict":
            return {"y": doubled}
        return doubled


class StatisticsWorker(WKRHardWorker):
    """Records, for each input ``{"record": {key: value}}``, those statistics: as a model
    whose score may be NaN, or whose author keys a statistic by request, would."""

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        return None

    def predict(self, model: Any, input: Any) -> list[Any]:
        for x in input:
            self.record_statistic({k: float(v) for k, v in x["record"].items()})
        return [len(x["record"]) for x in input]


class _NotAnError(BaseException):
    """A ``BaseException`` that is not an ``Exception``, as some libraries raise to unwind."""


class ExitingWorker(WKRHardWorker):
    """Doubles numbers; an input ``"exit"`` makes predict call ``sys.exit(1)``, ``"interrupt"``
    raise ``KeyboardInterrupt`` and ``"unwind"`` raise a bare ``BaseException`` subclass: user
    code that ends its thread, not the process."""

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        return None

    def predict(self, model: Any, input: Any) -> list[Any]:
        if "exit" in input:
            sys.exit(1)
        if "interrupt" in input:
            raise KeyboardInterrupt
        if "unwind" in input:
            raise _NotAnError("unwinding")
        return [x * 2 for x in input]


class KeyedExitingWorker(ExitingWorker):
    """``ExitingWorker`` whose ``batch_key`` (called in the fetching thread) does the exiting:
    ``"exit"`` calls ``sys.exit(1)``, ``"interrupt"`` raises ``KeyboardInterrupt``."""

    def batch_key(self, input: Any) -> Any:
        if input == "exit":
            sys.exit(1)
        if input == "interrupt":
            raise KeyboardInterrupt
        return type(input).__name__

    def predict(self, model: Any, input: Any) -> list[Any]:
        return [x * 2 for x in input]


class ThreadKeepingWorker(WKRHardWorker):
    """Doubles numbers; ``get_model`` starts a non-daemon thread that never ends (a metrics
    flusher a library starts and never joins) and leaves a never-ending task in a
    ``ThreadPoolExecutor`` (whose threads Python joins at exit, daemon or not)."""

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        import concurrent.futures
        forever = threading.Event()
        threading.Thread(target=forever.wait, name="user-flusher", daemon=False).start()
        concurrent.futures.ThreadPoolExecutor(1).submit(forever.wait)  # joined at exit
        return forever

    def predict(self, model: Any, input: Any) -> list[Any]:
        return [x * 2 for x in input]


class LoggingTakeoverWorker(PoisonWorker):
    """A model that sets up logging its own way in ``get_model``, as model code often does:
    ``basicConfig(force=True)`` (root's handlers replaced, its level raised to WARNING), then
    ``dictConfig`` (every logger it does not name disabled). It logs a WARNING of its own."""

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        import logging.config

        logging.basicConfig(force=True, level=logging.WARNING,
                            format="%(levelname)s:%(name)s:%(message)s")
        logging.config.dictConfig({"version": 1, "root": {"level": "WARNING"}})
        logging.getLogger("my_model").warning("my model's own setup is done")
        return None
