"""Variable-length inputs end to end: text tokenized with ``tokenizers`` (a vocabulary this test
trains itself, no downloads), token ids sent through a real service running
``workers.text_embed.Worker`` with ``-max_batch_cost``, each answer checked against the same
embedding computed directly in numpy; ``pad_batch``, the helper its ``predict`` uses; and the
mixed-length benchmark's harness (figures are never asserted: the test box is shared)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from benchmarks.varlen import CONFIGS, MODELS
from tests.helpers import ROOT, Service, wait_until
from wkr_celery import InputError, PredictError
from wkr_celery.server import pad_batch
from workers.text_embed import VOCABULARY, bucket, make_table

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hex "
         "jovial kings under amber skies and rivers of silver light").split()


def _sentences(count: int, seed: int = 7) -> list[str]:
    """Sentences of 0 to 500 words, so their token counts span the length buckets; half of them
    long enough that a few of them together exceed the test's ``-max_batch_cost``."""
    rng = random.Random(seed)
    lengths = [0, 1, 7, 8, 9, 500] + [rng.choice([rng.randint(1, 20), rng.randint(200, 500)])
                                      for _ in range(count - 6)]
    return [" ".join(rng.choice(WORDS) for _ in range(n)) for n in lengths]


def _tokenizer(corpus: list[str]) -> Tokenizer:
    """A byte-pair tokenizer trained on ``corpus``: words split into subword tokens."""
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["[UNK]"], show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


def test_token_sequences_of_mixed_lengths_are_embedded_as_numpy_would(
    make_service: Callable[..., Service],
) -> None:
    sentences = _sentences(60)
    tokenizer = _tokenizer(sentences)
    assert tokenizer.get_vocab_size() < VOCABULARY
    ids = [encoding.ids for encoding in tokenizer.encode_batch(sentences)]
    lengths = {len(x) for x in ids}
    assert 0 in lengths and max(lengths) > 256, "the inputs should span the buckets"
    # The way a user would send them: numpy arrays of either width, or the plain id lists.
    inputs: list[Any] = [np.array(x, dtype=(np.int32, np.int64)[i % 2]) if i % 3 else x
                         for i, x in enumerate(ids)]

    service = make_service("workers.text_embed.Worker", "-batch_size", "16", "-prefetch", "4",
                           "-max_batch_cost", "1024")
    client = service.client()
    # Queue every input while the worker is paused, so it finds them all at once and the
    # batches are formed by the keys and the cost cap, not by how the requests trickled in.
    worker_pid = next(iter(service.wait_workers(1).values()))["pid"]
    os.kill(worker_pid, signal.SIGSTOP)
    try:
        futures = [client.encode(x) for x in inputs]
    finally:
        os.kill(worker_pid, signal.SIGCONT)
    answers = [f.result(timeout=60) for f in futures]

    table = make_table()
    for x, answer in zip(ids, answers, strict=True):
        expected = table[x].mean(axis=0) if x else np.zeros(table.shape[1], np.float32)
        assert answer.shape == expected.shape
        np.testing.assert_allclose(answer, expected, rtol=1e-5, atol=1e-6)
    stats = wait_until(lambda: (lambda w: w["statistics"] if w["requests"] >= len(inputs) else None)(
        next(iter(service.live_workers().values()))), 30, what="the heartbeat to count every input")
    assert 1 < stats["batchsize"]["max"] <= 16
    assert stats["padded_tokens"]["max"] <= 1024, "a batch went over -max_batch_cost"

def test_bad_token_ids_fail_alone_and_the_rest_are_answered(
    make_service: Callable[..., Service],
) -> None:
    service = make_service("workers.text_embed.Worker", "-max_batch_cost", "256")
    client = service.client()
    good = [[1, 2, 3], [4] * 20]
    futures = [client.encode(x) for x in (good[0], [VOCABULARY], good[1], [0.5, 1.5])]
    table = make_table()
    np.testing.assert_allclose(futures[0].result(timeout=30), table[good[0]].mean(0), rtol=1e-5)
    np.testing.assert_allclose(futures[2].result(timeout=30), table[good[1]].mean(0), rtol=1e-5)
    with pytest.raises(PredictError, match=f"token id {VOCABULARY} is outside the vocabulary"):
        futures[1].result(timeout=30)
    with pytest.raises(PredictError, match="token ids must be integers"):
        futures[3].result(timeout=30)
    for not_a_sequence in ([[1, 2]], "not tokens"):  # input_shape = (None,) refuses these
        with pytest.raises(InputError, match=r"this service takes"):
            client.encode(not_a_sequence)

def test_pad_batch_pads_to_the_longest_or_to_a_given_length_with_a_mask() -> None:
    padded, mask = pad_batch([np.array([5, 6, 7], np.int32), np.array([8], np.int32), []])
    assert padded.dtype == np.int32 and padded.shape == (3, 3)  # an empty list has no say
    assert padded.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[True] * 3, [True, False, False], [False] * 3]

    padded, mask = pad_batch([[1, 2], [3]], bucket(2), pad_value=-1)
    assert padded.shape == (2, 8) and padded[1].tolist() == [3] + [-1] * 7
    assert mask.sum(axis=1).tolist() == [2, 1]

    frames, mask = pad_batch([np.ones((2, 4)), np.ones((5, 4))])  # sequences of vectors
    assert frames.shape == (2, 5, 4) and mask.sum() == 7 and frames[0, 2:].sum() == 0


def test_pad_batch_names_the_input_that_does_not_fit() -> None:
    with pytest.raises(ValueError, match="input 1 has length 9; longer than the padded length 8"):
        pad_batch([[1], list(range(9))], 8)
    with pytest.raises(ValueError, match=r"input 1 has shape \(2, 3\)"):
        pad_batch([np.ones((2, 4)), np.ones((2, 3))])
    with pytest.raises(ValueError, match="input 0 is a scalar"):
        pad_batch([3])


def test_the_mixed_length_benchmark_runs_and_checks_every_answer(tmp_path: Path) -> None:
    out = tmp_path / "varlen.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.varlen", "--requests", "60", "--warmup", "10",
         "--inflight", "32", "--out", str(out)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=110)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = json.loads(out.read_text())
    assert [(r["model"], r["config"]) for r in records] == [
        (model, label) for model in MODELS for label, _, _ in CONFIGS]
    for record in records:
        assert record["wrong"] == 0 and record["requests"] == 60
        assert 0 <= record["padding_waste"] < 1 and record["requests_per_s"] > 0
        if "buckets" in record["config"]:  # 8+ tokens padded to the next power of two
            assert record["padding_waste"] < 0.5
    assert all(r["config"] in proc.stdout for r in records)
    assert "wrong 0" in proc.stdout
