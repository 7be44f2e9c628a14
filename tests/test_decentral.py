"""Decentralize mode with real processes: Redis job list → units → wkr-celery service → HTTP sink.

Two linear services (``tanh(x @ W)``, protocol npy) run on the shared test Redis for the whole
module; each test starts its own central (``wkr-decentral-start``) whose control channel is
that same Redis, and its own HTTP sink that the units POST results and lifecycle events to.
"""

from __future__ import annotations

import json
import re
import socket
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from wkr_celery.client.helper import RedisHandler
from wkr_celery.decentral import ControlClient
from wkr_celery.redis_embedded import EmbeddedRedis
from workers.linear import IN_DIM, make_weights

from .decentral_support import Central, Sink, run_cli, start_central
from .helpers import Service, free_port, start_service, wait_until

W = make_weights()


@pytest.fixture(scope="module")
def services(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory,
             ) -> Iterator[dict[str, Service]]:
    """Services "a" and "b" (names unique per run), one worker each."""
    log_dir = tmp_path_factory.mktemp("services")
    started = {key: start_service(f"lin{key}{uuid.uuid4().hex[:6]}", redis_server.url,
                                  redis_server.url, log_dir, "workers.linear.Worker",
                                  ["-protocol", "npy", "-batch_size", "8"])
               for key in ("a", "b")}
    for service in started.values():
        service.wait_workers(1)
    yield started
    for service in started.values():
        service.stop()


@pytest.fixture
def sink() -> Iterator[Sink]:
    sink = Sink()
    yield sink
    sink.close()


@pytest.fixture
def jobs(redis_server: EmbeddedRedis) -> Iterator[RedisHandler]:
    with RedisHandler(f"jobs-{uuid.uuid4().hex[:8]}", "127.0.0.1", redis_server.port) as queue:
        yield queue


@pytest.fixture
def central(redis_server: EmbeddedRedis, tmp_path: Path, sink: Sink, jobs: RedisHandler,
            ) -> Iterator[Callable[..., Central]]:
    """Start ``wkr-decentral-start`` processes on the test Redis; all are stopped after."""
    started: list[Central] = []

    def factory(*args: str, worker: str = "tests.decentral_units.ForwardUnit",
                connection: list[str] | None = None) -> Central:
        env = {"DECENTRAL_TEST_SINK": sink.url, "DECENTRAL_TEST_QUEUE": jobs.queue_key,
               "DECENTRAL_TEST_REDIS_PORT": str(redis_server.port)}
        name = f"dc{uuid.uuid4().hex[:8]}"
        proc = start_central(worker, name, redis_server.url, tmp_path, *args, env=env,
                             connection=connection)
        started.append(proc)
        return proc

    yield factory
    for proc in started:
        proc.stop()


def redis_port(service: Service) -> int:
    return int(service.broker_url.rsplit(":", 1)[1].split("/")[0])


def servers(*services: Service) -> str:
    """``-remote_servers`` in the seed's bracket syntax, naming each service."""
    return "[" + ", ".join(f"[127.0.0.1, {redis_port(s)}, {redis_port(s)}, {s.name}]"
                           for s in services) + "]"


