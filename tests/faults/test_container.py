"""``wkr-serving-start`` as a container's entry point: PID 1, a read-only root filesystem with a
tmpfs at /tmp, an unprivileged uid with no home, configured by ``WKR_*`` variables only (see
:mod:`tests.faults.container`). The service starts with its embedded Redis, the compose file's
health check (``wkr-serving-check -local -quiet``, run with ``docker exec``) passes, a worker
killed with SIGKILL is restarted and leaves neither its helper processes nor zombies, one the
OOM killer ends under a memory limit is said to be, ``docker stop``'s SIGTERM stops it
gracefully (also while it still imports the worker's module, and the ``api`` service while it
still checks its broker), ``docker exec … wkr-serving-terminate`` reaches the supervisor, and
a folder it cannot write is named in one line, not a traceback."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, free_port, stop_gracefully, wait_until
from tests.scripts import script, user_env
from wkr_celery.client import WKRClient
from wkr_celery.errors import PoisonInput
from wkr_celery.processes import pid_alive

from .container import Container, MemoryCgroup, memory_cgroup_unavailable, unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason() is not None,
                                reason=unavailable_reason() or "")

DOUBLER = "tests.faults.workers.Doubler"


@pytest.fixture
def container(tmp_path: Path) -> Iterator[Callable[..., Container]]:
    """Start containers; each is killed (PID 1, and the namespace with it) after the test."""
    started: list[Container] = []

    def factory(*argv: str, tmpfs: bool = True, env: dict[str, str] | None = None) -> Container:
        box = Container(argv, tmp_path / f"container-{len(started)}.log", tmpfs=tmpfs, env=env)
        started.append(box)
        return box

    yield factory
    for box in started:
        box.close()


def service_env() -> dict[str, str]:
    """The compose file's way: every setting a ``WKR_`` variable; the embedded Redis (no
    broker URL) on free loopback ports."""
    return {"WKR_NAME": f"c{uuid.uuid4().hex[:8]}", "WKR_NUM_WORKER": "1",
            "WKR_PORT_IN": str(free_port()), "WKR_PORT_OUT": str(free_port())}


def healthy(box: Container) -> bool:
    """The compose file's worker health check, run as ``docker exec`` runs it."""
    if box.outer.poll() is not None:
        raise AssertionError(f"the service exited ({box.outer.returncode}):\n{box.output()}")
    return box.exec([script("wkr-serving-check"), "-local", "-quiet"]).returncode == 0


def encode_inside(box: Container, value: int) -> str:
    """A client in the container (``docker exec … python -c``), told only the ports."""
    code = ("import os\nfrom wkr_celery.client import WKRClient\n"
            "with WKRClient(name=os.environ['WKR_NAME'], port=int(os.environ['WKR_PORT_IN']),"
            " port_out=int(os.environ['WKR_PORT_OUT']), connect_timeout=30) as client:\n"
            f"    print(client.encode({value}).result(timeout=30))\n")
    done = box.exec([script("python"), "-c", code])
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


@pytest.mark.timeout(180)
def test_a_service_with_no_writable_home_serves_and_passes_its_health_check(
        container: Callable[..., Container]) -> None:
    """No home to write (``--read-only``, uid 65534): the embedded Redis's password cannot be
    recorded under ``~/.cache``. The supervisor used to connect without it and exit ("Redis
    refused the credentials"); now it records it in the tmpfs, where the health check and a
    client in the container find it."""
    box = container(script("wkr-serving-start"), DOUBLER, env=service_env())
    wait_until(lambda: healthy(box), 90, interval=0.5,
               what=f"the health check to pass; output:\n{box.output()}")
    assert encode_inside(box, 21) == "42"
    box.signal(signal.SIGTERM)  # docker stop
    assert box.wait(60) == 0, box.output()
    assert "Traceback" not in box.output()


