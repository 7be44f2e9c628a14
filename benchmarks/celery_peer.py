"""The Celery peers: plain Celery (one task per input) and celery-batches, same model.

Worker side: ``celery -A benchmarks.celery_peer worker --pool solo`` with ``BENCH_BROKER``,
``BENCH_BACKEND``, ``BENCH_WORKLOAD`` and ``BENCH_BATCH`` in the environment. Client side:
``make_app(broker, backend)`` and ``send_task`` by name, so the client never loads the model.
Both sides use msgpack-numpy for arguments and results (registered with kombu as ``bench-npy``):
as fast as pickle for arrays, and Celery does not refuse it when run as root.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from celery import Celery, signals

PLAIN_TASK = "benchmarks.predict_one"
BATCH_TASK = "benchmarks.predict_batch"
READY_PREFIX = "ready-"
SERIALIZER = "bench-npy"


def _register_serializer() -> None:
    import msgpack
    import msgpack_numpy
    from kombu.serialization import register

    register(SERIALIZER, lambda obj: msgpack.packb(obj, default=msgpack_numpy.encode),
             lambda data: msgpack.unpackb(data, object_hook=msgpack_numpy.decode,
                                          strict_map_key=False),
             content_type="application/x-bench-npy", content_encoding="binary")


def make_app(broker: str, backend: str, *, prefetch: int = 4) -> Celery:
    _register_serializer()
    app = Celery("benchmarks", broker=broker, backend=backend)
    app.conf.update(
        task_serializer=SERIALIZER, result_serializer=SERIALIZER, accept_content=[SERIALIZER],
        result_accept_content=[SERIALIZER], result_expires=600, task_ignore_result=False,
        worker_prefetch_multiplier=prefetch, broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False, task_default_queue="bench",
    )
    return app


_model: Any = None


def _get_model() -> Any:
    global _model
    if _model is None:
        from .model import Model

        _model = Model(os.environ.get("BENCH_WORKLOAD", "tiny"))
    return _model


def _build_worker_app() -> Celery:
    batch = int(os.environ.get("BENCH_BATCH", "32"))
    app = make_app(os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/0"),
                   os.environ.get("BENCH_BACKEND", "redis://127.0.0.1:6379/0"),
                   prefetch=int(os.environ.get("BENCH_PREFETCH", "4")))

    @app.task(name=PLAIN_TASK)
    def predict_one(x: np.ndarray) -> np.ndarray:
        return _get_model()(x)

    try:
        from celery_batches import Batches
    except ImportError:  # celery-batches is in the bench extra; plain Celery still works
        return app

    @app.task(name=BATCH_TASK, base=Batches, flush_every=batch,
              flush_interval=float(os.environ.get("BENCH_FLUSH_INTERVAL", "0.005")))
    def predict_batch(requests: list[Any]) -> None:
        out = _get_model()(np.stack([r.args[0] for r in requests]))
        for request, result in zip(requests, out, strict=True):
            app.backend.mark_as_done(request.id, result, request=request)

    return app


@signals.worker_ready.connect
def _announce_ready(**_: Any) -> None:
    """Tell the harness this worker consumes (a file, so no extra traffic on the broker)."""
    _get_model()
    stats_dir = os.environ.get("BENCH_STATS_DIR")
    if stats_dir:
        (Path(stats_dir) / f"{READY_PREFIX}{os.getpid()}").touch()


app = _build_worker_app()
