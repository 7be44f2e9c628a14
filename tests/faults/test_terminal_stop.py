"""Ctrl+C typed into the terminal that runs ``wkr-serving-start``, with requests in flight.

The terminal driver sends SIGINT to the whole foreground process group, so this is the only
honest way to test it: a SIGTERM to one pid skips what goes wrong when Redis, REST or a worker
shares the supervisor's group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.decentral_support import Sink
from tests.helpers import ROOT, Service, free_port, local_redis, nothing_listens, wait_until
from tests.rest_support import error_of
from wkr_celery.client.helper import RedisHandler
from wkr_celery.errors import RequestLost
from wkr_celery.keys import ServiceKeys
from wkr_celery.redis_embedded import EmbeddedRedis
from workers.linear import IN_DIM

from .terminal import Terminal, TerminalService

REQUESTS = 2000


@pytest.fixture
def terminal_service(tmp_path: Path) -> Iterator[TerminalService]:
    service = TerminalService(tmp_path, "tests.faults.workers.TenthDoubler")
    yield service
    service.close()


def _in_redis(service: TerminalService) -> int:
    """Requests the service's Redis holds: queued, or fetched by a worker and not yet acked."""
    keys = ServiceKeys(service.name)
    with local_redis(service.port_in) as probe:
        queued = sum(probe.llen(name) for name in (*keys.queues, keys.suspect))
        return queued + sum(probe.hlen(key) for key in probe.scan_iter(
            keys.inflight_prefix + "*"))


def _interrupt_under_load(service: TerminalService, terminal: Terminal) -> list[Future]:
    client = service.client()
    futures = [client.encode(n) for n in range(REQUESTS)]
    wait_until(lambda: sum(f.done() for f in futures) >= 50, 30, what="the first answers")
    # All in flight: the client has published every request (it publishes from a thread).
    wait_until(lambda: _in_redis(service) + sum(f.done() for f in futures) >= REQUESTS, 30,
               what="every request to be published")
    terminal.press_ctrl_c()
    code = terminal.close(timeout=30)
    log = service.log()
    assert code == 0, f"exit code {code}; terminal:\n{terminal.output[-3000:]}\nlog:\n{log[-4000:]}"
    return futures


def _assert_clean_stop(service: TerminalService) -> None:
    log = service.log()
    assert "restarting" not in log, log[-4000:]
    assert "killing it" not in log, "a child was SIGKILLed: " + log[-4000:]
    assert "while stopping" not in log, "a worker exited non-zero: " + log[-4000:]
    assert "could not" not in log, log[-4000:]
    assert log.count("worker shutting down") or log.count("stopped"), log[-4000:]
    # Redis is stopped last: the supervisor's final line comes after the workers' stop.
    assert not service.redis_answers(service.port_in)
    assert not service.redis_answers(service.port_out)


@pytest.mark.timeout(120)
def test_ctrl_c_without_persistence_answers_batches_in_predict_and_fails_the_queued_once(
    terminal_service: TerminalService,
) -> None:
    terminal = terminal_service.start()
    futures = _interrupt_under_load(terminal_service, terminal)
    _assert_clean_stop(terminal_service)

    finished, unfinished = wait(futures, timeout=15)
    assert not unfinished, f"{len(unfinished)} callers still wait after the stop"
    answered = [(n, f.result()) for n, f in enumerate(futures) if f.exception() is None]
    lost = [f.exception() for f in futures if f.exception() is not None]
    assert all(result == 2 * n for n, result in answered)
    assert lost, "every request was answered before the stop; the test proved nothing"
    assert all(isinstance(e, RequestLost) for e in lost), lost[:3]
    assert "stopped before serving this request" in str(lost[0])
    assert f"{len(lost)} queued request(s) failed with RequestLost" in terminal_service.log()


#: Concurrent HTTP callers: more than two workers' batches of 8 hold, so most wait queued.
HTTP_CALLERS = 64


@pytest.mark.timeout(120)
def test_ctrl_c_answers_every_rest_caller_in_json_and_stops_without_waiting_for_them(
    tmp_path: Path,
) -> None:
    """The REST API used to be stopped before the queued requests were failed: each of its
    callers waited out uvicorn's graceful shutdown, was cancelled, and got a plain-text 500
    while the log got an ``Exception in ASGI application`` traceback per request; the stop
    took 10 s. Now the API is still up when they fail, and passes ``RequestLost`` on."""
    stop = _ctrl_c_under_http_load(tmp_path)
    assert "Cancel " not in stop.said, "uvicorn cancelled waiting requests: " + stop.said[-4000:]
    assert "stopped before serving this request" in stop.lost[0]["message"]
    assert stop.seconds < 8, f"the stop took {stop.seconds:.1f}s: the API waited for its callers"


