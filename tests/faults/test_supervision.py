"""The supervisor watches every process it owns: killed with SIGKILL, each is restarted with a
log line naming it; the embedded Redis dies with its supervisor and is never adopted; a
crash-looping service tells its clients why; nothing is left in /tmp."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from concurrent.futures import wait
from pathlib import Path

import pytest
import redis

from tests.helpers import free_port, wait_until
from wkr_celery.broker import ServiceRegistry
from wkr_celery.errors import RequestLost, ServiceUnavailable
from wkr_celery.keys import ServiceKeys
from wkr_celery.processes import OWNER_FILE, clean_stale_dirs, pid_alive
from wkr_celery.redis_embedded import EmbeddedRedis

from .terminal import TerminalService

SLOW = "tests.faults.workers.TenthDoubler"
REDIS_PID = r"started Redis on 127\.0\.0\.1:{port}, pid (?P<pid>\d+)"
WORKER_PID = r"worker \d+ \(\S+\) started, pid (?P<pid>\d+)"


@pytest.fixture
def services(tmp_path: Path) -> Iterator[list[TerminalService]]:
    started: list[TerminalService] = []
    yield started
    for service in started:
        service.close()


def _service(services: list[TerminalService], tmp_path: Path, worker: str, *args: str,
             **kwargs: object) -> TerminalService:
    service = TerminalService(tmp_path, worker, *args, **kwargs)  # type: ignore[arg-type]
    services.append(service)
    return service


def _kill_redis_under_load(service: TerminalService, port: int) -> list:
    client = service.client()
    futures = [client.encode(n) for n in range(600)]
    wait_until(lambda: any(f.done() for f in futures), 30, what="the first answers")
    [pid] = service.pids(REDIS_PID.format(port=port))
    os.kill(pid, signal.SIGKILL)
    assert not all(f.done() for f in futures), "everything was answered before the kill"
    wait_until(lambda: f"embedded Redis on 127.0.0.1:{port} exited with code -9"
               in service.log(), 10, what="the supervisor to notice the dead Redis")
    wait_until(lambda: f"embedded Redis on 127.0.0.1:{port} restarted" in service.log(), 20,
               what="the supervisor to restart Redis")
    assert not pid_alive(pid), "the killed Redis was left a zombie"
    return futures


@pytest.mark.timeout(120)
def test_broker_redis_killed_with_aof_is_restarted_and_loses_nothing(
    services: list[TerminalService], tmp_path: Path
) -> None:
    service = _service(services, tmp_path, SLOW, "-data_dir", str(tmp_path / "data"))
    service.start()
    futures = _kill_redis_under_load(service, service.port_in)
    finished, unfinished = wait(futures, timeout=60)
    assert not unfinished, f"{len(unfinished)} unanswered; log:\n{service.log()[-4000:]}"
    assert [f.result() for f in futures] == [2 * n for n in range(600)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("which", ["broker", "result"])
def test_redis_killed_without_aof_tells_every_waiting_caller_request_lost(
    services: list[TerminalService], tmp_path: Path, which: str
) -> None:
    service = _service(services, tmp_path, SLOW)
    service.start()
    port = service.port_in if which == "broker" else service.port_out
    futures = _kill_redis_under_load(service, port)  # no timeout on any request
    finished, unfinished = wait(futures, timeout=30)
    assert not unfinished, f"{len(unfinished)} callers still wait; log:\n{service.log()[-3000:]}"
    lost = [f.exception() for f in futures if f.exception() is not None]
    # Queued requests die with an empty broker; an empty result Redis loses only the answers
    # stored and not yet taken at the kill, which may be none (the workers go on serving).
    assert lost or which == "result", "the kill lost no request; the test proved nothing"
    assert all(isinstance(e, RequestLost) for e in lost), lost[:3]
    answered = [(n, f.result()) for n, f in enumerate(futures) if f.exception() is None]
    assert all(result == 2 * n for n, result in answered)
    assert service.client().encode(21).result(timeout=30) == 42


def _run_dirs(service: TerminalService) -> list[str]:
    return glob.glob(os.path.join(service.env["TMPDIR"], f"wkr-{service.name}-*"))


def _redis_dirs(service: TerminalService) -> list[str]:
    return [path for port in (service.port_in, service.port_out)
            for path in glob.glob(os.path.join(service.env["TMPDIR"], f"wkr-redis-{port}-*"))]


@pytest.fixture
def private_tmp() -> Iterator[str]:
    """A temporary folder of the test's own, short enough for Unix socket paths. Every embedded
    Redis start sweeps the dead owners' ``wkr-redis-*`` folders of its temporary folder, so in
    the shared one a test running beside this one could clean the killed run's folders before
    this test looks for them, and the test would prove nothing of its own start."""
    folder = tempfile.mkdtemp(prefix="wkrt-")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.timeout(120)
def test_redis_dies_with_a_killed_supervisor_and_the_next_start_cleans_up(
    services: list[TerminalService], tmp_path: Path, private_tmp: str
) -> None:
    service = _service(services, tmp_path, SLOW, env={"TMPDIR": private_tmp})
    first = service.start()
    redis_pids = (service.pids(REDIS_PID.format(port=service.port_in))
                  + service.pids(REDIS_PID.format(port=service.port_out)))
    assert len(redis_pids) == 2 and _run_dirs(service)
    os.kill(first.proc.pid, signal.SIGKILL)
    wait_until(lambda: not any(pid_alive(p) for p in redis_pids), 15,
               what="the embedded Redis servers to exit with their supervisor")
    left = _redis_dirs(service)
    assert _run_dirs(service) and len(left) == 2, "nothing to clean; the test proves less"

    service.start()  # the same command again: fresh Redis servers of its own
    assert "reusing" not in service.log()
    assert len(_run_dirs(service)) == 1, _run_dirs(service)
    assert not set(left) & set(_redis_dirs(service)), "the killed run's Redis dirs stayed"
    assert service.client().encode(4).result(timeout=30) == 8
    service.close()
    assert _run_dirs(service) == [] and _redis_dirs(service) == []
    assert not service.redis_answers(service.port_in)


@pytest.mark.timeout(90)
def test_workers_of_a_killed_supervisor_stop_gracefully_even_with_their_log_pipe_gone(
    services: list[TerminalService], tmp_path: Path, redis_url: str
) -> None:
    """With ``-log_dir`` each worker writes to a pipe its supervisor reads. SIGKILL the
    supervisor and the kernel sends each worker SIGTERM (``PR_SET_PDEATHSIG``) once per
    supervisor thread that exits, the last time when the pipe has no reader left. Celery's
    warm-shutdown handler printed to that pipe before setting its stop flag: the print failed
    (EPIPE), the error surfaced in the consumer as a lost broker connection, and the worker
    reconnected and lived on (here the broker outlives the supervisor, so for good). Each worker
    must stop by the graceful path: it leaves the registry."""
    service = _service(services, tmp_path, SLOW, "-broker_url", redis_url)
    supervisor = service.start(wait=False).proc
    with redis.Redis.from_url(redis_url) as broker:
        registry = ServiceRegistry(broker, ServiceKeys(service.name))
        wait_until(lambda: len(registry.live_workers()) == 2, 60,
                   what=f"two live workers; log:\n{service.log()[-3000:]}")
        workers = service.pids(WORKER_PID)
        assert len(workers) == 2, service.log()
        try:
            os.kill(supervisor.pid, signal.SIGKILL)
            supervisor.wait(10)
            wait_until(lambda: not any(pid_alive(pid) for pid in workers), 45,
                       what=f"the workers {workers} of the killed supervisor to exit")
        finally:
            for pid in workers:
                if pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
        assert not registry.live_workers(), "a worker exited without its graceful stop"


@pytest.mark.timeout(60)
def test_a_port_held_by_a_redis_it_did_not_start_is_named_not_adopted(
    services: list[TerminalService], tmp_path: Path
) -> None:
    service = _service(services, tmp_path, SLOW)
    with EmbeddedRedis(service.port_in) as stranger:
        terminal = service.start(wait=False)
        code = terminal.close(30)
        assert code == 1, terminal.output
        assert f"port {service.port_in} on 127.0.0.1 is taken by pid {stranger.pid}" \
            in terminal.output, terminal.output
        assert stranger.exit_code() is None, "the stranger's Redis was stopped"


@pytest.mark.timeout(120)
def test_killed_rest_process_is_restarted(
    services: list[TerminalService], tmp_path: Path
) -> None:
    http_port = free_port()
    service = _service(services, tmp_path, SLOW, "-http_port", str(http_port))
    service.start()
    url = f"http://127.0.0.1:{http_port}/healthz"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    wait_until(healthy, 30, what="the REST API")
    [pid] = service.pids(r"REST API on \S+, pid (?P<pid>\d+)")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: f"REST API (pid {pid}) exited with code -9" in service.log(), 10,
               what="the supervisor to notice the dead REST process")
    wait_until(lambda: len(service.pids(r"REST API on \S+, pid (?P<pid>\d+)")) == 2, 10,
               what="a new REST process")
    wait_until(healthy, 30, what="the restarted REST API")


@pytest.mark.timeout(90)
def test_client_of_a_crash_looping_service_is_told_the_worker_error(
    services: list[TerminalService], tmp_path: Path
) -> None:
    model_file = tmp_path / "model.bin"
    service = _service(services, tmp_path, "tests.faults.workers.NeedsModelFile",
                       env={"TEST_MODEL_FILE": str(model_file)})
    service.start(wait=False)
    wait_until(lambda: "failed to start" in service.log(), 60, what="a worker to fail")
    with pytest.raises(ServiceUnavailable) as caught:
        service.client(name=None, connect_timeout=3)  # finds the service by itself
    message = str(caught.value)
    assert f"service {service.name!r} has no live worker: worker " in message, message
    assert f"failed to start: FileNotFoundError: [Errno 2] No such file or directory: " \
        f"'{model_file}'; see {service.log_dir / service.name}.err" in message, message

    model_file.write_text("weights")  # fixed: the next restart serves
    assert service.client(connect_timeout=60).encode(3).result(timeout=30) == 6


#: A parent that dies between its child's fork and the child's ``prctl``. The child's
#: ``preexec_fn`` sends its pid, waits until the parent is gone (the last writer of a pipe
#: closes), then asks for the parent-death signal; after it the child would run ``sleep``. The
#: parent forks from a thread (``Popen`` waits for the exec) and exits once it has the pid.
_LATE_PRCTL = """
import os, subprocess, threading
from wkr_celery.processes import die_with_parent

