"""The core serving path, end to end: real Redis, real `wkr-serving-start`, real worker processes."""

from __future__ import annotations

import asyncio
import gc
import pickle
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import wait
from pathlib import Path

import numpy as np
import pytest
import redis

from wkr_celery import (
    AsyncWKRClient,
    BatchContractError,
    PredictError,
    ServiceUnavailable,
    Settings,
    VersionMismatch,
    WKRClient,
)
from wkr_celery.celery_app import make_app
from wkr_celery.codec import loads
from wkr_celery.keys import SERVICES, ServiceKeys, task_meta_key
from wkr_celery.messages import build_request
from wkr_celery.redis_embedded import EmbeddedRedis
from workers.linear import make_weights

from .helpers import ROOT, Service, free_port, nothing_listens, start_service, wait_until
from .scripts import script, user_env


@pytest.fixture(scope="module")
def poison_service(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[Service]:
    """One PoisonWorker service (obj protocol, batch_size 16) shared by this module's tests."""
    service = start_service(f"poison{uuid.uuid4().hex[:6]}", redis_server.url, redis_server.url,
                            tmp_path_factory.mktemp("poison"), "tests.workers_for_tests.PoisonWorker",
                            ["-batch_size", "16"], wait=1)
    yield service
    service.stop()


def _send_raw(service: Service, envelope: str) -> None:
    """Push a message straight into the service's queue, as a foreign producer would: onto the
    high-priority list, with no nudge, so an idle worker (blocked on the arrivals list) finds it
    when its one-second block ends and it fetches."""
    client = redis.Redis.from_url(service.broker_url)
    keys = ServiceKeys(service.name)
    client.lpush(keys.queue, envelope)
    client.close()


def _stored_meta(service: Service, task_id: str) -> dict:
    client = redis.Redis.from_url(service.result_url)
    data = wait_until(lambda: client.get(task_meta_key(task_id)), 30,
                      what=f"result of {task_id}")
    client.close()
    return loads(data)


def test_results_match_inputs_one_to_one_across_two_workers(make_service) -> None:
    service = make_service("workers.linear.Worker", "-num_worker", "2", "-protocol", "npy",
                           "-batch_size", "32", wait=2)
    weights = make_weights()
    inputs = np.random.default_rng(1).standard_normal((1500, 512)).astype(np.float32)
    client = service.client()
    results = list(client.encode_many(inputs, max_inflight=256))
    np.testing.assert_allclose(np.stack(results), np.tanh(inputs @ weights), atol=1e-5)
    served = wait_until(lambda: [w["requests"] for w in service.live_workers().values()
                                 if w["requests"]] if sum(w["requests"] for w in
                                 service.live_workers().values()) == 1500 else None,
                        10, what="heartbeats counting all 1500 requests")
    assert len(served) == 2, f"both workers should have served requests, got {served}"


def test_batches_form_under_concurrent_load_and_never_exceed_batch_size(make_service) -> None:
    service = make_service("tests.workers_for_tests.BatchSizeWorker", "-batch_size", "8")
    client = service.client()
    futures = [client.encode(i) for i in range(120)]
    answers = [f.result(timeout=60) for f in futures]
    assert [a["x"] for a in answers] == list(range(120))
    sizes = [a["batch"] for a in answers]
    assert max(sizes) > 1, f"no batch formed under load: {sizes}"
    assert max(sizes) <= 8


def test_lone_request_is_predicted_alone_without_waiting_for_batch_timeout(make_service) -> None:
    service = make_service("tests.workers_for_tests.BatchSizeWorker", "-batch_size", "8",
                           "-batch_timeout", "20000")
    client = service.client()
    # With a 20 s batch_timeout, an answer inside 10 s proves the lone request did not wait.
    assert client.encode("alone").result(timeout=10) == {"x": "alone", "batch": 1}


def test_each_worker_process_is_pinned_to_its_device(make_service) -> None:
    service = make_service("tests.workers_for_tests.EnvWorker", "-num_worker", "3",
                           "-device_map", "0", "1", "-model_dir", "/models", "-model_name", "m.bin",
                           wait=3)
    beats = service.live_workers().values()
    assert sorted((b["device_id"], b["cuda_visible_devices"]) for b in beats) == [
        (0, "0"), (0, "0"), (1, "1")]
    client = service.client()
    answers = [f.result(timeout=30) for f in [client.encode(i) for i in range(60)]]
    for answer in answers:
        assert answer["cuda"] == str(answer["device_id"])
        assert (answer["model_dir"], answer["model_name"]) == ("/models", "m.bin")
    assert len({a["pid"] for a in answers}) >= 1


def test_cpu_device_map_hides_every_gpu(make_service) -> None:
    service = make_service("tests.workers_for_tests.EnvWorker", "-device_map", "-1")
    answer = service.client().encode(1).result(timeout=30)
    assert (answer["device_id"], answer["cuda"]) == (-1, "")


def test_input_that_makes_predict_raise_fails_alone(poison_service: Service) -> None:
    client = poison_service.client()
    inputs = [1, 2, 3, "poison", 5, 6, 7, 8]
    futures = [client.encode(x) for x in inputs]
    wait(futures, timeout=30)
    for x, future in zip(inputs, futures):
        if x == "poison":
            error = future.exception()
            assert isinstance(error, PredictError)
            assert "cannot digest poison" in str(error)
            assert "ValueError" in (error.remote_traceback or "")
        else:
            assert future.result() == x * 2


def test_wrong_number_of_results_fails_every_caller_in_that_batch(make_service) -> None:
    service = make_service("tests.workers_for_tests.WrongLengthWorker", "-batch_size", "8",
                           "-batch_timeout", "200")
    client = service.client()
    # Eight requests sent at once usually share a batch, but on two busy cores each can reach
    # the worker alone (CI saw all eight answered singly): send rounds until one has shared.

    def broken_contracts() -> list[BaseException]:
        futures = [client.encode(i) for i in range(8)]
        wait(futures, timeout=30)
        errors = [f.exception() for f in futures]
        assert all(e is None or isinstance(e, BatchContractError) for e in errors), errors
        return [e for e in errors if isinstance(e, BatchContractError)]

    contract = wait_until(broken_contracts, 60,
                          what="a batch of several inputs to break the contract")
    assert "one result per input" in str(contract[0])


@pytest.mark.parametrize(("op", "why"), [("badlen", "len() raised ValueError"),
                                         ("baditer", "iteration raised RuntimeError")])
def test_results_whose_length_or_iteration_raises_break_the_contract_not_the_worker(
        make_service, op: str, why: str) -> None:
    service = make_service("tests.workers_for_tests.BrokenResultsWorker")
    workers = set(service.live_workers())
    client = service.client()
    with pytest.raises(BatchContractError, match=re.escape(why)):
        client.encode(op).result(timeout=30)
    assert client.encode(4).result(timeout=30) == 8
    assert set(service.live_workers()) == workers, "the worker died: " + service.log()[-2000:]


@pytest.mark.parametrize(("odd", "why"), [("float128", "float128"),
                                          ("unreadable", "device memory is gone")])
def test_a_result_that_cannot_be_written_readably_fails_alone_saying_why(
        make_service, odd: str, why: str) -> None:
    service = make_service("tests.workers_for_tests.BrokenResultsWorker", "-batch_size", "8",
                           "-batch_timeout", "200")
    workers = set(service.live_workers())
    client = service.client()
    futures = [client.encode(x) for x in (1, odd, 3)]
    wait(futures, timeout=30)
    assert set(service.live_workers()) == workers, "the worker died: " + service.log()[-2000:]
    with pytest.raises(PredictError, match=re.escape(why)):
        futures[1].result(timeout=0)
    assert [futures[0].result(timeout=0), futures[2].result(timeout=0)] == [2, 6]


def test_undecodable_input_fails_alone_with_decode_error(poison_service: Service) -> None:
    client = poison_service.client()
    good = client.encode(21)
    task_id = uuid.uuid4().hex
    _send_raw(poison_service, build_request(
        task_id, b"\xc1 not msgpack", queue=poison_service.name, priority=0, client_id=None,
        deadline=None, argsrepr="garbage"))
    meta = _stored_meta(poison_service, task_id)
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "DecodeError"
    assert good.result(timeout=30) == 42
    assert client.encode(4).result(timeout=30) == 8


def test_pickle_payloads_are_refused_by_default_and_never_unpickled(
        poison_service: Service, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path.touch, (marker,))

    body = pickle.dumps([[Trap()], {}, {}])
    task_id = uuid.uuid4().hex
    envelope = build_request(task_id, body, queue=poison_service.name, priority=0,
                             client_id=None, deadline=None, argsrepr="pickle")
    envelope = envelope.replace("application/x-wkr-msgpack", "application/x-python-serialize")
    _send_raw(poison_service, envelope)
    meta = _stored_meta(poison_service, task_id)
    assert meta["result"]["exc_type"] == "DecodeError"
    assert "-allow_pickle" in meta["result"]["exc_message"][0]
    assert not marker.exists()


def test_plain_celery_send_task_is_served_and_asyncresult_reads_client_results(
        poison_service: Service) -> None:
    app = make_app(Settings(name=poison_service.name, broker_url=poison_service.broker_url,
                            result_url=poison_service.result_url))
    try:
        assert app.send_task("wkr_celery.predict", args=[5]).get(timeout=30) == 10
        future = poison_service.client().encode(7)
        assert future.result(timeout=30) == 14
        assert app.AsyncResult(future.task_id).get(timeout=10) == 14
    finally:
        # Celery's AsyncResult unsubscribes from its result channel when collected; collect
        # them while the app's connections are open, or the unsubscribe opens a socket after
        # app.close() that nothing closes (a ResourceWarning in whichever test runs then).
        gc.collect()
        app.close()


def test_celery_inspect_sees_the_workers(poison_service: Service) -> None:
    env = user_env(Settings(name=poison_service.name,
                            broker_url=poison_service.broker_url).to_env())
    out = subprocess.run(
        [script("celery"), "-A", "wkr_celery", "inspect", "ping", "--timeout", "5"],
        env=env, capture_output=True, text=True, timeout=60)
    assert f"wkr.{poison_service.name}.0@" in out.stdout, out.stdout + out.stderr


def test_client_without_a_serving_worker_fails_clearly(redis_url: str) -> None:
    with pytest.raises(ServiceUnavailable, match="no worker of service 'nobody' is alive"):
        WKRClient(broker_url=redis_url, result_url=redis_url, name="nobody", connect_timeout=1)
    with pytest.raises(ServiceUnavailable, match="not reachable"):
        WKRClient(port=free_port(), port_out=free_port(), connect_timeout=1)


def test_version_mismatch_is_refused_unless_checks_are_off(poison_service: Service) -> None:
    client = redis.Redis.from_url(poison_service.broker_url)
    info = ServiceKeys(poison_service.name).info
    client.hset(info, "version", "9.9.0")
    try:
        with pytest.raises(VersionMismatch, match="9.9.0"):
            poison_service.client()
        assert poison_service.client(check_version=False).encode(1).result(timeout=30) == 2
    finally:
        client.hset(info, "version", __import__("wkr_celery").__version__)
        client.close()


@pytest.mark.parametrize("worker", ["PoisonWorker", "LoggingTakeoverWorker"])
def test_log_dir_gets_info_in_log_and_errors_with_traceback_in_err(make_service,
                                                                   tmp_path: Path,
                                                                   worker: str) -> None:
    """Also when the model sets up logging its own way in ``get_model``
    (``LoggingTakeoverWorker``: ``basicConfig(force=True)`` at WARNING, then ``dictConfig``).
    That replaced the root logger's handlers the worker's lines went through: its errors came
    in the root's format, which the supervisor does not route by (never in ``.err``), and the
    raised root level hid its INFO lines (``serving``)."""
    log_dir = tmp_path / "logs"
    service = make_service(f"tests.workers_for_tests.{worker}", "-log_dir", str(log_dir))
    client = service.client()
    with pytest.raises(PredictError):
        client.encode("poison").result(timeout=30)
    assert client.encode(1).result(timeout=30) == 2
    log_file, err_file = log_dir / f"{service.name}.log", log_dir / f"{service.name}.err"
    wait_until(lambda: err_file.exists() and "cannot digest poison" in err_file.read_text(), 30,
               what="the error in .err")
    err = err_file.read_text()
    assert "Traceback" in err and "ValueError" in err
    log = log_file.read_text()
    assert "serving" in log, log[-3000:]  # an INFO line, logged after get_model
    assert "started Redis" not in err
    if worker == "LoggingTakeoverWorker":
        assert "my model's own setup is done" in log  # the model's own lines reach it too


def test_graceful_stop_gives_buffered_requests_back_and_loses_nothing(
        make_service, tmp_path: Path) -> None:
    first = make_service("tests.workers_for_tests.BatchSizeWorker", "-batch_size", "4",
                         "-prefetch", "4")
    client = WKRClient(name=first.name, broker_url=first.broker_url, result_url=first.result_url,
                       connect_timeout=30)
    futures = [client.encode(i) for i in range(300)]
    futures[0].result(timeout=30)
    assert first.stop(signal.SIGTERM) == 0
    assert "buffered requests back to the queue" in first.log()
    second = make_service("tests.workers_for_tests.BatchSizeWorker", "-batch_size", "16",
                          name=first.name)
    answers = [f.result(timeout=60)["x"] for f in futures]
    assert answers == list(range(300))
    second.stop()
    client.close()


def test_killed_worker_is_restarted_and_its_batch_is_served(make_service, tmp_path: Path) -> None:
    service = make_service("tests.workers_for_tests.GateWorker")
    gate = str(tmp_path / "gate")
    client = service.client()
    held = client.encode({"gate": gate, "value": [1, 2]})
    entered = Path(gate + ".entered")
    wait_until(entered.exists, 30, what="the batch to enter predict")
    (old_id, old), = service.live_workers().items()
    assert int(entered.read_text()) == old["pid"]
    __import__("os").kill(old["pid"], signal.SIGKILL)
    Path(gate).touch()
    fresh = wait_until(lambda: [w for wid, w in service.live_workers().items() if wid != old_id],
                       60, what="a restarted worker")
    assert fresh[0]["pid"] != old["pid"]
    assert held.result(timeout=60).tolist() == [2, 4]
    assert "exited with code -9" in service.log()


def test_cli_with_no_broker_starts_and_stops_embedded_redis(tmp_path: Path) -> None:
    port_in, port_out = free_port(), free_port()
    proc = subprocess.Popen(
        [script("wkr-serving-start"), "workers.echo.Worker",
         "-port_in", str(port_in), "-port_out", str(port_out)],
        cwd=ROOT, env=user_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with WKRClient(port=port_in, port_out=port_out, connect_timeout=60) as client:
            assert client.encode({"a": [1, 2]}).result(timeout=30) == {"a": [1, 2]}
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    for port in (port_in, port_out):
        assert nothing_listens(port), f"the embedded Redis on {port} outlived the service"


def test_unknown_or_invalid_flags_fail_at_once_naming_them() -> None:
    for flags, named in ((["-bogus", "1"], "-bogus"), (["-protocol", "xml"], "xml"),
                         (["-num_worker", "0"], "num_worker")):
        out = subprocess.run([script("wkr-serving-start"), "workers.echo.Worker", *flags],
                             cwd=ROOT, env=user_env(), capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 2
        assert named in out.stderr


def test_encode_many_streams_results_in_input_order(poison_service: Service) -> None:
    client = poison_service.client()
    assert list(client.encode_many(range(500), max_inflight=32)) == [2 * i for i in range(500)]


def test_a_client_that_names_no_service_takes_the_live_one_of_those_ever_listed(
    tmp_path: Path,
) -> None:
    server = EmbeddedRedis(free_port()).start()  # a broker that outlives its services
    services: list[Service] = []
    try:
        first = start_service("first", server.url, server.url, tmp_path, wait=1)
        services.append(first)
        assert first.stop() == 0
        second = start_service("second", server.url, server.url, tmp_path, wait=1)
        services.append(second)
        with WKRClient(broker_url=server.url, connect_timeout=10) as client:
            assert client.name == "second"
            assert client.encode(np.zeros(512, np.float32)).result(timeout=30).shape == (128,)
        assert asyncio.run(_name_found_by_async_client(server.url)) == "second"
        services.append(start_service("first", server.url, server.url, tmp_path, wait=1))
        with pytest.raises(ServiceUnavailable, match=r"serves \['first', 'second'\] \(each"):
            WKRClient(broker_url=server.url, connect_timeout=10)
        for service in services:
            service.stop()
        # Stopped gracefully, each took its name off the list: none is left to choose.
        with pytest.raises(ServiceUnavailable, match=r"no wkr-celery service on .* after 1s"):
            WKRClient(broker_url=server.url, connect_timeout=1)
        # Names left listed (services killed with kill -9 cannot unlist themselves) are not
        # taken for live services.
        with redis.Redis.from_url(server.url) as broker:
            broker.sadd(SERVICES, "first", "second")
        with pytest.raises(ServiceUnavailable,
                           match=r"lists \['first', 'second'\], but none has a live worker"):
            WKRClient(broker_url=server.url, connect_timeout=1)
    finally:
        for service in services:
            service.stop()
        server.stop()


async def _name_found_by_async_client(broker_url: str) -> str | None:
    async with AsyncWKRClient(broker_url=broker_url, connect_timeout=10) as client:
        return client.name