@pytest.mark.timeout(120)
def test_ctrl_c_with_persistence_answers_rest_callers_the_api_stops_waiting_for_in_json(
    tmp_path: Path,
) -> None:
    """With -data_dir the queued requests are kept for the next start, so the API waits its
    graceful shutdown for them, then uvicorn cancels each: still JSON, never a traceback."""
    stop = _ctrl_c_under_http_load(tmp_path, "-data_dir", str(tmp_path / "redis-data"))
    assert "REST API stopped before this request was answered" in stop.lost[0]["message"]


@dataclass
class _HttpStop:
    seconds: float
    lost: list[dict[str, Any]]
    said: str


def _ctrl_c_under_http_load(tmp_path: Path, *extra: str) -> _HttpStop:
    """Ctrl+C while :data:`HTTP_CALLERS` callers wait on ``POST /encode``, most of them queued;
    checks what every stop must give: exit 0, each caller answered right (200) or told
    ``RequestLost`` in a JSON body (503), no traceback anywhere."""
    port = free_port()
    service = TerminalService(tmp_path, "tests.faults.workers.VerySlowDoubler",
                              "-http_port", str(port), *extra)
    url = f"http://127.0.0.1:{port}/encode"
    try:
        terminal = service.start()
        limits = httpx.Limits(max_connections=HTTP_CALLERS)
        with httpx.Client(limits=limits, timeout=60) as http, \
                ThreadPoolExecutor(HTTP_CALLERS) as callers:
            wait_until(lambda: _answers(http, url), 30, what="the REST API")
            futures = [callers.submit(http.post, url, json={"id": n, "data": n})
                       for n in range(HTTP_CALLERS)]
            wait_until(lambda: any(f.done() for f in futures), 30, what="the first answer")
            assert _in_redis(service) > 0, "nothing queued at the stop; the test proves nothing"
            pressed = time.monotonic()
            terminal.press_ctrl_c()
            code = terminal.close(timeout=30)
            seconds = time.monotonic() - pressed
            responses = [f.result(timeout=30) for f in futures]
    finally:
        service.close()
    said = terminal.output + service.log()
    assert code == 0, f"exit code {code}; terminal:\n{terminal.output[-3000:]}"
    for text in ("Traceback", "Exception in ASGI application"):
        assert text not in said, said[-6000:]
    lost = []
    for n, response in enumerate(responses):
        if response.status_code == 200:
            assert response.json() == {"id": n, "result": 2 * n}
        else:
            assert response.status_code == 503, response.text
            lost.append(error_of(response))
    assert lost, "every request was answered before the stop; the test proved nothing"
    assert {e["type"] for e in lost} == {"RequestLost"}, lost[:3]
    return _HttpStop(seconds, lost, said)


def _answers(http: httpx.Client, url: str) -> bool:
    try:
        return http.post(url, json={"data": 1}).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.timeout(180)
def test_ctrl_c_with_persistence_keeps_queued_requests_for_the_next_start(
    tmp_path: Path,
) -> None:
    service = TerminalService(tmp_path, "tests.faults.workers.TenthDoubler",
                              "-data_dir", str(tmp_path / "redis-data"))
    try:
        terminal = service.start()
        futures = _interrupt_under_load(service, terminal)
        _assert_clean_stop(service)
        waiting = sum(not f.done() for f in futures)
        assert waiting, "nothing was left queued at the stop; the test proved nothing"

        service.start()  # the same command again: the queue comes back from the AOF
        finished, unfinished = wait(futures, timeout=60)
        assert not unfinished, f"{len(unfinished)} of {waiting} queued requests never answered"
        assert [f.result() for f in futures] == [2 * n for n in range(REQUESTS)]
    finally:
        service.close()


