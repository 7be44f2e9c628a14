"""``python -m benchmarks.varlen``: token sequences of 8 to 512 tokens, with and without buckets.

Each configuration gets a fresh embedded Redis and one ``wkr-serving-start`` worker of
``workers.text_embed`` (embedding lookup + masked mean pooling in numpy), or of ``Encoder``
(the same with a dense layer per token, so compute grows with padded tokens). The same requests
(lengths drawn log-uniformly, so short ones are common and long ones cost the most) are sent
with ``--inflight`` in flight; every answer is checked against numpy. Padding waste is
``1 - real tokens / padded tokens`` over every batch the worker ran, read from the statistics
the worker records; throughput is requests and real tokens per second of wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from wkr_celery.server import pad_batch
from wkr_celery.server.hardworker import WKRHardWorker
from workers.text_embed import DIM, VOCABULARY, bucket, make_table
from workers.text_embed import Worker as TextEmbed

from .systems import ROOT, free_port

HIDDEN = 256


def make_layer(dim: int = DIM, hidden: int = HIDDEN, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((dim, hidden)) / np.sqrt(dim)).astype(np.float32)


class Encoder(TextEmbed):
    """``workers.text_embed`` plus one dense layer per token, ``tanh(E[ids] @ W)``, before the
    pooling: its cost grows with the padded tokens, as a transformer's does (and faster)."""

    def get_model(self, envs: Any, model_dir: str, model_name: str, tmp_dir: str) -> Any:
        return make_table(), make_layer()

    def predict(self, model: Any, input: Any) -> Any:
        table, layer = model
        lengths = [len(x) for x in input]
        longest = max(lengths)
        ids, mask = pad_batch(input, bucket(longest) if self.pad_to_bucket else longest)
        hidden = np.tanh(table[ids] @ layer) * mask[:, :, None]
        self.record_statistic({"batchsize": len(input), "tokens": sum(lengths),
                               "padded_tokens": ids.size})
        return hidden.sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1)


class _OneKey:
    """The baseline: no ``batch_key`` / ``batch_cost`` (batches by count, any lengths mixed),
    each batch padded to its longest input."""

    batch_key = WKRHardWorker.batch_key
    batch_cost = WKRHardWorker.batch_cost
    pad_to_bucket = False


class OneKeyEmbed(_OneKey, TextEmbed):  # type: ignore[misc]
    pass


class OneKeyEncoder(_OneKey, Encoder):  # type: ignore[misc]
    pass


#: model -> (bucketing worker class, baseline worker class)
MODELS = {
    "embed": ("workers.text_embed.Worker", "benchmarks.varlen.OneKeyEmbed"),
    "encoder": ("benchmarks.varlen.Encoder", "benchmarks.varlen.OneKeyEncoder"),
}

#: (label, bucketing?, extra flags)
CONFIGS: list[tuple[str, bool, list[str]]] = [
    ("one key, pad to longest", False, []),
    ("length buckets", True, []),
    ("length buckets, -prefetch 8", True, ["-prefetch", "8"]),
    ("length buckets, -prefetch 8 -max_batch_cost 4096", True,
     ["-prefetch", "8", "-max_batch_cost", "4096"]),
]