def make_jobs(count: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [{"id": i, "x": rng.standard_normal(IN_DIM).astype(np.float32).tolist()}
            for i in range(count)]


def expected(job: dict[str, Any]) -> np.ndarray:
    return np.tanh(np.asarray(job["x"], dtype=np.float32) @ W)


# The path of a job --------------------------------------------------------------------------

def test_every_job_flows_through_the_units_and_its_result_arrives_exactly_once(
        services: dict[str, Service], central: Callable[..., Central], sink: Sink,
        jobs: RedisHandler) -> None:
    http_port = free_port()
    proc = central("-remote_servers", servers(services["a"]), "-num_client", "3",
                   "-http_port", str(http_port))
    wait_until(proc.running_units(3), 60, what="3 running units")
    batch = make_jobs(40)
    jobs.push_many(batch)

    sink.wait(lambda s: len(s.events("result")) >= len(batch), 60, what="40 results")
    results = sink.events("result")
    assert Counter(r["id"] for r in results) == Counter(range(len(batch)))
    for result in results:
        np.testing.assert_allclose(result["result"], expected(batch[result["id"]]),
                                   rtol=1e-5, atol=1e-6)
    assert len({r["unit"] for r in results}) >= 2, "three idle units should share 40 jobs"
    assert jobs.size() == 0

    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/status", timeout=10) as response:
        served = json.loads(response.read())
    assert served["name"] == proc.name and served["totals"]["running"] == 3
    assert {u["remote"][3] for u in served["units"]} == {services["a"].name}
    assert "Warning" not in proc.log() and not proc.err(), "a clean run logs no warning or error"


def test_the_status_server_closes_a_connection_that_sends_nothing(
        services: dict[str, Service], central: Callable[..., Central]) -> None:
    """The status server read each request head with no deadline, on a thread per connection:
    a client that connected and sent nothing held its thread and socket for as long as the
    central ran, and many such clients piled threads up in the central's process."""
    http_port = free_port()
    proc = central("-remote_servers", servers(services["a"]), "-num_client", "1",
                   "-http_port", str(http_port))
    wait_until(proc.running_units(1), 60, what="1 running unit")
    with socket.create_connection(("127.0.0.1", http_port), timeout=30) as silent:
        assert silent.recv(1) == b"", "the status server kept a connection that sent nothing"
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/status", timeout=10) as response:
        assert json.loads(response.read())["name"] == proc.name


def test_a_single_unit_serves_jobs_first_in_first_out(
        services: dict[str, Service], central: Callable[..., Central], sink: Sink,
        jobs: RedisHandler) -> None:
    batch = make_jobs(15, seed=1)
    jobs.push_many(batch)
    central("-remote_servers", servers(services["a"]), "-num_client", "1")
    sink.wait(lambda s: len(s.events("result")) >= len(batch), 60, what="15 results")
    assert [r["id"] for r in sink.events("result")] == list(range(len(batch)))


# Failures -----------------------------------------------------------------------------------

def test_a_unit_whose_do_work_raises_is_logged_and_restarted_and_the_others_go_on(
        services: dict[str, Service], central: Callable[..., Central], sink: Sink,
        jobs: RedisHandler) -> None:
    proc = central("-remote_servers", servers(services["a"]), "-num_client", "2")
    before = {u["id"]: u for u in wait_until(proc.running_units(2), 60, what="2 units")["units"]}
    jobs.push({"id": "bad", "boom": True, "announce": True})
    sink.wait(lambda s: s.events("begin"), 30, what="a unit to take the bad job")
    failed_unit = sink.events("begin")[0]["unit"]
    sink.wait(lambda s: [e for e in s.events("on") if e["unit"] == failed_unit
                         and e["pid"] != before[failed_unit]["pid"]], 30,
              what="the failed unit to come back in a new process")

    assert "ValueError: boom on job bad" in proc.err()
    assert "Traceback" in proc.err()
    assert [e["unit"] for e in sink.events("off")] == [failed_unit], "off_model ran once"
    # The cached status may predate the failure: wait for one that has seen the restart.
    status = wait_until(lambda: (lambda s: s if s and any(
        u["id"] == failed_unit and u["restarts"] for u in s["units"]) else None)(
            proc.running_units(2)()), 30, what="both units running, the failed one restarted")
    after = {u["id"]: u for u in status["units"]}
    assert after[failed_unit]["restarts"] == 1
    assert "boom on job bad" in after[failed_unit]["last_error"]
    (other,) = set(before) - {failed_unit}
    assert after[other]["pid"] == before[other]["pid"] and after[other]["restarts"] == 0

    batch = make_jobs(6, seed=2)
    jobs.push_many(batch)
    sink.wait(lambda s: len(s.events("result")) >= len(batch), 60, what="results after")
    assert sorted(r["id"] for r in sink.events("result")) == list(range(len(batch)))


def test_a_unit_that_keeps_failing_is_restarted_with_a_growing_delay(
        central: Callable[..., Central]) -> None:
    proc = central("-remote_servers", "[[127.0.0.1, 1, 1]]", "-num_client", "1",
                   worker="tests.decentral_units.AlwaysFails")

    def delays() -> list[float] | None:
        found = [float(d) for d in re.findall(r"restarting in ([\d.]+)s", proc.err())]
        return found if len(found) >= 3 else None

    found = wait_until(delays, 60, what="three restarts")
    assert found[0] < found[1] < found[2]
    assert proc.err().count("RuntimeError: this unit always fails") >= 3


# Control commands ---------------------------------------------------------------------------

def test_status_answers_through_an_embedded_redis_and_fails_when_no_central_answers(
        services: dict[str, Service], central: Callable[..., Central]) -> None:
    port = free_port()
    connection = ["-name", "embedded", "-port", str(port), "-port_out", str(port)]
    proc = central("-remote_servers", servers(services["a"]), "-num_client", "2",
                   connection=connection)

    url = f"redis://127.0.0.1:{port}/0"

    def two_running() -> bool:
        try:
            with ControlClient("embedded", url, url) as control:
                status = control.cached_status()
        except redis.ConnectionError:
            return False  # the central has not started its Redis yet
        return bool(status and status["totals"]["running"] == 2)

    wait_until(two_running, 60, what="2 units behind the embedded Redis")
    done = proc.command("status")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)["status"]
    assert status["name"] == "embedded" and status["mode"] == "running"
    assert [u["slot"] for u in status["units"]] == [0, 1]
    assert all(u["pid"] and u["state"] == "running" for u in status["units"])

    assert proc.stop() == 0
    gone = proc.command("status", "-timeout", "2")
    assert gone.returncode == 1 and "no decentralize central named 'embedded'" in gone.stderr