@pytest.mark.timeout(120)
def test_ctrl_c_while_the_workers_load_their_model_stops_the_service_without_waiting_for_it(
    tmp_path: Path,
) -> None:
    """A worker still loading its model has fetched nothing: Ctrl+C ends it at once, rather
    than when its model is loaded (two minutes here) or at the 30 s stop deadline, by a kill."""
    loading = tmp_path / "loading"
    loading.mkdir()
    service = TerminalService(tmp_path, "tests.faults.workers.SlowLoader",
                              env={"TEST_LOADING_DIR": str(loading)})
    try:
        terminal = service.start(wait=False)
        wait_until(lambda: len(list(loading.iterdir())) == 2, 60,
                   what="both workers to be loading their model")
        terminal.press_ctrl_c()
        code = terminal.close(timeout=20)  # less than the stop deadline: a kill fails this
    finally:
        service.close()
    log = service.log()
    assert code == 0, f"exit code {code}; terminal:\n{terminal.output[-3000:]}"
    assert "stopping service" in terminal.output and "stopping service" in log, terminal.output
    assert log.count("stopped while its model was loading; it had fetched nothing") == 2, log
    assert "killing it" not in log and "while stopping" not in log, log[-4000:]
    for path in loading.iterdir():
        assert not Path(f"/proc/{path.name}").exists(), f"worker pid {path.name} still runs"
    assert not service.redis_answers(service.port_in)


@pytest.mark.timeout(120)
def test_closing_the_terminal_stops_the_service_as_gracefully_as_ctrl_c(
    terminal_service: TerminalService,
) -> None:
    """SIGHUP (the terminal window closed, the SSH session dropped) used to kill the
    supervisor on the spot: its Redis died with it under the workers, and no queued caller
    was told. Now it is the same stop as Ctrl+C."""
    terminal = terminal_service.start()
    client = terminal_service.client()
    futures = [client.encode(n) for n in range(REQUESTS)]
    wait_until(lambda: sum(f.done() for f in futures) >= 50, 30, what="the first answers")
    wait_until(lambda: _in_redis(terminal_service) + sum(f.done() for f in futures) >= REQUESTS,
               30, what="every request to be published")
    terminal.hang_up()
    code = terminal.close(timeout=30)
    log = terminal_service.log()
    assert code == 0, f"exit code {code}; log:\n{log[-4000:]}"
    assert "stopping service" in log, log[-4000:]
    _assert_clean_stop(terminal_service)
    finished, unfinished = wait(futures, timeout=15)
    assert not unfinished, f"{len(unfinished)} callers still wait after the stop"
    assert all(f.result() == 2 * n for n, f in enumerate(futures) if f.exception() is None)
    assert all(isinstance(f.exception(), (type(None), RequestLost)) for f in futures)


@pytest.mark.timeout(120)
def test_a_service_started_under_nohup_outlives_its_terminal(
    terminal_service: TerminalService, tmp_path: Path,
) -> None:
    # `nohup wkr-serving-start …` typed in the project folder: a stand-in for it here (the
    # packages the worker class is imported from linked), as nohup writes nohup.out into the
    # folder it is typed in.
    folder = tmp_path / "project"
    folder.mkdir()
    for package in ("workers", "tests"):
        (folder / package).symlink_to(ROOT / package)
    terminal = terminal_service.start(nohup=True, cwd=folder)
    terminal.hang_up()
    client = terminal_service.client()
    assert client.encode(21).result(timeout=30) == 42
    assert terminal.proc.poll() is None, "the service stopped when its terminal closed"
    assert "stopping service" not in terminal_service.log()
    terminal.proc.terminate()  # what a user of nohup does: kill <pid>
    assert terminal.close(timeout=30) == 0
    _assert_clean_stop(terminal_service)
    assert "starting 2 worker(s)" in (folder / "nohup.out").read_text()  # nohup's own doing


