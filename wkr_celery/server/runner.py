"""The one place that calls the user's code, and owns its contract checks.

``predict`` gets a batch and must return one result per input. When it raises (``sys.exit()``
and ``KeyboardInterrupt`` included: in this thread they are errors of its input), the batch is
split in halves until the inputs that make it raise are found: only those fail, with the
traceback; every other input still gets its result. A generator ``predict`` returned is read
here as part of the call: its body is ``predict``'s own code, run late. A wrong number of
results fails the whole batch with an error that says so, because nothing tells which result
belongs to which input.
The worker's ``batch_key`` / ``batch_cost``, when it declares them, are called here too
(:meth:`ModelRunner.batch_traits`), for the buffer that forms batches.
"""

from __future__ import annotations

import itertools
import math
import traceback
import types
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from ..clock import wall_time
from ..codec import tensor_as_array
from ..config import Settings
from ..errors import (
    BatchContractError,
    DeadlineExceeded,
    InvalidInput,
    PoisonInput,
    PredictError,
    RequestFailed,
)
from ..inputs import InputSpec
from ..logs import keep_own_logs
from .hardworker import WKRHardWorker
from .request import Outcome, Request

__all__ = ["ModelRunner"]


class ModelRunner:
    """Holds one model and turns batches of requests into outcomes.

    ``clock`` tells the time deadlines are checked against: the broker Redis's
    (``RedisClock.now``) in a worker, the clock clients set them on.
    """

    def __init__(self, worker: WKRHardWorker, settings: Settings, device_id: int,
                 clock: Callable[[], float] = wall_time) -> None:
        self.worker = worker
        self.clock = clock
        self.settings = settings
        self.device_id = device_id
        self.model: Any = None
        self.spec = InputSpec.of_worker(settings.protocol, worker.input_shape, worker.input_dtype,
                                        settings.max_payload)
        self._keyed = _overrides(worker, "batch_key")
        self._costed = settings.max_batch_cost > 0 and _overrides(worker, "batch_cost")
        #: Batches form by key and cost (a KeyedRequestBuffer), not by count alone.
        self.batches_by_traits = self._keyed or settings.max_batch_cost > 0

    def load(self, tmp_dir: str) -> None:
        envs = self.worker.get_env(self.device_id, tmp_dir)
        self.model = self.worker.get_model(
            envs, self.settings.model_dir, self.settings.model_name, tmp_dir
        )
        keep_own_logs()  # get_model may have disabled our loggers (logging.config.dictConfig)

    def run(self, batch: Sequence[Request]) -> list[Outcome]:
        """One outcome per request, in order; never raises for a request's sake."""
        outcomes: list[Outcome | None] = [None] * len(batch)
        now = self.clock()
        groups: dict[Any, list[int]] = {}
        for i, request in enumerate(batch):
            problem = self._refusal(request, now)
            if problem is not None:
                outcomes[i] = Outcome(error=problem)
                continue
            groups.setdefault(self._group_key(request.payload), []).append(i)
        for indices in groups.values():
            self._predict(batch, indices, outcomes)
        return [o if o is not None else Outcome(error=PredictError("no outcome")) for o in outcomes]

    def batch_traits(self, request: Request) -> tuple[Hashable, float] | None:
        """``(key, cost)`` of a request; ``None`` when it will be answered without predict.

        Only inputs that pass the input checks reach the user's ``batch_key``/``batch_cost``;
        when one raises or returns a cost that is not a number >= 0, that request fails with
        the reason and no other request is affected.
        """
        if request.error is not None or self.spec.problem(request.payload) is not None:
            return None
        payload = request.payload = self.spec.conform(request.payload)
        try:
            key = self.worker.batch_key(payload) if self._keyed else None
            hash(key)
        except BaseException as exc:  # sys.exit() too: see _predict
            request.error = PredictError(f"batch_key raised {type(exc).__name__}: {exc}")
            return None
        if not self._costed:
            return key, 1.0
        try:
            raw_cost = self.worker.batch_cost(payload)
            cost = float(raw_cost)
        except BaseException as exc:
            request.error = PredictError(f"batch_cost raised {type(exc).__name__}: {exc}")
            return None
        if not (math.isfinite(cost) and cost >= 0):
            request.error = BatchContractError(
                f"batch_cost returned {raw_cost!r}; it must be a finite number >= 0")
            return None
        return key, cost

    # Checks -------------------------------------------------------------------------------

    def _refusal(self, request: Request, now: float) -> RequestFailed | None:
        if request.error is not None:
            return request.error
        if request.deaths >= self.settings.max_attempts:
            return PoisonInput(
                f"this input was in predict each of the {request.deaths} times a worker process "
                f"died (limit {self.settings.max_attempts}); it is not tried again"
            )
        if request.deadline is not None and request.deadline <= now:
            late = (now - request.deadline) * 1000
            return DeadlineExceeded(f"deadline passed {late:.0f} ms before predict; dropped")
        problem = self.spec.problem(request.payload)
        if problem is not None:
            return InvalidInput(problem)
        request.payload = self.spec.conform(request.payload)  # what predict gets
        return None

    def _group_key(self, payload: Any) -> Any:
        if self.settings.protocol == "npy":
            return (payload.shape, payload.dtype)
        return None

    # Predict ------------------------------------------------------------------------------

    def _inputs(self, batch: Sequence[Request], indices: Sequence[int]) -> Any:
        payloads = [batch[i].payload for i in indices]
        if self.settings.protocol == "npy":  # one shape and dtype (_group_key): np.stack's
            return np.array(payloads)  # result, without its per-array checks (3x faster)
        return payloads

    def _predict(
        self, batch: Sequence[Request], indices: list[int], outcomes: list[Outcome | None]
    ) -> None:
        try:
            results = self.worker.predict(self.model, self._inputs(batch, indices))
            if isinstance(results, types.GeneratorType):  # up to one past the batch
                results = list(itertools.islice(results, len(indices) + 1))
        except BaseException as exc:
            # sys.exit(), KeyboardInterrupt and other BaseExceptions too: this is not the main
            # thread, so no signal raises here, and in a thread they end only the thread. Let
            # through, they ended this process (the thread's guard exits): the batch waited for
            # a restart and its culprit failed as PoisonInput after max_attempts restarts.
            if len(indices) > 1:
                half = len(indices) // 2
                self._predict(batch, indices[:half], outcomes)
                self._predict(batch, indices[half:], outcomes)
                return
            outcomes[indices[0]] = Outcome(
                error=PredictError(f"predict raised {type(exc).__name__}: {exc}"),
                traceback=traceback.format_exc(),
            )
            return
        values, problem = _one_each(results, len(indices))
        if problem is not None:
            error = BatchContractError(
                f"predict returned {problem} for a batch of {len(indices)} inputs; "
                "it must return one result per input"
            )
            for i in indices:
                outcomes[i] = Outcome(error=error)
            return
        for i, result in zip(indices, values):
            outcomes[i] = Outcome(value=result)