@pytest.mark.timeout(180)
def test_a_worker_killed_by_sigkill_is_restarted_and_leaves_no_helper_and_no_zombie(
        container: Callable[..., Container]) -> None:
    """The OOM killer's SIGKILL on a worker with helper processes. Its helper in its process
    group used to outlive it (holding the memory its restarted copy needs); the one in a
    session of its own, orphaned to PID 1, stayed a zombie once it exited, as nothing reaped
    it. Now the group dies with the worker and PID 1 reaps what it inherits."""
    box = container(script("wkr-serving-start"), "tests.faults.workers.HelperStarter",
                    env=service_env())
    wait_until(lambda: healthy(box), 90, interval=0.5, what="the health check to pass")
    helpers = {name: (pid, parent) for pid, parent, _, name in box.processes()
               if name in ("tail", "sh")}
    assert helpers["tail"][1] == helpers["sh"][1], helpers  # both the worker's
    worker = helpers["tail"][1]
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: not pid_alive(helpers["tail"][0]), 30,
               what="the killed worker's helper in its process group to end")
    wait_until(lambda: not pid_alive(helpers["sh"][0]), 30, what="the watcher to exit")
    wait_until(lambda: healthy(box) and not box.zombies(), 60, interval=0.5,
               what=f"a restarted worker and no zombie; processes: {box.processes()}")
    assert encode_inside(box, 4) == "8"
    assert "exited with code -9" in box.output()
    box.signal(signal.SIGTERM)  # docker stop
    assert box.wait(60) == 0, box.output()


@pytest.mark.parametrize(("tmpfs", "setting", "said"), [
    (False, {}, "no writable temporary folder"),
    (True, {"WKR_LOG_DIR": "/var/log/wkr"}, "-log_dir /var/log/wkr cannot be written by uid"),
    (True, {"WKR_DATA_DIR": "/srv/wkr-data"}, "-data_dir /srv/wkr-data cannot be written by uid"),
], ids=["no-tmpfs", "log-dir", "data-dir"])
def test_a_folder_the_container_cannot_write_is_named_in_one_line(
        container: Callable[..., Container], tmpfs: bool, setting: dict[str, str],
        said: str) -> None:
    """A read-only root filesystem with no tmpfs, or a log or data folder on it: the service
    used to die with an ``OSError`` traceback; now one line names the folder and the way out,
    and nothing was started."""
    box = container(script("wkr-serving-start"), DOUBLER, tmpfs=tmpfs,
                    env={**service_env(), **setting})
    assert box.wait(60) != 0
    output = box.output()
    assert "Traceback" not in output, output
    assert f"wkr-serving-start: error: {said}" in output, output
    assert "mount a" in output.split("error:", 1)[1], output


@pytest.mark.skipif(memory_cgroup_unavailable() is not None,
                    reason=memory_cgroup_unavailable() or "")
@pytest.mark.timeout(180)
def test_a_worker_the_oom_killer_ends_is_said_to_be_out_of_memory(redis_url: str,
                                                                    tmp_path: Path) -> None:
    """``docker run --memory``: a batch that takes more than the limit gets its worker killed
    by the kernel's OOM killer. The log (and the failure recorded for clients) said only
    "exited with code -9"; now it says it was the OOM killer, and what to change. The service goes on:
    the input is failed (``-max_attempts 1``), the restarted worker serves the next one."""
    group, name = MemoryCgroup(400 << 20), f"oom{uuid.uuid4().hex[:8]}"
    log = tmp_path / "service.log"
    with open(log, "wb") as out:  # the service joins the cgroup, then runs as typed
        proc = subprocess.Popen(
            ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(group.procs),
             script("wkr-serving-start"), "tests.faults.workers.MemoryHog", "-name", name,
             "-broker_url", redis_url, "-result_url", redis_url, "-max_attempts", "1"],
            cwd=ROOT, env=user_env(), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
    try:
        with WKRClient(name=name, broker_url=redis_url, result_url=redis_url,
                       connect_timeout=60) as client:
            assert client.encode(1).result(60) == 2
            with pytest.raises(PoisonInput):
                client.encode("hog").result(90)
            assert client.encode(3).result(60) == 6
        text = log.read_text(errors="replace")
        assert "exited with code -9 (SIGKILL from the kernel's OOM killer" in text, text[-3000:]
    finally:
        stop_gracefully(proc)
        group.close()