#: Prints "ready" only once SIGINT has its default action, so one Ctrl+C after "ready" kills it.
_WAITS_FOR_CTRL_C = ("import signal, time; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                     "print('ready', flush=True); time.sleep(30)")


def test_terminal_helper_delivers_ctrl_c_to_the_foreground_group(tmp_path: Path) -> None:
    """The helper itself: one Ctrl+C, typed once, kills a program in the pty by SIGINT.

    Not ``sh -c "echo ready; sleep 30"``, which this test used to run: dash catches SIGINT
    under ``-c`` and acts on it only once its foreground child exits, so a press that lands
    between the echo and the fork of ``sleep`` goes to dash alone and the shell runs on
    (3 of 200 tries here; with this program, 0 of 300)."""
    terminal = Terminal([sys.executable, "-c", _WAITS_FOR_CTRL_C], cwd=tmp_path,
                        env={**os.environ})
    wait_until(lambda: "ready" in terminal.output, 10, what="the program")
    terminal.press_ctrl_c()
    try:
        terminal.proc.wait(10)
    except subprocess.TimeoutExpired:
        raise AssertionError("one Ctrl+C did not stop the program") from None
    assert terminal.close(10) == -signal.SIGINT


@pytest.mark.timeout(120)
def test_ctrl_c_stops_a_decentralize_central_after_the_job_in_hand(
    make_service: Callable[..., Service], redis_server: EmbeddedRedis, tmp_path: Path,
) -> None:
    service = make_service("workers.linear.Worker", "-protocol", "npy")
    name, port, port_out = f"dc{uuid.uuid4().hex[:8]}", free_port(), free_port()
    sink = Sink()
    with RedisHandler(f"jobs-{uuid.uuid4().hex[:8]}", "127.0.0.1", redis_server.port) as jobs:
        env = {**os.environ, "DECENTRAL_TEST_SINK": sink.url,
               "DECENTRAL_TEST_QUEUE": jobs.queue_key,
               "DECENTRAL_TEST_REDIS_PORT": str(redis_server.port)}
        terminal = Terminal(
            ["wkr-decentral-start", "tests.decentral_units.ForwardUnit", "-name", name,
             "-port", str(port), "-port_out", str(port_out), "-num_client", "2",
             "-remote_servers", f"[[127.0.0.1, {redis_server.port}, {redis_server.port}, "
             f"{service.name}]]", "-log_dir", str(tmp_path)], cwd=ROOT, env=env)
        try:
            sink.wait(lambda s: len(s.events("on")) == 2, 60, what="two units up")
            jobs.push({"id": 1, "x": [0.5] * IN_DIM, "announce": True, "work_seconds": 1.5})
            sink.wait(lambda s: s.events("begin"), 30, what="the job to begin")
            terminal.press_ctrl_c()
            code = terminal.close(60)
        finally:
            terminal.close(5)
            sink.close()
    log = (tmp_path / f"{name}.log").read_text()
    assert code == 0, f"{terminal.output}\n{log[-3000:]}"
    assert [e["id"] for e in sink.events("result")] == [1], "the job in hand was not finished"
    assert len(sink.events("off")) == 2, "a unit did not call off_model"
    assert "killing it" not in log and "restarting" not in log, log[-3000:]
    # Its own Redis is stopped last: the central talked to it until the end.
    assert "unreachable" not in log and "could not" not in log, log[-3000:]
    assert nothing_listens(port), "the central's Redis outlived it"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["ctrl_c", "hang_up"])
def test_ctrl_c_stops_a_decentralize_central_whose_units_still_load_their_model(
    redis_server: EmbeddedRedis, tmp_path: Path, how: str,
) -> None:
    """A unit still in ``get_model`` has no model to close and no job in hand: it ends at
    once rather than after the load (two minutes here) or by a kill at the stop deadline.
    Closing the terminal (SIGHUP) is the same stop as Ctrl+C."""
    name, port, port_out = f"dc{uuid.uuid4().hex[:8]}", free_port(), free_port()
    sink = Sink()
    terminal = Terminal(
        ["wkr-decentral-start", "tests.decentral_units.SlowLoader", "-name", name,
         "-port", str(port), "-port_out", str(port_out), "-num_client", "2",
         "-remote_servers", f"[[127.0.0.1, {redis_server.port}, {redis_server.port}, x]]",
         "-log_dir", str(tmp_path)], cwd=ROOT, env={**os.environ, "DECENTRAL_TEST_SINK": sink.url})
    try:
        sink.wait(lambda s: len(s.events("loading")) == 2, 60, what="two units loading")
        if how == "ctrl_c":
            terminal.press_ctrl_c()
        else:
            terminal.hang_up()
        code = terminal.close(20)  # less than the stop deadline: a kill fails this
    finally:
        terminal.close(5)
        sink.close()
    log = (tmp_path / f"{name}.log").read_text()
    assert code == 0, f"{terminal.output}\n{log[-3000:]}"
    assert log.count("stopped while get_model ran; it had no model to close") == 2, log[-3000:]
    assert not sink.events("off"), "off_model was called without a model"
    assert "killing it" not in log and "restarting" not in log, log[-3000:]
    for event in sink.events("loading"):
        assert not Path(f"/proc/{event['pid']}").exists(), f"unit pid {event['pid']} still runs"
    assert nothing_listens(port), "the central's Redis outlived it"
