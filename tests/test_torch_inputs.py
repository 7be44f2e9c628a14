"""torch tensors as inputs, as a data pipeline (a ``DataLoader``'s batches) sends them: a tensor
is sent as the numpy array it holds, under both protocols, and a service's declared input
contract checks it as that array, before it travels.

Needs the ``frameworks`` extra (torch); fails, never skips, without it.
"""

from __future__ import annotations

import numpy as np
import pytest

from wkr_celery import InputError
from workers.linear import make_weights

pytestmark = pytest.mark.frameworks

torch = pytest.importorskip("torch", reason="never skipped: torch is in the frameworks extra")


def test_tensors_are_checked_against_the_contract_as_the_arrays_they_are_sent_as(
        make_service) -> None:
    """A tensor that needs grad (a model's output fed on) made ``encode`` raise torch's
    ``RuntimeError: Can't call numpy() on Tensor that requires grad``; a bfloat16 one was
    refused as "input is Tensor"; an int64 one passed the client's check as if it were a list
    of integers, then the worker refused the int64 array it was sent as."""
    service = make_service("tests.workers_for_tests.InputTypeWorker")
    client = service.client()
    x = torch.arange(3, dtype=torch.float32)
    sent = [x.clone().requires_grad_(), x.bfloat16(), x.view(3, 1)[:, 0], x]
    assert [client.encode(t).result(timeout=30) for t in sent] == ["ndarray float32"] * 4
    with pytest.raises(InputError, match=r"input has dtype int64; this service takes float32"):
        client.encode(x.long())
    with pytest.raises(InputError, match=r"input has shape \(2, 3\); this service takes \(3,\)"):
        client.encode(torch.zeros(2, 3))


def test_a_tensor_is_an_input_under_the_npy_protocol_too(make_service) -> None:
    """Under ``-protocol npy`` a tensor was refused ("input is Tensor; this service (protocol
    npy) takes numpy arrays") although the same service took it under ``obj``."""
    service = make_service("workers.linear.Worker", "-protocol", "npy")
    client = service.client()
    x = torch.randn(512)
    y = client.encode(x).result(timeout=30)
    assert np.allclose(y, np.tanh(x.numpy() @ make_weights()), rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="takes numpy arrays"):
        client.encode(x.tolist())