@pytest.mark.timeout(120)
def test_docker_stop_while_the_worker_module_imports_stops_it_at_once(
        container: Callable[..., Container]) -> None:
    """``docker stop`` right after ``docker start``, while the supervisor imports the worker's
    module (``import torch`` takes seconds). PID 1 has no default action for SIGTERM, so one
    that came before the handler was dropped: the service started and ran on until the grace
    period ended in SIGKILL. Now the handler is the first thing installed, and the stop is
    kept: the supervisor exits 0 once the import is done, having started nothing."""
    mark, release = "/tmp/importing", "/tmp/import-may-end"
    box = container(script("wkr-serving-start"), "tests.faults.slow_import.Worker",
                    env={**service_env(), "TEST_IMPORT_MARK": mark, "TEST_IMPORT_RELEASE": release})
    inside = Path(f"/proc/{box.pid1}/root")  # the container's tmpfs, seen from here
    wait_until(Path(f"{inside}{mark}").exists, 30,
               what=f"the import to begin; output:\n{box.output()}")
    box.signal(signal.SIGTERM)
    # Only now may the import end: the signal is pending before the module can see the file.
    Path(f"{inside}{release}").touch()
    assert box.wait(30) == 0, box.output()
    assert "stopped before it started" in box.output()
    assert "started Redis" not in box.output()


@pytest.mark.timeout(180)
def test_wkr_serving_terminate_in_the_container_stops_the_service_or_says_why_it_cannot(
        container: Callable[..., Container]) -> None:
    """``docker exec … wkr-serving-terminate``: the supervisor is the worker's parent and PID 1.
    The tool took a parent of pid 1 for init (a worker whose supervisor died) and signalled the
    worker alone: the supervisor restarted it, and the tool said the service was stopped (or,
    with ``-force``, "killed"). Now ``-force``, which cannot freeze or kill a PID 1 from inside,
    says so and touches nothing, and the graceful stop reaches the supervisor."""
    box = container(script("wkr-serving-start"), DOUBLER, env=service_env())
    wait_until(lambda: healthy(box), 90, interval=0.5, what="the health check to pass")
    forced = box.exec([script("wkr-serving-terminate"), "-force"])
    assert forced.returncode != 0 and "PID 1 of this container" in forced.stderr, forced
    assert healthy(box) and "exited with code" not in box.output(), box.output()
    box.exec([script("wkr-serving-terminate")], timeout=90)  # ends with the container
    assert box.wait(30) == 0, box.output()
    assert "stopped" in box.output().splitlines()[-1], box.output()


@pytest.mark.timeout(120)
def test_docker_stop_while_the_api_checks_its_broker_stops_it_at_once(
        container: Callable[..., Container]) -> None:
    """The compose file's ``api`` service (``wkr-serving-http``) stopped while it still checks
    its broker at start, here one that accepts connections and never answers. Its SIGTERM
    handler came only with uvicorn, so as PID 1 it dropped the signal, finished the check
    (seconds) and served until SIGKILL. Now it exits at once: nothing is started yet."""
    silent = socket.create_server(("127.0.0.1", 0))
    accepted = threading.Event()
    held: list[socket.socket] = []

    def hold() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(silent.accept()[0])
                accepted.set()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        env = {"WKR_NAME": f"c{uuid.uuid4().hex[:8]}", "WKR_HTTP_PORT": str(free_port()),
               "WKR_BROKER_URL": f"redis://127.0.0.1:{silent.getsockname()[1]}/0"}
        box = container(script("wkr-serving-http"), env=env)
        assert accepted.wait(30), f"the API never reached its broker:\n{box.output()}"
        box.signal(signal.SIGTERM)
        assert box.wait(10) == 0, box.output()
    finally:
        silent.close()  # its accept() fails: the holder ends
        holder.join(10)
        for conn in held:
            conn.close()
