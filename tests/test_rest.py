# ruff: noqa: F811  (the shared `stack` fixture is imported, then requested by name)
"""The REST API, driven over real HTTP (uvicorn subprocesses) against real workers."""

from __future__ import annotations

import uuid
from pathlib import Path

import msgpack_numpy  # noqa: F401  (msgpack-numpy is what clients use; codec wraps it)
import numpy as np
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from wkr_celery import codec
from wkr_celery.broker.registry import ServiceRegistry
from wkr_celery.celery_app import make_app
from wkr_celery.config import Settings
from wkr_celery.keys import ServiceKeys
from workers.linear import make_weights

from .helpers import wait_until
from .rest_support import API_KEY, CALC_LIMITS, Stack, error_of, stack  # noqa: F401

MSGPACK = {"Content-Type": "application/msgpack"}


def post_msgpack(api, path: str, body: object, **kwargs):  # noqa: ANN001, ANN201
    return api.http.post(path, content=codec.dumps(body), headers=MSGPACK, **kwargs)


# Health ---------------------------------------------------------------------------------------

def test_healthz_answers_even_when_no_worker_serves(stack: Stack) -> None:
    assert stack.ghost.http.get("/healthz").json() == {"status": "ok"}


def test_readyz_is_503_with_retry_after_until_a_worker_serves(stack: Stack) -> None:
    response = stack.ghost.http.get("/readyz")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json()["ready"] is False and "no worker" in response.json()["reason"]
    ready = stack.calc.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "broker": True, "workers": 1, "reason": ""}


# POST /encode ---------------------------------------------------------------------------------

def test_encode_json_answers_one_input_with_its_id(stack: Stack) -> None:
    response = stack.calc.http.post("/encode", json={"id": "a1", "data": {"op": "double", "x": 21}})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"id": "a1", "result": 42}


def test_encode_json_list_answers_each_input_in_order_with_arrays_as_lists(stack: Stack) -> None:
    items = [{"id": i, "data": {"op": "double", "x": [i, i + 0.5]}} for i in range(5)]
    response = stack.calc.http.post("/encode", json=items)
    assert response.status_code == 200, response.text
    assert response.json() == [{"id": i, "result": [2 * i, 2 * i + 1]} for i in range(5)]


def test_encode_msgpack_answers_in_msgpack_with_arrays_intact(stack: Stack) -> None:
    x = np.arange(6, dtype=np.int32).reshape(2, 3)
    response = post_msgpack(stack.calc, "/encode", {"id": 7, "data": {"op": "double", "x": x}})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/msgpack"
    answer = codec.loads(response.content)
    assert answer["id"] == 7
    np.testing.assert_array_equal(answer["result"], x * 2)
    assert answer["result"].dtype == np.int32


def test_npy_service_takes_json_lists_and_msgpack_arrays(stack: Stack) -> None:
    weights = make_weights()
    x = np.random.default_rng(1).standard_normal((2, 512)).astype(np.float32)
    expected = np.tanh(x @ weights)
    as_json = stack.keyed.http.post("/encode", json={"id": 1, "data": x[0].tolist()})
    assert as_json.status_code == 200, as_json.text
    np.testing.assert_allclose(as_json.json()["result"], expected[0], rtol=1e-4, atol=1e-5)
    as_msgpack = post_msgpack(stack.keyed, "/encode", [{"id": 2, "data": x[1]}])
    (answer,) = codec.loads(as_msgpack.content)
    assert answer["id"] == 2
    np.testing.assert_allclose(answer["result"], expected[1], rtol=1e-4, atol=1e-5)


def test_json_numbers_reach_predict_as_the_array_msgpack_sends(stack: Stack) -> None:
    # Integers among the floats, a signed zero, a nested list: once the API knows the service
    # (float32, (512,)) its JSON lists are read straight into arrays; the answers must equal
    # msgpack's for the same float32 input, bit for bit, and a wrong shape is still refused.
    x = np.random.default_rng(2).standard_normal(512).astype(np.float32)
    x[:4] = [0.0, -0.0, 3.0, -7.0]
    numbers = [0, -0.0, 3, -7] + x[4:].tolist()
    (expected,) = codec.loads(post_msgpack(stack.keyed, "/encode", [{"data": x}]).content)
    for attempt in range(3):  # the first may find the service's info not yet cached
        as_json = stack.keyed.http.post("/encode", json={"id": attempt, "data": numbers})
        assert as_json.status_code == 200, as_json.text
        assert np.array_equal(np.asarray(as_json.json()["result"], dtype=np.float32),
                              expected["result"])
    nested = stack.keyed.http.post("/encode", json={"data": [numbers]})
    assert nested.status_code == 400 and "shape (1, 512)" in nested.text, nested.text
    short = stack.keyed.http.post("/encode", json={"data": numbers[:511]})
    assert short.status_code == 400 and "shape (511,)" in short.text, short.text


