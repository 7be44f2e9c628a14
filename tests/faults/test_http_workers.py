"""``-http_workers 2``: two REST API processes serve one port, each is watched (SIGKILL of one
is named in the log and it is started again), ``/metrics`` counts what all of them served
whichever one is scraped, and Ctrl+C in the terminal stops them all. Both
ways in: ``wkr-serving-start -http_port P`` and ``wkr-serving-http`` on its own."""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, free_port, wait_until
from wkr_celery.processes import pid_alive

from .terminal import Terminal, TerminalService

WORKER = "tests.faults.workers.TenthDoubler"
STARTED = r"REST API (?P<index>\d) on \S+, pid (?P<pid>\d+)"


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Callable[..., TerminalService]]:
    started: list[TerminalService] = []

    def make(*extra: str) -> TerminalService:
        started.append(TerminalService(tmp_path, WORKER, *extra))
        return started[-1]

    yield make
    for service in started:
        service.close()


def _api_pid(port: int) -> int | None:
    """The pid of the API process that took this (new) connection, or None if none answered."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status/client", timeout=2) as answer:
            return int(json.loads(answer.read())["pid"])
    except OSError:
        return None


def _answer_from(port: int, pids: set[int]) -> None:
    """Open new connections until each of ``pids`` has answered one (the kernel spreads them)."""
    seen: set[int] = set()

    def all_answered() -> bool:
        pid = _api_pid(port)
        if pid is not None:
            seen.add(pid)
        return pids <= seen

    wait_until(all_answered, 30, interval=0.01,
               what=f"API processes {sorted(pids)} to answer (seen {sorted(seen)})")


def _encode(port: int, n: int) -> object:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/encode",
                                     data=json.dumps({"id": n, "data": n}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())["result"]


def _encodes_counted(port: int) -> float:
    """``wkr_http_requests_total{route="POST /encode",outcome="ok"}`` in one scrape of ``/metrics``
    (a new connection: any of the API processes may take it), parsed as Prometheus does."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == "wkr_http_requests_total"
               and sample.labels == {"route": "POST /encode", "outcome": "ok"})


def _started(text: Callable[[], str]) -> dict[int, list[int]]:
    """Pids each REST API process index was started with, in order, from the log."""
    started: dict[int, list[int]] = {}
    for match in re.finditer(STARTED, text()):
        started.setdefault(int(match["index"]), []).append(int(match["pid"]))
    return started


def _standalone_api(service: TerminalService, port: int, http_workers: str) -> Terminal:
    """``wkr-serving-http`` typed in a terminal of its own, for ``service``."""
    return Terminal(["wkr-serving-http", "-name", service.name, "-port_in", str(service.port_in),
                     "-port_out", str(service.port_out), "-http_port", str(port),
                     "-http_workers", http_workers], cwd=ROOT, env=service.env)


def _stop(api: Terminal, how: str) -> int:
    """Stop the API as a user does (``ctrl_c``, or ``hang_up``: its terminal closed); its exit
    code, or the kill's past 30 s."""
    if how == "ctrl_c":
        api.press_ctrl_c()
    else:
        api.hang_up()
    return api.close(30)


def _kill_one_and_see_it_back(text: Callable[[], str], port: int) -> list[int]:
    """SIGKILL ``REST API 2``; the log names it and a new process serves. Returns every pid."""
    first = _started(text)
    victim = first[2][-1]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: f"REST API 2 (pid {victim}) exited with code -9" in text(), 10,
               what="the dead REST API process to be named in the log")
    wait_until(lambda: len(_started(text).get(2, [])) == 2, 15, what="REST API 2 to restart")
    now = _started(text)
    assert now[1] == first[1], "the other API process was restarted too"
    _answer_from(port, {now[1][-1], now[2][-1]})
    return [pid for pids in now.values() for pid in pids]


@pytest.mark.timeout(120)
def test_two_api_processes_serve_one_port_are_restarted_and_stop_with_ctrl_c(
    services: Callable[..., TerminalService],
) -> None:
    port = free_port()
    service = services("-http_port", str(port), "-http_workers", "2")
    terminal = service.start()
    wait_until(lambda: len(_started(service.log)) == 2, 30, what="two REST API processes")
    pids = {pids[-1] for pids in _started(service.log).values()}
    assert len(pids) == 2, _started(service.log)
    _answer_from(port, pids)
    assert [_encode(port, n) for n in range(8)] == [2 * n for n in range(8)]

    every_pid = _kill_one_and_see_it_back(service.log, port)
    assert [_encode(port, n) for n in range(8)] == [2 * n for n in range(8)]
    # Each scrape, whichever process takes it, counts all 16, the killed process's share too:
    # one process's own count would jump between scrapes and fall at its restart.
    assert [_encodes_counted(port) for _ in range(6)] == [16] * 6

    terminal.press_ctrl_c()
    code = terminal.close(30)
    log = service.log()
    assert code == 0, f"exit code {code}; log:\n{log[-4000:]}"
    assert "killing it" not in log, log[-4000:]
    assert not [pid for pid in every_pid if pid_alive(pid)], log[-4000:]
    assert _api_pid(port) is None


@pytest.mark.timeout(120)
def test_standalone_api_runs_two_processes_restarts_one_and_stops_with_ctrl_c(
    services: Callable[..., TerminalService],
) -> None:
    service = services()  # no API of its own: wkr-serving-http serves it
    service.start()
    port = free_port()
    api = _standalone_api(service, port, "2")
    try:
        text = lambda: api.output  # noqa: E731 - the terminal's text, read anew each time
        wait_until(lambda: len(_started(text)) == 2, 30,
                   what=f"two REST API processes; terminal:\n{api.output[-3000:]}")
        _answer_from(port, {pids[-1] for pids in _started(text).values()})
        assert [_encode(port, n) for n in range(4)] == [0, 2, 4, 6]
        every_pid = _kill_one_and_see_it_back(text, port)
        code = _stop(api, "ctrl_c")
    finally:
        if api.proc.poll() is None:
            api.close(1)
    assert code == 0, f"exit code {code}; terminal:\n{api.output[-3000:]}"
    assert "2 REST API processes on" in api.output and "stopped" in api.output, api.output
    assert not [pid for pid in every_pid if pid_alive(pid)], api.output[-3000:]
    assert _api_pid(port) is None


@pytest.mark.timeout(120)
@pytest.mark.parametrize("http_workers", ["1", "2"])
def test_closing_its_terminal_stops_a_standalone_api_gracefully(
    services: Callable[..., TerminalService], http_workers: str,
) -> None:
    """SIGHUP used to kill ``wkr-serving-http`` mid-request (and, with ``-http_workers``,
    leave its API processes serving on); it is now the same stop as Ctrl+C."""
    service = services()
    service.start()
    port = free_port()
    api = _standalone_api(service, port, http_workers)
    try:
        wait_until(lambda: _api_pid(port) is not None, 30,
                   what=f"the API to answer; terminal:\n{api.output[-3000:]}")
        assert [_encode(port, n) for n in range(4)] == [0, 2, 4, 6]
        code = _stop(api, "hang_up")
    finally:
        if api.proc.poll() is None:
            api.close(1)
    assert code == 0 and _api_pid(port) is None, f"exit code {code}; terminal:\n{api.output}"