def test_a_command_nobody_takes_times_out_with_a_non_zero_exit(
        redis_client: redis.Redis, redis_url: str) -> None:
    name = f"ghost{uuid.uuid4().hex[:6]}"
    redis_client.set(f"wkr:decentral:{name}:owner", "a central that hung", ex=30)
    try:
        done = run_cli("restart", ["-name", name, "-broker_url", redis_url,
                                        "-timeout", "1"])
    finally:
        redis_client.delete(f"wkr:decentral:{name}:owner")
    assert done.returncode == 1 and "answered 'restart' within 1s" in done.stderr
    assert redis_client.llen(f"wkr:decentral:{name}:control") == 0, "the command was retracted"


def test_status_of_an_unknown_name_on_a_reachable_redis_says_so_not_unreachable(
        redis_url: str) -> None:
    done = run_cli("status", ["-name", "nope", "-broker_url", redis_url, "-timeout", "3"])
    assert done.returncode == 1
    assert f"no decentralize central named 'nope' on {redis_url}" in done.stderr
    assert "reachable" not in done.stderr


def test_an_unreachable_control_redis_is_named_not_the_status_redis(
        redis_client: redis.Redis, redis_server: EmbeddedRedis) -> None:
    name, control_port = f"ghost{uuid.uuid4().hex[:6]}", free_port()
    redis_client.set(f"wkr:decentral:{name}:owner", "a central", ex=30)  # status: it lives
    try:
        done = run_cli("status", ["-name", name, "-port", str(control_port),
                                  "-port_out", str(redis_server.port), "-timeout", "3"])
    finally:
        redis_client.delete(f"wkr:decentral:{name}:owner")
    assert done.returncode == 1
    assert f"control Redis redis://127.0.0.1:{control_port}/0" in done.stderr
    assert "not reachable" in done.stderr
    assert f"127.0.0.1:{redis_server.port}/0: not reachable" not in done.stderr


def test_a_switch_without_a_change_or_with_a_bad_server_list_is_a_usage_error(
        redis_url: str) -> None:
    nothing = run_cli("switch", ["-broker_url", redis_url])
    assert nothing.returncode == 2 and "-remote_servers, -num_client or both" in nothing.stderr
    bad = run_cli("switch", ["-broker_url", redis_url, "-remote_servers", "[[10.0.0.1]]"])
    assert bad.returncode == 2 and "[10.0.0.1] is not [ip, port_in, port_out]" in bad.stderr


def test_idle_stops_every_unit_gracefully_and_idle_off_brings_them_back(
        services: dict[str, Service], central: Callable[..., Central], sink: Sink,
        jobs: RedisHandler) -> None:
    proc = central("-remote_servers", servers(services["a"]), "-num_client", "2")
    wait_until(proc.running_units(2), 60, what="2 units")

    done = proc.command("idle")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)["status"]
    assert status["mode"] == "idle" and all(u["pid"] is None for u in status["units"])
    assert len(sink.events("off")) == 2, "each unit called off_model"

    batch = make_jobs(5, seed=3)
    jobs.push_many(batch)
    assert proc.status()["totals"]["running"] == 0 and jobs.size() == len(batch)

    done = proc.command("idle", "-off")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"]["totals"]["running"] == 2
    sink.wait(lambda s: len(s.events("result")) >= len(batch), 60, what="results after idle")
    assert sorted(r["id"] for r in sink.events("result")) == list(range(len(batch)))


