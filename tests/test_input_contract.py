"""A worker that declares ``input_shape`` / ``input_dtype`` gets, in ``predict``, arrays of that
dtype whichever door an input came through: a numpy array, or a list of numbers (a client's
list, a REST JSON body) that the checks read as the array it makes.
"""

from __future__ import annotations

import numpy as np
import pytest

from wkr_celery import InputError, InvalidInput


def test_a_list_of_numbers_reaches_predict_as_an_array_of_the_declared_dtype(
        make_service) -> None:
    service = make_service("tests.workers_for_tests.InputTypeWorker")
    client = service.client()
    inputs = [[1, 2, 3], [0.5, 1.5, 2.5], [True, False, True], np.ones(3, np.float32)]
    futures = [client.encode(x) for x in inputs]
    assert [f.result(timeout=30) for f in futures] == ["ndarray float32"] * len(inputs)


def test_integers_in_a_list_must_fit_the_declared_integer_dtype(make_service) -> None:
    service = make_service("tests.workers_for_tests.Int32InputTypeWorker")
    client = service.client()
    assert client.encode([1, -2, 2**31 - 1]).result(timeout=30) == "ndarray int32"
    words = "input holds 2147483648, outside int32's range -2147483648..2147483647"
    with pytest.raises(InputError, match=words):
        client.encode([1, 2, 2**31])
    unchecked = service.client()
    unchecked.spec = type(unchecked.spec)()  # a client that knows no contract: the worker checks
    with pytest.raises(InvalidInput, match=words):
        unchecked.encode([1, 2, 2**31]).result(timeout=30)
    assert unchecked.encode([3, 2, 1]).result(timeout=30) == "ndarray int32"


def test_a_list_of_pixel_values_reaches_a_uint8_worker_and_negatives_are_refused(
        make_service) -> None:
    service = make_service("tests.workers_for_tests.Uint8InputTypeWorker")
    client = service.client()
    assert client.encode([0, 128, 255]).result(timeout=30) == "ndarray uint8"
    with pytest.raises(InputError, match="input holds -1, outside uint8's range 0..255"):
        client.encode([-1, 0, 0])
    with pytest.raises(InputError, match="input has dtype float64; this service takes uint8"):
        client.encode([0.5, 0, 0])
