"""``WKRHardWorker``: the one class a user subclasses to serve a model."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

__all__ = ["WKRHardWorker", "Statistics", "MAX_STATISTIC_KEYS"]

#: Most ``record_statistic`` keys one worker process keeps. Each key is a metric of its own in
#: ``/metrics`` and a field of every heartbeat: a key per request (an id in the name) would
#: grow both without end.
MAX_STATISTIC_KEYS = 64

log = logging.getLogger("wkr_celery.server")


class Statistics:
    """Running count, sum, min and max per key passed to ``record_statistic``.

    Kept per worker process and shipped with each heartbeat, so the REST layer can export them
    without the worker doing any I/O on the request path.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, list[float]] = {}
        self._refused: set[tuple[str, str]] = set()  # (key, why): each said once in the log

    def record(self, values: Mapping[str, float]) -> None:
        """Add ``values``. A NaN or infinite value is left out: a sum it entered would stay
        NaN for good, Redis refuses to add it to the service's totals, and JSON cannot carry
        it to the status page. Past :data:`MAX_STATISTIC_KEYS` keys, new keys are left out."""
        with self._lock:
            for name, value in values.items():
                key, v = str(name), float(value)  # a key of another type: its text
                slot = self._values.get(key)
                if not math.isfinite(v):
                    self._refuse(key, str(v), f"{key!r} was given {v}; not recorded (only "
                                 "finite numbers are)")
                elif slot is None:
                    if len(self._values) >= MAX_STATISTIC_KEYS:
                        self._refuse("", "keys", f"more than {MAX_STATISTIC_KEYS} keys; "
                                     f"{key!r} and any later new key are not recorded")
                        continue
                    self._values[key] = [1.0, v, v, v]
                else:
                    slot[0] += 1
                    slot[1] += v
                    slot[2] = min(slot[2], v)
                    slot[3] = max(slot[3], v)

    def _refuse(self, key: str, why: str, message: str) -> None:
        if (key, why) not in self._refused:
            self._refused.add((key, why))
            log.warning("record_statistic: %s", message)

    def snapshot(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {
                key: {"count": c, "sum": s, "min": lo, "max": hi}
                for key, (c, s, lo, hi) in self._values.items()
            }


class WKRHardWorker:
    """Subclass this and override ``get_env``, ``get_model`` and ``predict``.

    Each worker process makes one instance and calls, from one thread, ``get_env`` then
    ``get_model`` once, then ``predict`` for every batch. Import heavy frameworks inside
    ``get_env``: it runs after the process is pinned to its device. That thread is not the
    process's main thread: ``signal.signal`` raises ``ValueError`` there, and ``sys.exit()``
    or ``KeyboardInterrupt`` in ``predict`` fails the input that raised it, like any error.

    Optional class attributes let clients refuse bad input before it travels:
    ``input_shape`` (shape of one input, ``None`` for any dimension) and ``input_dtype``.

    Optional methods shape batches of variable-size inputs: ``batch_key`` (inputs with different
    keys never share a batch) and ``batch_cost`` (a batch's costs sum to at most
    ``-max_batch_cost``). Left as they are, every input has one key and costs 1, and batches
    form by count alone without calling either.
    """

    input_shape: tuple[int | None, ...] | None = None
    input_dtype: str | None = None

    def __init__(self, name: str = "default", logger_name: str | None = None) -> None:
        self.name = name
        self._logger_name = logger_name or f"wkr_celery.worker.{name}"
        self.statistics = Statistics()

    def get_env(self, device_id: int, tmp_dir: str) -> Any:
        """Import what the model needs; ``device_id`` is -1 for CPU or the GPU id."""
        return []

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        """Load and return the model (anything ``predict`` needs)."""
        raise NotImplementedError(f"{type(self).__name__} must override get_model")

    def predict(self, model: Any, input: Any) -> Sequence[Any]:
        """Return one result per element of ``input`` (a stacked array or a list)."""
        raise NotImplementedError(f"{type(self).__name__} must override predict")

    def batch_key(self, input: Any) -> Hashable:
        """The group ``input`` batches with, e.g. its length bucket; one key by default.

        Called once per input, on the decoded input that passed the input checks, in the
        thread that fetches (not the one that predicts): keep it cheap and leave the model alone.
        An input whose key cannot be computed (it raises) fails with that error.
        """
        return None

    def batch_cost(self, input: Any) -> float:
        """What ``input`` costs a batch, e.g. its tokens after padding; 1 by default.

        Only read when ``-max_batch_cost`` is set: a batch then takes inputs of one key, oldest
        first, while their costs sum to at most that cap. An input that costs more than the cap
        on its own is predicted alone. Called like :meth:`batch_key`.
        """
        return 1

    def record_statistic(self, stats: Mapping[str, float]) -> None:
        """Record numbers (ms, sizes…) that the dashboard and ``/metrics`` show per key."""
        self.statistics.record(stats)

    def new_logger(self) -> logging.Logger:
        """A logger whose records go to ``<log_dir>/<name>.log`` (errors also to ``.err``)."""
        return logging.getLogger(self._logger_name)
