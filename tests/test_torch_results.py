"""A PyTorch worker, written as the README says, started as a service and called: what its
``predict`` returns reaches the caller as torch computes it in this process on the same weights.

Needs the ``frameworks`` extra (torch); fails, never skips, without it.
"""

from __future__ import annotations

from concurrent.futures import wait

import numpy as np
import pytest

from .torch_workers import reference

pytestmark = pytest.mark.frameworks

torch = pytest.importorskip("torch", reason="never skipped: torch is in the frameworks extra")
INPUTS = np.random.default_rng(3).standard_normal((6, 8)).astype(np.float32)


def expected() -> np.ndarray:
    with torch.no_grad():
        return reference(torch)(torch.as_tensor(INPUTS)).numpy()


def test_torch_tensors_returned_by_predict_reach_the_caller_as_numpy_arrays(make_service) -> None:
    service = make_service("tests.torch_workers.TensorResultsWorker", "-batch_size", "8",
                           "-batch_timeout", "200")
    client = service.client()
    hows = ["tensor", "bf16", "strided", "dict", "tensor", "bf16"]
    futures = [client.encode({"x": x, "as": how}) for x, how in zip(INPUTS, hows)]
    wait(futures, timeout=30)
    want = expected()
    tensor, bf16, strided, as_dict = (f.result(timeout=0) for f in futures[:4])
    assert tensor.dtype == np.float32 and np.allclose(tensor, want[0], rtol=1e-5, atol=1e-6)
    assert bf16.dtype == np.float32  # bfloat16 has no numpy dtype: widened exactly
    assert np.array_equal(bf16, torch.from_numpy(bf16.copy()).bfloat16().float().numpy())
    assert np.allclose(bf16, want[1], atol=1e-2)
    assert np.allclose(strided, want[2][::2], rtol=1e-5, atol=1e-6)
    assert np.allclose(as_dict["logits"], want[3], rtol=1e-5, atol=1e-6)
    assert int(as_dict["label"]) == int(want[3].argmax())


def test_a_batch_tensor_returned_whole_gives_each_caller_its_row(make_service) -> None:
    service = make_service("tests.torch_workers.TensorResultsWorker", "-batch_size", "8",
                           "-batch_timeout", "200")
    client = service.client()
    futures = [client.encode({"x": x, "as": "batch"}) for x in INPUTS]
    wait(futures, timeout=30)
    got = np.stack([f.result(timeout=0) for f in futures])
    assert got.dtype == np.float32
    assert np.allclose(got, expected(), rtol=1e-5, atol=1e-6)