def _one_each(results: Any, expected: int) -> tuple[list[Any], str | None]:
    """``predict``'s results as a list, or what is wrong with them. Any error taking their
    length or iterating them is the batch's contract broken, never the worker's death: the
    predictor thread runs this, and a thread that dies takes every caller's batch with it.
    A batch returned as one torch tensor is copied to the CPU here, once, not row by row; a
    generator is read up to one result past the batch; a dict or a string is one value, never
    one result per input (iterating a dict gives its keys: each caller would get a key)."""
    if isinstance(results, (Mapping, str, bytes)):
        return [], (f"a {type(results).__name__}, one value (return a list with one result "
                    "per input, e.g. one dict per input)")
    try:
        results = tensor_as_array(results)
    except Exception as exc:
        return [], f"a tensor that cannot be read as numpy ({type(exc).__name__}: {exc})"
    try:
        count = len(results)
    except TypeError:  # no length: a generator or another iterable
        return _iterated(results, expected)
    except Exception as exc:
        return [], f"a result whose len() raised {type(exc).__name__}: {exc}"
    if count != expected:
        return [], f"{count} results"
    try:
        values = list(results)
    except Exception as exc:
        return [], f"a result whose iteration raised {type(exc).__name__}: {exc}"
    if len(values) != expected:
        return [], f"a result of length {count} that iterated {len(values)} values"
    return values, None


def _iterated(results: Any, expected: int) -> tuple[list[Any], str | None]:
    """The results of an iterable without a length, read up to one past ``expected``."""
    try:
        iterator = iter(results)
    except TypeError:
        return [], "a result without a length"
    try:
        values = list(itertools.islice(iterator, expected + 1))
    except Exception as exc:
        return [], f"a result whose iteration raised {type(exc).__name__}: {exc}"
    if len(values) != expected:
        return [], f"{'more than ' if len(values) > expected else ''}{min(len(values), expected)} results"
    return values, None


def _overrides(worker: WKRHardWorker, method: str) -> bool:
    """Whether the worker's class replaces ``WKRHardWorker``'s default ``method``."""
    return getattr(type(worker), method) is not getattr(WKRHardWorker, method)
