"""The run script from ``wkr-serving-make``, run for real with ``sh`` (dash) against a real
service: start, status, encode, a second start, restart, graceful stop with a request in
predict, stopf, and stale pid files."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from wkr_celery.broker import RequestQueue, ServiceRegistry
from wkr_celery.client import WKRClient
from wkr_celery.connections import connect
from wkr_celery.keys import ServiceKeys
from wkr_celery.production import procs
from wkr_celery.production.command import serving_command
from wkr_celery.production.script import render_script

from .helpers import ROOT, Service, wait_until
from .scripts import script, user_env

WORKER = "tests.production_workers.GatedDoubler"


def sh(script: Path, command: str, cwd: Path, timeout: float = 120.0,
       **env: str) -> subprocess.CompletedProcess[str]:
    """``sh run_script.sh <command>`` from ``cwd``, as an operator would type it."""
    return subprocess.run(
        ["sh", str(script), command], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=user_env(env), stdin=subprocess.DEVNULL)


@dataclass
class Deployment:
    """A service deployed with a generated run script in ``dir``, driven from ``cwd``."""

    name: str
    redis_url: str
    dir: Path
    cwd: Path
    gate: Path
    clients: list[WKRClient] = field(default_factory=list)

    @property
    def script(self) -> Path:
        return self.dir / "run_script.sh"

    @property
    def pid_file(self) -> Path:
        return self.dir / f"{self.name}.pid"

    @property
    def log(self) -> str:
        path = self.dir / "logs" / f"{self.name}.std.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def run(self, command: str, **env: str) -> subprocess.CompletedProcess[str]:
        return sh(self.script, command, self.cwd, **env)

    def popen(self, command: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["sh", str(self.script), command], cwd=self.cwd, text=True,
                                env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def pid(self) -> int:
        return int(self.pid_file.read_text())

    def client(self) -> WKRClient:
        client = WKRClient(name=self.name, broker_url=self.redis_url, result_url=self.redis_url,
                           connect_timeout=30)
        self.clients.append(client)
        return client

    @property
    def queue(self) -> RequestQueue:
        return RequestQueue(connect(self.redis_url), ServiceKeys(self.name))

    @property
    def registry(self) -> ServiceRegistry:
        return ServiceRegistry(connect(self.redis_url), ServiceKeys(self.name))

    def workers(self) -> dict[str, dict[str, Any]]:
        return self.registry.live_workers()

    def supervisors(self) -> list[int]:
        """Every ``wkr-serving-start`` process on this host serving this name."""
        return [pid for pid in procs.all_pids()
                if "wkr_celery.server.cli" in (argv := procs.cmdline(pid)) and self.name in argv]

    def predicting(self) -> list[Path]:
        return sorted(self.gate.glob("predicting-*"))


@pytest.fixture
def deploy(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    """Generate run scripts with ``wkr-serving-make``; every one is stopped by force after."""
    made: list[Deployment] = []

    def factory(*flags: str) -> Deployment:
        name = f"p{uuid.uuid4().hex[:8]}"
        base = tmp_path / name
        deployment = Deployment(name, redis_url, base / "svc", base / "elsewhere", base / "gate")
        for path in (deployment.dir, deployment.cwd, deployment.gate):
            path.mkdir(parents=True)
        made_script = subprocess.run(
            [script("wkr-serving-make"), WORKER, "-name", name,
             "-broker_url", redis_url, "-result_url", redis_url, "-num_worker", "1",
             "-batch_size", "1", "-prefetch", "1", "-visibility_timeout", "2",
             "-model_dir", str(deployment.gate), *flags],
            cwd=ROOT, env=user_env(), capture_output=True, text=True, check=True, timeout=60)
        deployment.script.write_text(made_script.stdout)
        made.append(deployment)
        return deployment

    yield factory
    for deployment in made:
        (deployment.gate / "hold").unlink(missing_ok=True)
        for client in deployment.clients:
            client.close()
        if deployment.pid_file.exists():
            deployment.run("stopf")


def test_start_serves_from_the_scripts_directory_and_a_second_start_runs_no_second_copy(
    deploy: Callable[..., Deployment],
) -> None:
    svc = deploy()
    started = svc.run("start")
    assert started.returncode == 0, started.stdout + started.stderr + svc.log
    assert svc.pid_file.exists() and (svc.dir / "logs" / f"{svc.name}.std.log").exists()
    assert not list(svc.cwd.iterdir()), "pid file and logs belong beside the script"
    assert "wkr-serving-start" in svc.log

    status = svc.run("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"wkr.{svc.name}.0@" in status.stdout
    # start and status counted the workers this script's process started, by their heartbeats
    assert [w["supervisor"] for w in svc.workers().values()] == [svc.pid()]
    assert f"worker(s) started by pid {svc.pid()} alive" in status.stdout

    client = svc.client()
    assert [client.encode(x).result(30) for x in (1, 2.5, 7)] == [2, 5.0, 14]

    pid = svc.pid()
    again = svc.run("start")
    assert again.returncode == 0 and "already running" in again.stdout
    assert svc.pid() == pid
    assert svc.supervisors() == [pid]
    assert len(svc.workers()) == 1

    restarted = svc.run("restart")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert svc.pid() != pid and not procs.alive(pid)
    assert svc.supervisors() == [svc.pid()]
    assert client.encode(4).result(30) == 8

    stopped = svc.run("stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not svc.pid_file.exists()
    assert svc.run("status").returncode == 3


def test_graceful_stop_answers_the_request_in_predict_and_the_next_start_serves_the_rest(
    deploy: Callable[..., Deployment],
) -> None:
    svc = deploy()
    assert svc.run("start").returncode == 0, svc.log
    client = svc.client()
    (svc.gate / "hold").touch()
    in_predict = client.encode(10)
    wait_until(svc.predicting, 30, what="the first request to reach predict")
    queued = [client.encode(x) for x in (11, 12, 13)]
    wait_until(lambda: svc.queue.queue_length() <= 2, 30, what="the worker to buffer one")

    stopping = svc.popen("stop")
    wait_until(lambda: "gave 1 buffered requests back" in svc.log, 30,
               what="the stopping worker to give its buffered request back")
    assert not in_predict.done()
    (svc.gate / "hold").unlink()
    output, _ = stopping.communicate(timeout=60)
    assert stopping.returncode == 0, output + svc.log

    assert in_predict.result(10) == 20
    assert not any(f.done() for f in queued)
    assert svc.queue.queue_length() == 3, "buffered requests go back to the queue"
    assert len(svc.predicting()) == 1
    assert svc.run("status").returncode == 3

    assert svc.run("start").returncode == 0, svc.log
    assert [f.result(30) for f in queued] == [22, 24, 26]
    assert svc.run("stop").returncode == 0


def test_stopf_kills_the_supervisor_and_its_workers_and_the_next_start_serves_what_they_held(
    deploy: Callable[..., Deployment],
) -> None:
    svc = deploy()
    assert svc.run("start").returncode == 0, svc.log
    client = svc.client()
    (svc.gate / "hold").touch()
    held = client.encode(5)
    wait_until(svc.predicting, 30, what="the request to reach predict")
    supervisor = svc.pid()
    service_pids = [supervisor, *procs.descendants(supervisor)]
    worker_pids = [w["pid"] for w in svc.workers().values()]
    assert set(worker_pids) <= set(service_pids)

    killed = svc.run("stopf")
    assert killed.returncode == 0, killed.stdout + killed.stderr
    assert not [pid for pid in service_pids if procs.alive(pid)]
    assert not svc.pid_file.exists()
    assert not held.done()
    assert svc.run("status").returncode == 3

    (svc.gate / "hold").unlink()
    assert svc.run("start").returncode == 0, svc.log
    assert held.result(30) == 10, "the killed worker's request is requeued and served"
    assert svc.run("stop").returncode == 0


def test_a_stale_pid_file_is_reported_replaced_and_never_used_to_signal_another_process(
    deploy: Callable[..., Deployment], make_service: Callable[..., Service],
) -> None:
    svc = deploy()
    gone = subprocess.Popen(["true"])
    gone.wait()
    svc.pid_file.write_text(f"{gone.pid}\n")
    status = svc.run("status")
    assert status.returncode == 3 and "stale pid file" in status.stdout
    assert svc.run("stop").returncode == 0
    assert not svc.pid_file.exists()

    other = make_service("workers.echo.Worker")  # the same program, serving another name
    assert other.proc is not None
    svc.pid_file.write_text(f"{other.proc.pid}\n")
    assert svc.run("status").returncode == 3
    assert svc.run("stopf").returncode == 0
    svc.pid_file.write_text(f"{other.proc.pid}\n")
    assert svc.run("stop").returncode == 0
    svc.pid_file.write_text(f"{other.proc.pid}\n")
    started = svc.run("start")
    assert started.returncode == 0, started.stdout + svc.log
    assert "stale pid file" in started.stdout
    assert other.proc.poll() is None and len(other.live_workers()) == 1, "left alone"
    assert svc.pid() != other.proc.pid and svc.run("status").returncode == 0
    assert svc.run("stop").returncode == 0
    assert other.proc.poll() is None


def test_every_argument_reaches_the_service_exactly_as_given(
    redis_url: str, tmp_path: Path,
) -> None:
    name = f"q{uuid.uuid4().hex[:8]}"
    tricky = [WORKER, "-name", name, "-broker_url", redis_url, "-result_url", redis_url,
              "-model_dir", "/nonexistent/it's a \"dir\" with $HOME `id`",
              "-model_name", "a;b&c|d>e *\nsecond line", "-http_api_key", "$(touch pwned)",
              "-device_map", "-1", "-batch_timeout", "1.5"]
    script = tmp_path / "run_script.sh"
    script.write_text(render_script(serving_command(tricky, workdir=str(ROOT))))
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    try:
        started = sh(script, "start", tmp_path)
        assert started.returncode == 0, started.stdout + started.stderr
        pid = int((tmp_path / f"{name}.pid").read_text())
        assert procs.cmdline(pid) == [sys.executable, "-m", "wkr_celery.server.cli", *tricky]
        assert sh(script, "status", tmp_path).returncode == 0
        assert not (tmp_path / "pwned").exists() and not (ROOT / "pwned").exists()
        assert sh(script, "stop", tmp_path).returncode == 0
    finally:
        if (tmp_path / f"{name}.pid").exists():
            sh(script, "stopf", tmp_path)