def test_restart_replaces_every_unit_process(
        services: dict[str, Service], central: Callable[..., Central], sink: Sink) -> None:
    proc = central("-remote_servers", servers(services["a"]), "-num_client", "2")
    before = {u["pid"] for u in wait_until(proc.running_units(2), 60, what="2 units")["units"]}

    done = proc.command("restart")
    assert done.returncode == 0, done.stderr
    after = json.loads(done.stdout)["status"]["units"]
    assert all(u["state"] == "running" for u in after)
    assert not before & {u["pid"] for u in after}
    assert {e["pid"] for e in sink.events("off")} == before, "old units called off_model"

    forced = proc.command("restart", "-force")
    assert forced.returncode == 0, forced.stderr
    assert len(sink.events("off")) == 2, "killed units do not call off_model"
    assert all(u["restarts"] == 0 for u in json.loads(forced.stdout)["status"]["units"])


def test_switch_moves_units_to_another_service_and_changes_their_number(
        services: dict[str, Service], central: Callable[..., Central], sink: Sink,
        jobs: RedisHandler) -> None:
    a, b = services["a"], services["b"]
    proc = central("-remote_servers", servers(a), "-num_client", "1")
    wait_until(proc.running_units(1), 60, what="1 unit")
    jobs.push_many(make_jobs(3, seed=4))
    sink.wait(lambda s: len(s.events("result")) >= 3, 60, what="results from a")
    assert {r["service"] for r in sink.events("result")} == {a.name}

    done = proc.command("switch", "-remote_servers", *servers(b).split(), "-num_client", "2")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)["status"]
    assert status["remote_servers"] == [["127.0.0.1", redis_port(b), redis_port(b), b.name]]
    assert [u["remote"][3] for u in status["units"]] == [b.name, b.name]
    assert all(u["state"] == "running" for u in status["units"])

    batch = make_jobs(8, seed=5)
    jobs.push_many([{**job, "id": 100 + job["id"]} for job in batch])
    sink.wait(lambda s: len(s.events("result")) >= 3 + len(batch), 60, what="results from b")
    later = [r for r in sink.events("result") if r["id"] >= 100]
    assert {r["service"] for r in later} == {b.name}
    for result in later:
        np.testing.assert_allclose(result["result"], expected(batch[result["id"] - 100]),
                                   rtol=1e-5, atol=1e-6)

    fewer = proc.command("switch", "-num_client", "1")
    assert fewer.returncode == 0, fewer.stderr
    assert json.loads(fewer.stdout)["status"]["totals"]["units"] == 1


def test_terminate_lets_the_job_in_hand_finish_then_calls_off_model(
        services: dict[str, Service], central: Callable[..., Central], sink: Sink,
        jobs: RedisHandler) -> None:
    proc = central("-remote_servers", servers(services["a"]), "-num_client", "1")
    wait_until(proc.running_units(1), 60, what="1 unit")
    (job,) = make_jobs(1, seed=6)
    jobs.push({**job, "announce": True, "work_seconds": 1.0})
    sink.wait(lambda s: s.events("begin"), 30, what="the unit to take the long job")

    done = proc.command("terminate")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"]["mode"] == "stopping"
    assert [e["event"] for e in sink.posts if e["event"] != "on"] == ["begin", "result", "off"]
    assert proc.proc.wait(30) == 0


def test_terminate_force_kills_units_without_waiting_for_their_job(
        services: dict[str, Service], central: Callable[..., Central], sink: Sink,
        jobs: RedisHandler) -> None:
    proc = central("-remote_servers", servers(services["a"]), "-num_client", "1")
    wait_until(proc.running_units(1), 60, what="1 unit")
    (job,) = make_jobs(1, seed=7)
    jobs.push({**job, "announce": True, "work_seconds": 30.0})
    sink.wait(lambda s: s.events("begin"), 30, what="the unit to take the long job")

    done = proc.command("terminate", "-force")
    assert done.returncode == 0, done.stderr
    assert proc.proc.wait(30) == 0
    assert not sink.events("result") and not sink.events("off")


def test_a_second_central_with_the_same_name_refuses_to_start(
        services: dict[str, Service], central: Callable[..., Central]) -> None:
    first = central("-remote_servers", servers(services["a"]), "-num_client", "1")
    wait_until(first.running_units(1), 60, what="1 unit")
    second = central("-remote_servers", servers(services["a"]), connection=first.connection)
    assert second.proc.wait(30) == 1
    assert "already runs" in second.log()