@pytest.mark.parametrize("huge", ["9" * 400, "-" + "9" * 400])
def test_a_json_number_too_big_for_the_dtype_answers_400_naming_it(stack: Stack, huge: str
                                                                   ) -> None:
    # float32 cannot hold it: numpy raises OverflowError, which used to escape as a 500. The
    # answer is the same whether or not the API knows the service (the numbers path or not).
    rest = ",".join(["0"] * 511)
    for _ in range(3):
        alone = stack.keyed.http.post("/encode", content=f'{{"data":[{huge},{rest}]}}',
                                      headers={"Content-Type": "application/json"})
        assert alone.status_code == 400, alone.text
        error = error_of(alone)
        assert error["type"] == "InputError"
        assert "float32" in error["message"] and "cannot hold" in error["message"], error
    listed = stack.keyed.http.post(
        "/encode", content=f'[{{"data":[{rest},0]}},{{"data":[{rest},{huge}]}}]',
        headers={"Content-Type": "application/json"})
    assert listed.status_code == 400 and error_of(listed)["message"].startswith("item 1: ")
    assert stack.keyed.http.post("/encode", json={"data": [0.5] * 512}).status_code == 200


# Errors ---------------------------------------------------------------------------------------

def test_api_key_is_required_only_when_configured(stack: Stack) -> None:
    url = stack.keyed.url
    import httpx

    with httpx.Client(base_url=url, timeout=10) as anonymous:
        missing = anonymous.post("/encode", json={"data": [0.0] * 512})
        wrong = anonymous.get("/status/server", headers={"X-API-Key": "guess"})
        metrics = anonymous.get("/metrics")
        data = anonymous.get("/dashboard/data")
        assert anonymous.get("/dashboard").status_code == 200  # the page; it sends #key=...
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/readyz").status_code == 200
    for response in (missing, wrong, metrics, data):
        assert response.status_code == 401
        assert error_of(response)["type"] == "Unauthorized"
    assert "X-API-Key" in error_of(missing)["message"]
    assert stack.keyed.http.get("/status/server").status_code == 200
    assert stack.calc.http.get("/status/server").status_code == 200  # no key configured