def expected(model: str, x: np.ndarray, table: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """The answer computed directly, one input at a time."""
    return (table[x] if model == "embed" else np.tanh(table[x] @ layer)).mean(axis=0)


def make_inputs(count: int, seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = np.exp(rng.uniform(np.log(8), np.log(512), count)).astype(int)
    return [rng.integers(0, VOCABULARY, n, dtype=np.int32) for n in lengths]


def _worker_stats(client: Any, at_least: int, timeout: float = 30) -> dict[str, Any]:
    """The worker's heartbeat once it counts ``at_least`` requests (it lags up to a second)."""
    deadline = time.monotonic() + timeout
    while True:
        workers = list(client.server_status()["workers"].values())
        if workers and sum(w["requests"] for w in workers) >= at_least:
            return workers[0]
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers did not report {at_least} requests in {timeout}s")
        time.sleep(0.1)


def _drive(client: Any, inputs: list[np.ndarray], inflight: int) -> list[np.ndarray]:
    pending: deque[Any] = deque()
    answers = []
    for x in inputs:
        if len(pending) >= inflight:
            answers.append(pending.popleft().result(timeout=120))
        pending.append(client.encode(x))
    answers.extend(f.result(timeout=120) for f in pending)
    return answers


def run_config(model: str, label: str, worker: str, flags: list[str], warmup: list[np.ndarray],
               inputs: list[np.ndarray], args: argparse.Namespace, run_dir: Path
               ) -> dict[str, Any]:
    from wkr_celery.client import WKRClient
    from wkr_celery.redis_embedded import EmbeddedRedis

    name = f"varlen{uuid.uuid4().hex[:6]}"
    record: dict[str, Any] = {"model": model, "config": label, "flags": " ".join(flags)}
    with EmbeddedRedis(free_port()) as redis_server:
        log = open(run_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [sys.executable, "-m", "wkr_celery.server.cli", worker, "-name", name,
             "-broker_url", redis_server.url, "-batch_size", str(args.batch_size), *flags],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        client = WKRClient(name=name, broker_url=redis_server.url, connect_timeout=60)
        try:
            _drive(client, warmup, args.inflight)
            before = _worker_stats(client, len(warmup))["statistics"]
            started = time.perf_counter()
            answers = _drive(client, inputs, args.inflight)
            seconds = time.perf_counter() - started
            after = _worker_stats(client, len(warmup) + len(inputs))["statistics"]
        finally:
            client.close()
            proc.terminate()
            proc.wait(30)
            log.close()
    table, layer = make_table(), make_layer()
    wrong = sum(not np.allclose(a, expected(model, x, table, layer), rtol=1e-4, atol=1e-5)
                for x, a in zip(inputs, answers, strict=True))

    def delta(key: str, field: str) -> float:
        return float(after[key][field] - before.get(key, {}).get(field, 0))

    tokens, padded = delta("tokens", "sum"), delta("padded_tokens", "sum")
    batches = delta("batchsize", "count")
    record.update(
        requests=len(inputs), warmup=len(warmup), wrong=wrong, seconds=round(seconds, 2),
        requests_per_s=round(len(inputs) / seconds, 1),
        tokens_per_s=round(tokens / seconds),
        padding_waste=round(1 - tokens / padded, 3),
        mean_batch=round(len(inputs) / batches, 1),
    )
    return record


def _print(r: dict[str, Any]) -> None:
    print(f"{r['model']:8} {r['config']:50} waste {r['padding_waste']:6.1%}"
          f"  {r['requests_per_s']:7.1f} req/s  {r['tokens_per_s']:8d} tokens/s"
          f"  mean batch {r['mean_batch']:5.1f}  wrong {r['wrong']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.varlen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--inflight", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--models", default="embed,encoder",
                        help="embed (lookup + pooling), encoder (plus a dense layer per token)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration; "
                        "the median of each figure is printed last")
    parser.add_argument("--out", type=Path, default=None, help="also write the records as JSON")
    args = parser.parse_args(argv)
    if set(args.models.split(",")) - set(MODELS):
        parser.error(f"--models takes a comma-separated list of {sorted(MODELS)}")
    inputs = make_inputs(args.warmup + args.requests)
    lengths = np.array([len(x) for x in inputs])
    print(f"{args.requests} requests of {lengths.min()}-{lengths.max()} tokens (median "
          f"{int(np.median(lengths))}), {args.inflight} in flight, -batch_size {args.batch_size}, "
          "one worker process")
    records = []
    with tempfile.TemporaryDirectory(prefix="wkr-varlen-") as run_dir:
        for round_ in range(args.repeat):  # configurations interleaved: drift hits them all
            for model in args.models.split(","):
                for label, bucketing, flags in CONFIGS:
                    worker = MODELS[model][0 if bucketing else 1]
                    record = run_config(model, label, worker, flags, inputs[:args.warmup],
                                        inputs[args.warmup:], args, Path(run_dir))
                    records.append(record | {"round": round_})
                    _print(record)
    if args.repeat > 1:
        print(f"median of {args.repeat} runs:")
        for model in args.models.split(","):
            for label, _, _ in CONFIGS:
                runs = [r for r in records if r["model"] == model and r["config"] == label]
                _print({key: runs[0][key] if isinstance(runs[0][key], str) else
                        type(runs[0][key])(np.median([r[key] for r in runs]))
                        for key in runs[0]})
    if args.out:
        args.out.write_text(json.dumps(records, indent=2) + "\n")
    return 1 if any(r["wrong"] for r in records) else 0


if __name__ == "__main__":
    raise SystemExit(main())
