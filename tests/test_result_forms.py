"""What ``predict`` may return for a batch: one result per input, as a list, an array or a
generator; a dict (a batch's outputs by name) is one value, refused as such, never taken apart
into its keys."""

from __future__ import annotations

import pytest

from wkr_celery import BatchContractError, PredictError


def test_a_generator_yielding_one_result_per_input_answers_each_caller(make_service) -> None:
    service = make_service("tests.workers_for_tests.ResultFormsWorker", "-batch_size", "8",
                           "-batch_timeout", "200")
    client = service.client()
    futures = [client.encode({"form": "generator", "x": i}) for i in range(12)]
    assert [f.result(timeout=30) for f in futures] == [2 * i for i in range(12)]


def test_a_generator_that_raises_midway_fails_only_the_input_it_raised_for(make_service) -> None:
    """The generator's body is predict's own code, run as it is read: before, its error failed
    every input of the batch with a BatchContractError."""
    service = make_service("tests.workers_for_tests.ResultFormsWorker", "-batch_size", "8",
                           "-batch_timeout", "200")
    client = service.client()
    futures = {i: client.encode({"form": "generator", "x": i}) for i in range(10, 18)}
    for i, future in futures.items():
        if i == 13:
            with pytest.raises(PredictError, match="predict raised ValueError: 13 is unlucky"):
                future.result(timeout=30)
        else:
            assert future.result(timeout=30) == 2 * i


def test_a_dict_of_batch_outputs_is_refused_not_answered_with_its_keys(make_service) -> None:
    service = make_service("tests.workers_for_tests.ResultFormsWorker", "-batch_size", "1")
    client = service.client()
    with pytest.raises(BatchContractError, match="predict returned a dict, one value"):
        client.encode({"form": "dict", "x": 1}).result(timeout=30)
    assert client.encode({"form": "list", "x": 4}).result(timeout=30) == 8