gone_r, gone_w = os.pipe()
pid_r, pid_w = os.pipe()

def late():
    os.close(gone_w)
    os.write(pid_w, str(os.getpid()).encode())
    os.read(gone_r, 1)  # end of file: the parent has exited
    die_with_parent()

threading.Thread(target=subprocess.Popen, args=(["sleep", "120"],), daemon=True, kwargs=dict(
    preexec_fn=late, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)).start()
print(os.read(pid_r, 20).decode(), flush=True)
os._exit(0)
"""


@pytest.mark.timeout(60)
def test_a_child_whose_parent_died_before_it_asked_for_the_signal_does_not_run() -> None:
    """``PR_SET_PDEATHSIG`` set after the parent died is never sent: the child would run
    unsupervised (a worker serving for a supervisor long gone). ``die_with_parent`` looks at
    the parent after the ``prctl`` and exits at once when it is not the one that forked it."""
    parent = subprocess.run([sys.executable, "-c", _LATE_PRCTL], capture_output=True,
                            timeout=30, check=True, cwd=Path(__file__).resolve().parents[2])
    child = int(parent.stdout)
    try:
        wait_until(lambda: not pid_alive(child), 10,
                   what=f"the orphaned child {child} to exit instead of running sleep")
    finally:
        if pid_alive(child):
            os.kill(child, signal.SIGKILL)


def test_stale_temp_dirs_are_removed_only_when_their_owner_is_gone(tmp_path: Path) -> None:
    prefix = f"wkr-stale{os.getpid()}-"
    dead = subprocess.Popen(["true"])
    dead.wait()
    mine, orphan, unknown = (tempfile.mkdtemp(prefix=prefix) for _ in range(3))
    Path(mine, OWNER_FILE).write_text(str(os.getpid()))
    Path(orphan, OWNER_FILE).write_text(str(dead.pid))
    try:
        assert clean_stale_dirs(prefix) == [orphan]
        assert os.path.isdir(mine) and os.path.isdir(unknown) and not os.path.exists(orphan)
    finally:
        for path in (mine, unknown):
            shutil.rmtree(path, ignore_errors=True)