@pytest.mark.parametrize("body, problem", [
    (b"{not json", "not valid JSON"),
    (b'{"id": 1}', "expected {\"id\": ..., \"data\": ...}"),
    (b"[]", "list of inputs is empty"),
    (b"", "no body"),
])
def test_malformed_json_bodies_answer_400_naming_the_problem(
        stack: Stack, body: bytes, problem: str) -> None:
    response = stack.calc.http.post("/encode", content=body,
                                    headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert problem in error_of(response)["message"]


def test_bad_inputs_answer_400_naming_input_and_problem(stack: Stack) -> None:
    shape = stack.keyed.http.post("/encode", json=[{"data": [0.0] * 512}, {"data": [1.0] * 3}])
    assert shape.status_code == 400
    error = error_of(shape)
    assert error["type"] == "InputError"
    assert error["message"].startswith("item 1: ") and "shape (3,)" in error["message"]
    garbage = stack.calc.http.post("/encode", content=b"\xc1\xc1", headers=MSGPACK)
    assert garbage.status_code == 400
    assert garbage.headers["content-type"] == "application/msgpack"  # errors speak msgpack too
    assert "not valid msgpack" in codec.loads(garbage.content)["error"]["message"]
    timeout = stack.calc.http.post("/encode?timeout=-1", json={"data": 1})
    assert timeout.status_code == 400 and "timeout" in error_of(timeout)["message"]
    wrong_type = post_msgpack(stack.keyed, "/encode", {"data": [1, 2]})
    assert wrong_type.status_code == 400
    assert "numpy arrays" in codec.loads(wrong_type.content)["error"]["message"]


def test_bodies_over_the_limit_answer_413_declared_or_streamed(stack: Stack) -> None:
    limit = CALC_LIMITS["http_max_body"]
    big = {"data": "x" * limit}
    declared = stack.calc.http.post("/encode", json=big)
    assert declared.status_code == 413
    assert f"limit of {limit} bytes" in error_of(declared)["message"]

    def chunks():  # no Content-Length: the server must count what arrives
        for _ in range(8):
            yield b" " * (limit // 4)

    streamed = stack.calc.http.post("/encode", content=chunks(),
                                    headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert "passed" in error_of(streamed)["message"]
    payload = stack.calc.http.post("/encode", json={"data": "y" * (limit // 2 + 500)})
    assert payload.status_code == 413
    assert error_of(payload)["type"] == "PayloadTooLarge"


def test_predict_failures_answer_500_with_the_worker_error_text(stack: Stack) -> None:
    raised = stack.calc.http.post("/encode", json={"data": {"op": "raise", "why": "input 9"}})
    assert raised.status_code == 500
    error = error_of(raised)
    assert error["type"] == "PredictError"
    assert "ValueError: refusing input 9" in error["message"]
    short = stack.calc.http.post("/encode", json={"data": {"op": "short"}})
    assert short.status_code == 500
    assert error_of(short)["type"] == "BatchContractError"


def test_a_result_json_cannot_carry_answers_406_pointing_to_msgpack(stack: Stack) -> None:
    # predict returned 1+2j: the input was fine, so not "the API process failed" (500).
    as_json = stack.calc.http.post("/encode", json={"id": 1, "data": {"op": "complex"}})
    assert as_json.status_code == 406, as_json.text
    error = error_of(as_json)
    assert error["type"] == "NotRepresentable"
    assert "complex" in error["message"] and "application/msgpack" in error["message"]
    listed = stack.calc.http.post("/encode", json=[{"data": 1}, {"data": {"op": "complex"}}])
    assert listed.status_code == 406 and error_of(listed)["type"] == "NotRepresentable"
    as_msgpack = post_msgpack(stack.calc, "/encode", {"id": 1, "data": {"op": "complex"}})
    assert codec.loads(as_msgpack.content) == {"id": 1, "result": 1 + 2j}
    task_id = stack.calc.http.post("/tasks", json={"data": {"op": "complex"}}).json()["task_id"]
    wait_until(lambda: stack.calc.http.get(f"/tasks/{task_id}").status_code == 406, 20,
               what="the task's result")
    assert error_of(stack.calc.http.get(f"/tasks/{task_id}"))["type"] == "NotRepresentable"
    by_accept = stack.calc.http.get(f"/tasks/{task_id}", headers={"Accept": "application/msgpack"})
    assert codec.loads(by_accept.content)["result"] == 1 + 2j
    assert "unexpected error" not in stack.calc.log()


def test_no_worker_answers_503_with_retry_after(stack: Stack) -> None:
    for path in ("/encode", "/tasks"):
        response = stack.ghost.http.post(path, json={"data": 1})
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        error = error_of(response)
        assert error["type"] == "ServiceUnavailable" and "no worker" in error["message"]


def test_a_worker_just_come_up_is_not_refused_on_a_stale_look(
        stack: Stack, redis_client: redis.Redis) -> None:
    """Live workers are cached for half a second between requests, so `/status/server` can
    remember "none" just before the first heartbeat: a request right after it is checked
    afresh before it is refused (in CI, `/encode` once got 503 from an elastic service whose
    floor worker had just started)."""
    keys = ServiceKeys(stack.ghost.name)
    assert stack.ghost.http.get("/status/server").json()["workers"] == []  # "none", cached
    ServiceRegistry(redis_client, keys).heartbeat("just-up", codec.dumps({"pid": 1}), ttl=30)
    try:
        response = stack.ghost.http.post("/tasks", json={"data": 1})
        assert response.status_code == 202, response.text
    finally:
        redis_client.delete(keys.heartbeat("just-up"), *keys.queues)
        redis_client.srem(keys.workers, "just-up")


def test_unexpected_failure_answers_500_without_the_api_traceback(
        stack: Stack, redis_client: redis.Redis) -> None:
    task_id = uuid.uuid4().hex
    redis_client.set(f"celery-task-meta-{task_id}", b"\xc1", ex=60)  # not msgpack at all
    response = stack.calc.http.get(f"/tasks/{task_id}")
    assert response.status_code == 500
    error = error_of(response)  # also asserts no "Traceback" in the body
    assert error["type"] == "InternalError" and "see its log" in error["message"]
    assert "File \"" not in response.text
    assert stack.calc.http.get("/healthz").status_code == 200  # the keep-alive connection lives
    wait_until(lambda: f"GET /tasks/{task_id}" in stack.calc.log(), 10,
               what="the failure in the API log")


def test_encode_answers_the_same_with_or_without_a_query_string(stack: Stack) -> None:
    """``POST /encode`` without a query string skips FastAPI's routing layers (rest/fast_encode);
    with one it takes them (its parameters need validation). Both must answer alike: results,
    every kind of error, both encodings, the key check, and the request counter."""
    limit = CALC_LIMITS["http_max_body"]
    cases = [
        (stack.calc, {"json": {"id": 7, "data": {"op": "double", "x": 2}}}),
        (stack.calc, {"content": codec.dumps({"id": 8, "data": [1, 2]}), "headers": MSGPACK}),
        (stack.calc, {"content": b"{", "headers": {"Content-Type": "application/json"}}),
        (stack.calc, {"content": b"\xc1", "headers": MSGPACK}),
        (stack.calc, {"content": b"{}", "headers": {"Content-Type": "text/plain"}}),
        (stack.calc, {"json": {"data": "x" * limit}}),
        (stack.calc, {"json": {"data": {"op": "raise", "why": "input 3"}}}),
        (stack.keyed, {"json": {"data": [1.0] * 3}}),
        (stack.keyed, {"json": {"data": [0.0] * 512}, "headers": {"X-API-Key": "wrong"}}),
    ]

    def answered() -> int:
        return int(stack.calc.http.get("/status/client").json()["requests"].get(
            "POST /encode ok", 0))

    before = answered()
    for api, request in cases:
        fast = api.http.post("/encode", **request)
        routed = api.http.post("/encode?priority=normal", **request)
        assert (fast.status_code, fast.headers["content-type"]) == (
            routed.status_code, routed.headers["content-type"]), request
        if fast.headers["content-type"] == "application/msgpack":
            assert codec.loads(fast.content) == codec.loads(routed.content)
        else:
            assert fast.json() == routed.json(), request
    assert {api.http.post("/encode", **request).status_code for api, request in cases} == {
        200, 400, 401, 413, 415, 500}
    assert answered() - before == 4 + 2  # two successes, each both ways, then once more


def test_unknown_routes_and_methods_answer_json_errors(stack: Stack) -> None:
    assert error_of(stack.calc.http.get("/nowhere"))["status"] == 404
    assert error_of(stack.calc.http.get("/encode"))["status"] == 405


# Tasks ----------------------------------------------------------------------------------------

def test_task_submitted_then_polled_until_done_is_also_a_celery_result(stack: Stack) -> None:
    accepted = stack.calc.http.post("/tasks", json={"id": "t", "data": {"op": "double", "x": 4}})
    assert accepted.status_code == 202
    task_id = accepted.json()["task_id"]
    assert accepted.json()["id"] == "t"
    done = wait_until(lambda: (lambda s: s if s["status"] != "PENDING" else None)(
        stack.calc.http.get(f"/tasks/{task_id}").json()), 20, what="task result")
    assert done["status"] == "SUCCESS" and done["result"] == 8 and done["date_done"]
    app = make_app(Settings(name=stack.calc.name, broker_url=stack.broker_url))
    assert app.AsyncResult(task_id).get(timeout=10) == 8
    as_msgpack = stack.calc.http.get(f"/tasks/{task_id}",
                                     headers={"Accept": "application/msgpack"})
    assert codec.loads(as_msgpack.content)["result"] == 8


def test_failed_task_reports_the_error_type_and_text(stack: Stack) -> None:
    accepted = stack.calc.http.post("/tasks", json=[{"data": {"op": "raise", "why": "t2"}}])
    (task,) = accepted.json()
    state = wait_until(lambda: (lambda s: s if s["status"] != "PENDING" else None)(
        stack.calc.http.get(f"/tasks/{task['task_id']}").json()), 20, what="task failure")
    assert state["status"] == "FAILURE"
    assert state["error"]["type"] == "PredictError" and "refusing t2" in state["error"]["message"]


def test_unknown_task_is_pending_and_cannot_be_revoked_here(stack: Stack) -> None:
    task_id = uuid.uuid4().hex
    assert stack.calc.http.get(f"/tasks/{task_id}").json() == {"task_id": task_id,
                                                               "status": "PENDING"}
    response = stack.calc.http.delete(f"/tasks/{task_id}")
    assert response.status_code == 404 and error_of(response)["type"] == "UnknownTask"


def test_held_worker_revokes_queued_task_refuses_taken_one_times_out_and_sheds_load(
        stack: Stack, tmp_path: Path) -> None:
    api = stack.calc.http
    gate = tmp_path / "gate"
    held = api.post("/tasks", json={"data": {"op": "hold", "gate": str(gate)}}).json()["task_id"]
    try:
        wait_until(lambda: Path(f"{gate}.held").exists(), 20, what="the worker to hold")
        # The worker's buffer takes batch_size more; beyond that, tasks wait in the list.
        queued = [api.post("/tasks", json={"data": {"op": "echo", "n": i}}).json()["task_id"]
                  for i in range(CALC_LIMITS["batch_size"] + 2)]
        wait_until(lambda: api.get("/status/server").json()["queue_length"] == 2, 20,
                   what="two tasks left in the list")
        revoked = api.delete(f"/tasks/{queued[-1]}")
        assert revoked.status_code == 200, revoked.text
        assert revoked.json() == {"task_id": queued[-1], "status": "REVOKED"}
        assert api.get(f"/tasks/{queued[-1]}").json()["status"] == "REVOKED"
        app = make_app(Settings(name=stack.calc.name, broker_url=stack.broker_url))
        assert app.AsyncResult(queued[-1]).state == "REVOKED"
        taken = api.delete(f"/tasks/{held}")
        assert taken.status_code == 409 and error_of(taken)["type"] == "TaskStarted"

        late = api.post("/encode?timeout=0.3", json={"data": {"op": "echo"}})
        assert late.status_code == 504 and error_of(late)["type"] == "DeadlineExceeded"

        statuses = []
        for _ in range(CALC_LIMITS["max_queue"] + 2):
            response = api.post("/tasks", json={"data": {"op": "echo"}})
            statuses.append(response.status_code)
            if response.status_code == 503:
                break
        assert statuses[-1] == 503 and response.headers["Retry-After"] == "1"
        assert error_of(response)["type"] == "ServiceOverloaded"
    finally:
        gate.touch()
    done = wait_until(lambda: (lambda s: s if s["status"] == "SUCCESS" else None)(
        api.get(f"/tasks/{queued[0]}").json()), 30, what="the queue to drain")
    assert done["result"] == {"op": "echo", "n": 0}
    finished = api.delete(f"/tasks/{queued[0]}")
    assert finished.status_code == 409 and error_of(finished)["type"] == "TaskFinished"
    assert api.get(f"/tasks/{held}").json()["result"] == "released"
    wait_until(lambda: api.get("/status/server").json()["queue_length"] == 0, 30,
               what="the queue to empty")


# Status and metrics ---------------------------------------------------------------------------

def test_status_server_reports_config_workers_devices_and_totals(stack: Stack) -> None:
    stack.calc.http.post("/encode", json={"data": {"op": "echo"}})
    status = stack.calc.http.get("/status/server").json()
    assert status["name"] == stack.calc.name
    assert status["protocol"] == "obj" and status["batch_size"] == CALC_LIMITS["batch_size"]
    assert status["config"]["worker_class"] == "tests.rest_workers.Calc"
    assert status["num_workers_alive"] == 1 and status["devices"] == [-1]
    assert status["versions"]["api"] == status["versions"]["service"]
    assert status["uptime_s"] > 0 and status["api_uptime_s"] > 0
    wait_until(lambda: stack.calc.http.get("/status/server").json()["totals"]["responses"] > 0,
               10, what="heartbeat totals")


def test_status_client_counts_this_api_process_requests(stack: Stack) -> None:
    stack.calc.http.post("/encode", json={"data": 1})
    status = stack.calc.http.get("/status/client").json()
    assert status["service"] == stack.calc.name and status["client_id"]
    assert status["api_key_required"] is False
    assert status["max_body"] == CALC_LIMITS["http_max_body"]
    assert status["requests"]["POST /encode ok"] >= 1
    assert stack.keyed.http.get("/status/client").json()["api_key_required"] is True


def test_latency_histograms_count_inputs_that_failed_too(stack: Stack) -> None:
    def count(name: str) -> float:
        text = stack.calc.http.get("/metrics").text
        return next(s.value for family in text_string_to_metric_families(text)
                    for s in family.samples if s.name == name)

    before = {n: count(n) for n in ("wkr_request_latency_seconds_count",
                                    "wkr_queue_wait_seconds_count")}
    assert stack.calc.http.post("/encode", json={"data": {"op": "raise"}}).status_code == 500
    after = {n: count(n) for n in before}
    assert after == {n: v + 1 for n, v in before.items()}  # p99 must see the failures


def test_metrics_export_requests_latency_batches_and_worker_statistics(stack: Stack) -> None:
    stack.calc.http.post("/encode", json=[{"data": {"op": "echo"}}] * 3)
    stack.calc.http.post("/encode", json={"data": {"op": "raise"}})

    def scrape() -> dict[str, float]:
        text = stack.calc.http.get("/metrics").text
        return {f"{s.name}{sorted(s.labels.items())}": s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def ready() -> dict[str, float] | None:
        samples = scrape()
        # Counts come from the totals hash, smallest and largest from the live workers' beats,
        # which the API caches for half a second: wait for both (CI once scraped in between).
        seen = samples.get("wkr_stat_batchsize_count[]", 0) > 0
        return samples if seen and "wkr_stat_batchsize_max[]" in samples else None

    samples = wait_until(ready, 10, what="worker statistics in /metrics")
    ok = samples["wkr_http_requests_total[('outcome', 'ok'), ('route', 'POST /encode')]"]
    failed = samples["wkr_http_requests_total[('outcome', 'failed'), ('route', 'POST /encode')]"]
    assert ok >= 1 and failed >= 1
    assert samples["wkr_request_latency_seconds_count[]"] >= 4
    assert "wkr_queue_wait_seconds_count[]" in samples
    assert samples["wkr_workers_alive[]"] == 1
    assert samples["wkr_queue_depth[]"] >= 0
    assert samples["wkr_batch_size_count[]"] >= 1 and samples["wkr_batch_size_sum[]"] >= 1
    assert samples["wkr_predict_seconds_count[]"] >= 1
    assert samples["wkr_stat_batchsize_max[]"] >= 1
    assert any(k.startswith("wkr_worker_requests_total[") for k in samples)


def test_openapi_describes_every_route_with_request_and_response_schemas(stack: Stack) -> None:
    spec = stack.calc.http.get("/openapi.json").json()
    paths = spec["paths"]
    for path in ("/encode", "/tasks", "/tasks/{task_id}", "/status/server", "/status/client",
                 "/healthz", "/readyz", "/metrics", "/dashboard"):
        assert path in paths, path
    for path in ("/encode", "/tasks"):
        content = paths[path]["post"]["requestBody"]["content"]
        assert set(content) == {"application/json", "application/msgpack"}
        assert {"400", "401", "413", "500", "503", "504"} <= set(paths[path]["post"]["responses"])
    for path, method in (("/encode", "post"), ("/tasks", "post"), ("/tasks/{task_id}", "get"),
                         ("/tasks/{task_id}", "delete"), ("/status/server", "get"),
                         ("/status/client", "get"), ("/healthz", "get"), ("/readyz", "get")):
        ok = paths[path][method]["responses"]["202" if path == "/tasks" else "200"]
        assert "schema" in ok["content"]["application/json"], (path, method)
    docs = stack.calc.http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


# The CLI ----------------------------------------------------------------------------------------

def test_http_cli_takes_the_service_flags_with_or_without_a_worker_class() -> None:
    from wkr_celery.rest.cli import main, settings_from_argv

    alone = settings_from_argv(["-name", "svc", "-http_port", "8901", "-http_api_key", "k"])
    assert (alone.name, alone.http_port, alone.http_api_key) == ("svc", 8901, "k")
    same_as_start = settings_from_argv(["workers.echo.Worker", "-name", "svc", "-http_port", "9"])
    assert same_as_start.http_port == 9 and same_as_start.worker_class == "workers.echo.Worker"
    assert main(["-name", "svc"]) == 2  # no -http_port: nothing to serve on
