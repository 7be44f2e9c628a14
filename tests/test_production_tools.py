"""``wkr-serving-check``, ``wkr-serving-terminate``, ``wkr-serving-make -format systemd`` and
``wkr-decentral-make``, run as commands against real services."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from wkr_celery.broker import RequestQueue, ServiceRegistry
from wkr_celery.codec import dumps
from wkr_celery.connections import connect
from wkr_celery.keys import SERVICES, ServiceKeys
from wkr_celery.production import procs

from .helpers import ROOT, Service, free_port, wait_until
from .scripts import script, user_env
from .test_newcomer import Quickstart
from .test_production_script import sh

GATED = "tests.production_workers.GatedDoubler"


#: The console script of each ``python -m wkr_celery.production`` command.
SCRIPTS = {"make": "wkr-serving-make", "check": "wkr-serving-check",
           "terminate": "wkr-serving-terminate", "decentral-make": "wkr-decentral-make"}


def tool(command: str, *args: str, timeout: float = 90.0,
         cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """The console script of ``command`` (``make`` is ``wkr-serving-make``…) typed in ``cwd``."""
    return subprocess.run([script(SCRIPTS[command]), *args], cwd=cwd, env=user_env(),
                          capture_output=True, text=True, timeout=timeout)


def where(service: Service) -> list[str]:
    return ["-name", service.name, "-broker_url", service.broker_url]


# wkr-serving-check ---------------------------------------------------------------------------


def test_check_waits_for_a_starting_service_then_names_each_worker_that_answers(
    make_service: Callable[..., Service],
) -> None:
    service = make_service("workers.linear.Worker", "-num_worker", "2", "-protocol", "npy",
                           wait=None)
    waited = tool("check", *where(service), "-wait", "60", "-probe")
    assert waited.returncode == 0, waited.stderr + service.log()
    service.wait_workers(2)
    checked = tool("check", *where(service))
    assert "2 of 2 worker(s) alive and answering" in checked.stdout
    for index in (0, 1):
        assert f"wkr.{service.name}.{index}@" in checked.stdout


def test_check_fails_clearly_without_a_live_worker_or_without_a_broker(redis_url: str) -> None:
    nobody = tool("check", "-name", f"n{uuid.uuid4().hex[:8]}", "-broker_url", redis_url)
    assert nobody.returncode == 1 and "has a heartbeat" in nobody.stderr
    port = free_port()
    no_broker = tool("check", "-name", "x", "-broker_url", f"redis://127.0.0.1:{port}/0")
    assert no_broker.returncode == 1 and "is not reachable" in no_broker.stderr
    bad_flag = tool("check", "-name", "x", "-no_such_flag")
    assert bad_flag.returncode == 2 and "-no_such_flag" in bad_flag.stderr


def test_check_fails_while_the_worker_is_frozen_although_its_heartbeat_is_still_there(
    make_service: Callable[..., Service],
) -> None:
    service = make_service("workers.echo.Worker", "-visibility_timeout", "30")
    (beat,) = service.live_workers().values()
    os.kill(beat["pid"], signal.SIGSTOP)
    try:
        frozen = tool("check", *where(service), "-timeout", "1")
        assert service.live_workers(), "the heartbeat key outlives the freeze"
    finally:
        os.kill(beat["pid"], signal.SIGCONT)
    assert frozen.returncode == 1 and "none answered a ping" in frozen.stderr
    assert tool("check", *where(service), "-wait", "30").returncode == 0


@pytest.fixture(scope="module")
def one_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quickstart]:
    """``wkr-serving-start workers.linear.Worker -port_in P -port_out P``: one Redis for both."""
    service = Quickstart(tmp_path_factory.mktemp("one_redis"), one_redis=True)
    yield service
    service.stop()


def test_check_probe_reads_the_answer_where_the_service_stores_it_unless_told_otherwise(
    one_redis: Quickstart,
) -> None:
    port = str(one_redis.port_in)
    for where_ in (["-port_in", port], ["-broker_url", one_redis.broker_url]):
        probed = tool("check", "-name", "default", *where_, "-probe", "-timeout", "10")
        assert probed.returncode == 0, probed.stderr + one_redis.log()
        assert "alive and answering" in probed.stdout
    elsewhere = str(free_port())
    told = tool("check", "-name", "default", "-port_in", port, "-port_out", elsewhere, "-probe")
    assert told.returncode == 1
    assert f"stores its results on redis://127.0.0.1:{port}/0" in told.stderr
    assert f"pass port_out={port}" in told.stderr


def test_a_worker_on_another_host_counts_by_heartbeat_but_not_for_a_local_probe(
    redis_url: str,
) -> None:
    """A worker started without the supervisor has no node name to ping: its heartbeat is the
    evidence. ``-local`` (a container's own probe) ignores workers on other hosts."""
    name = f"n{uuid.uuid4().hex[:8]}"
    registry = ServiceRegistry(connect(redis_url), ServiceKeys(name))
    beat = {"worker_id": "gpu-box-4242", "pid": 4242, "host": "gpu-box", "requests": 9}
    registry.heartbeat("gpu-box-4242", dumps(beat), ttl=30)
    try:
        anywhere = tool("check", "-name", name, "-broker_url", redis_url)
        assert anywhere.returncode == 0 and "gpu-box-4242 (pid 4242, 9 requests)" in anywhere.stdout
        here = tool("check", "-name", name, "-broker_url", redis_url, "-local")
        assert here.returncode == 1 and "runs on this host" in here.stderr
    finally:
        # it holds nothing: this only takes it out of the registry
        RequestQueue(registry.client, registry.keys).requeue_dead("gpu-box-4242", blamed=())


# wkr-serving-terminate -----------------------------------------------------------------------


def test_terminate_stops_a_service_by_name_gracefully(
    make_service: Callable[..., Service],
) -> None:
    service = make_service("workers.echo.Worker", "-num_worker", "2", wait=2)
    worker_pids = [w["pid"] for w in service.live_workers().values()]
    stopped = tool("terminate", *where(service))
    assert stopped.returncode == 0, stopped.stderr
    assert service.proc is not None and service.proc.wait(30) == 0
    assert not [pid for pid in worker_pids if procs.alive(pid)]
    assert not service.live_workers(), "graceful workers unregister"


def test_terminate_force_kills_at_once_and_requeues_the_request_in_predict(
    make_service: Callable[..., Service], tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "hold").touch()
    service = make_service(GATED, "-model_dir", str(gate), "-batch_size", "1")
    client = service.client()
    held = client.encode(21)
    wait_until(lambda: list(gate.glob("predicting-*")), 30, what="the request in predict")
    (beat,) = service.live_workers().values()

    killed = tool("terminate", *where(service), "-force")
    assert killed.returncode == 0, killed.stderr
    assert "1 request(s) put back on the queue" in killed.stdout
    assert service.proc is not None and service.proc.wait(10) == -signal.SIGKILL
    assert not procs.alive(beat["pid"])
    assert not service.live_workers() and service.queue.queue_length() == 1
    # Killed, nothing of it ran its stop: the tool takes the name off the services list, or a
    # client naming no service would pick this dead one
    listed = service.queue.client.smembers(SERVICES)
    assert service.name.encode() not in listed, listed

    (gate / "hold").unlink()
    make_service(GATED, "-model_dir", str(gate), name=service.name)
    assert service.name.encode() in service.queue.client.smembers(SERVICES)
    assert held.result(30) == 42


def test_terminate_finds_a_service_whose_workers_are_still_loading(
    make_service: Callable[..., Service], tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "hold-load").touch()
    service = make_service(GATED, "-model_dir", str(gate), wait=None)
    wait_until(lambda: [p for p in procs.all_pids()
                        if (procs.environ(p) or {}).get("WKR_NAME") == service.name],
               30, what="the worker process to exist")
    assert not service.live_workers()
    killed = tool("terminate", *where(service), "-force")
    assert killed.returncode == 0, killed.stderr
    assert service.proc is not None and service.proc.wait(10) == -signal.SIGKILL


def test_terminate_of_an_unknown_service_says_nothing_was_found(redis_url: str) -> None:
    result = tool("terminate", "-name", f"n{uuid.uuid4().hex[:8]}", "-broker_url", redis_url)
    assert result.returncode == 1 and "no process of service" in result.stderr


# wkr-serving-make ----------------------------------------------------------------------------


def test_make_refuses_what_wkr_serving_start_would_refuse() -> None:
    typo = tool("make", "workers.linear.Worker", "-name", "svc", "-num_workers", "2")
    assert typo.returncode == 2 and "-num_workers" in typo.stderr and not typo.stdout
    fmt = tool("make", "workers.linear.Worker", "-name", "svc", "-format", "xml")
    assert fmt.returncode == 2 and "sh, systemd" in fmt.stderr
    path_name = tool("make", "workers.linear.Worker", "-name", "../svc")
    assert path_name.returncode == 2 and "pid file" in path_name.stderr
    helped = tool("make", "-h")
    assert helped.returncode == 0 and "-format" in helped.stdout


def test_make_systemd_prints_a_unit_running_the_same_command_with_a_graceful_stop() -> None:
    flags = ["workers.linear.Worker", "-name", "svc", "-num_worker", "2",
             "-http_api_key", "50% of $HOME"]
    unit = tool("make", *flags, "-format", "systemd")
    assert unit.returncode == 0, unit.stderr
    text = unit.stdout
    exec_start = re.search(r"^ExecStart=(.*)$", text, re.M)
    assert exec_start is not None
    python = Path(script("wkr-serving-make")).read_text().splitlines()[0].removeprefix("#!")
    assert exec_start.group(1) == (f"{python} -m wkr_celery.server.cli "
                                   'workers.linear.Worker -name svc -num_worker 2 '
                                   '-http_api_key "50%% of $$HOME"')
    for line in ("KillSignal=SIGTERM", "KillMode=mixed", "TimeoutStopSec=60",
                 "Restart=on-failure", f"WorkingDirectory={ROOT}"):
        assert re.search(f"^{re.escape(line)}$", text, re.M), line
    assert re.search(r"^ExecStartPost=\S+ -m wkr_celery.production check -wait 300 "
                     r"workers.linear.Worker -name svc .* -supervisor \$MAINPID$", text, re.M)


def test_the_console_scripts_in_pyproject_point_at_these_commands() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    scripts = dict(re.findall(r'^([a-z-]+) = "([\w.:]+)"$', pyproject, re.M))
    from wkr_celery.production import cli

    for command in ("wkr-serving-make", "wkr-serving-terminate", "wkr-serving-check",
                    "wkr-decentral-make"):
        module, _, function = scripts[command].partition(":")
        assert module == "wkr_celery.production.cli" and callable(getattr(cli, function))


# wkr-decentral-make --------------------------------------------------------------------------

SEED_DECENTRAL = """decentralize.ProcessingModel \\
    -port 21324 \\
    -port_out 21326 \\
    -http_port 8900 \\
    -num_client 24 \\
    -remote_servers [[10.40.34.16, 8068, 8069], [10.40.34.14, 8068, 8069]] \\
    -log_dir /tmp/log_dir \\
    -name YOUR_DECENTRALIZE_SERVICE_NAME"""


def test_decentral_make_passes_the_seeds_flags_to_wkr_decentral_start_untouched(
    tmp_path: Path,
) -> None:
    argv = shlex.split(SEED_DECENTRAL.replace("\\\n", " "))  # sh joins continued lines
    made = tool("decentral-make", *argv, "-format", "sh", cwd=ROOT / "examples")
    assert made.returncode == 0, made.stderr
    script = tmp_path / "run_script.sh"
    script.write_text(made.stdout)
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    command = made.stdout.split("service_command() {")[1].split("\n}")[0].split("\n", 1)[1]
    words = shlex.split(command.replace("\\\n", " "))
    assert words[:3] == ["$@", "$PYTHON", "-c"]
    assert "from wkr_celery.decentral.cli import start_main" in words[3]
    assert words[4:] == argv, "every flag but -format, verbatim and in order"
    health = made.stdout.split("health() {")[1].split("\n}")[0]
    assert shlex.split(health.replace("\\\n", " "))[1:] == [
        "-m", "wkr_celery.production", "http-check", "http://127.0.0.1:8900/"]
    unit = tool("decentral-make", *argv, "-format", "systemd", cwd=ROOT / "examples")
    assert unit.returncode == 0 and "ExecStart=" in unit.stdout
    assert "KillSignal=SIGTERM" in unit.stdout
    nameless = tool("decentral-make", *argv[:-2], cwd=ROOT / "examples")
    assert nameless.returncode == 2 and "needs -name" in nameless.stderr


def test_a_decentral_script_starts_reports_and_stops_wkr_decentral_start(
    redis_url: str, tmp_path: Path,
) -> None:
    name, port = f"dc{uuid.uuid4().hex[:8]}", free_port()
    redis_port = redis_url.rsplit(":", 1)[1].split("/")[0]
    made = tool("decentral-make", "tests.decentral_units.Idler", "-name", name,
                "-broker_url", redis_url, "-num_client", "2", "-http_port", str(port),
                "-remote_servers", f"[[127.0.0.1, {redis_port}, {redis_port}, nobody]]")
    assert made.returncode == 0, made.stderr
    script = tmp_path / "run_script.sh"
    script.write_text(made.stdout)

    started = sh(script, "start", tmp_path)
    assert started.returncode == 0, started.stdout + started.stderr + _log(tmp_path)
    assert sh(script, "status", tmp_path).returncode == 0
    pid = int((tmp_path / f"{name}.pid").read_text())
    family = [pid, *procs.descendants(pid)]
    assert len(family) >= 3, "the central and its two units"
    stopped = sh(script, "stop", tmp_path)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not [p for p in family if procs.alive(p)]
    assert sh(script, "status", tmp_path).returncode == 3

    assert sh(script, "start", tmp_path).returncode == 0, _log(tmp_path)
    pid = int((tmp_path / f"{name}.pid").read_text())
    family = [pid, *procs.descendants(pid)]
    assert sh(script, "stopf", tmp_path).returncode == 0
    assert not [p for p in family if procs.alive(p)]


def _log(directory: Path) -> str:
    logs = sorted((directory / "logs").glob("*.std.log"))
    path = logs[0] if logs else directory / "logs" / "missing.std.log"
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.mark.parametrize("command", ["make", "check", "terminate", "decentral-make"])
def test_every_command_prints_help(command: str) -> None:
    helped = tool(command, "-h")
    assert helped.returncode == 0 and helped.stdout.startswith("usage:")


def test_make_refuses_at_once_a_worker_class_start_would_refuse_and_a_missing_name(
    tmp_path: Path,
) -> None:
    absent = tool("make", "workers.linear.Nope", "-name", "svc")
    assert absent.returncode == 2 and "workers.linear.Nope" in absent.stderr and not absent.stdout
    elsewhere = tool("make", "workers.linear.Worker", "-name", "svc", cwd=tmp_path)
    assert elsewhere.returncode == 2 and "No module named 'workers'" in elsewhere.stderr
    assert str(tmp_path) in elsewhere.stderr, "says where it looked"
    nameless = tool("make", "workers.linear.Worker")
    assert nameless.returncode == 2 and "needs -name" in nameless.stderr
    assert re.search(r"^usage: wkr-serving-make .* -name SERVICE ", tool("make", "-h").stdout)

    remote = ["-name", "edge", "-remote_servers", "[[127.0.0.1, 8996, 8998]]"]
    from_root = tool("decentral-make", "decentralize.ProcessingModel", *remote)
    assert from_root.returncode == 2 and "No module named 'decentralize'" in from_root.stderr
    typo = tool("decentral-make", "decentralize.ProcessingModel", *remote, "-num_clients", "2",
                cwd=ROOT / "examples")
    assert typo.returncode == 2 and "-num_clients" in typo.stderr and not typo.stdout
    made = tool("decentral-make", "decentralize.ProcessingModel", *remote,
                cwd=ROOT / "examples")
    assert made.returncode == 0 and "wkr-decentral-start" in made.stdout, made.stderr


def test_two_services_run_from_one_folder_keep_their_own_pid_files_and_logs(
    redis_url: str, tmp_path: Path,
) -> None:
    names = [f"a{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}"]
    scripts = {}
    for name in names:
        made = tool("make", "workers.echo.Worker", "-name", name, "-broker_url", redis_url)
        assert made.returncode == 0, made.stderr
        scripts[name] = tmp_path / f"run_{name}.sh"
        scripts[name].write_text(made.stdout)
    try:
        for name in names:
            started = sh(scripts[name], "start", tmp_path)
            assert started.returncode == 0, started.stdout + started.stderr
        for name, other in (names, names[::-1]):
            log = (tmp_path / "logs" / f"{name}.std.log").read_text()
            assert f"starting {name}" in log and other not in log
            assert (tmp_path / f"{name}.pid").exists()
    finally:
        for name in names:
            sh(scripts[name], "stop", tmp_path)
    assert not list(tmp_path.glob("*.pid"))


@contextlib.contextmanager
def something_else_listening() -> Iterator[int]:
    """A port where a server that is not Redis answers (an SSH banner), for as long as needed."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(10)
        listener.close()


def _start_and_check(broker_url: str) -> list[subprocess.CompletedProcess[str]]:
    """``wkr-serving-start`` and ``wkr-serving-check`` as typed, both given ``broker_url``."""
    start = subprocess.run([script("wkr-serving-start"), "workers.linear.Worker", "-device_map",
                            "-1", "-broker_url", broker_url], cwd=ROOT, env=user_env(),
                           capture_output=True, text=True, timeout=90)
    return [start, tool("check", "-name", "x", "-broker_url", broker_url)]


@pytest.mark.parametrize("url", ["redis://127.0.0.1:notaport/0", "redis://127.0.0.1:99999/0",
                                 "redis://:secret@127.0.0.1:0/0"])
def test_a_broker_url_with_an_impossible_port_is_refused_in_one_line(url: str) -> None:
    for done in _start_and_check(url):
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and "secret" not in done.stderr
        assert "the port must be a number from 1 to 65535" in done.stderr


def test_a_broker_port_where_something_else_answers_is_said_not_to_be_redis() -> None:
    with something_else_listening() as port:
        for done in _start_and_check(f"redis://127.0.0.1:{port}/0"):
            assert done.returncode == 1, done.stderr
            assert "Traceback" not in done.stderr
            assert f"redis://127.0.0.1:{port}/0" in done.stderr
            assert "is not a Redis server" in done.stderr
