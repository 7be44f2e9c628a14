"""``wkr-serving-check -supervisor PID`` and the run script and unit that pass it: during a
deploy, a new version started under the same ``-name`` beside a serving one is waited for by
its own workers, not passed at once on the old version's.

The check is typed as the docs give it, the ``wkr-serving-check`` console script; the run script
test types ``sh run_script.sh start`` and ``status``.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from wkr_celery.broker.registry import read_beat
from wkr_celery.codec import dumps
from wkr_celery.production import procs
from wkr_celery.production.command import serving_command
from wkr_celery.production.script import render_script
from wkr_celery.production.systemd import render_unit

from .helpers import ROOT, Service, start_service, wait_until
from .scripts import script, user_env

GATED = "tests.production_workers.GatedDoubler"


def check(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """``wkr-serving-check args…``, the console script as a user types it."""
    return subprocess.run([script("wkr-serving-check"), *args],
                          cwd=ROOT, env=user_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def version(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., tuple[Service, Path]]]:
    """Start a version of service ``name`` serving :data:`GATED`, in a folder of its own (its
    log and its gate, ``hold-load`` in it when ``loading``); all are stopped after."""
    services: list[tuple[Service, Path]] = []

    def start(name: str, *, loading: bool = False) -> tuple[Service, Path]:
        folder = tmp_path / f"v{len(services) + 1}"
        gate = folder / "gate"
        gate.mkdir(parents=True)
        if loading:
            (gate / "hold-load").touch()
        service = start_service(name, redis_url, redis_url, folder, GATED,
                                ["-model_dir", str(gate)], wait=None)
        services.append((service, gate))
        return service, gate

    yield start
    for service, gate in services:
        (gate / "hold-load").unlink(missing_ok=True)
        service.stop()


def _pid(service: Service) -> int:
    assert service.proc is not None
    return service.proc.pid


def _worker_processes(supervisor: int) -> list[int]:
    """The worker processes ``supervisor`` started (loaded or not): they carry a worker id."""
    return [pid for pid in procs.descendants(supervisor)
            if "WKR_WORKER_ID" in (procs.environ(pid) or {})]


def test_check_with_supervisor_counts_only_the_workers_that_supervisor_started(
    version: Callable[..., tuple[Service, Path]], redis_url: str,
) -> None:
    name = f"s{uuid.uuid4().hex[:8]}"
    old, _ = version(name)
    old.wait_workers(1)
    new, gate = version(name, loading=True)
    wait_until(lambda: _worker_processes(_pid(new)), 30,
               what="the new version's worker process to exist (its model held loading)")
    where = ["-name", name, "-broker_url", redis_url]

    anyone = check(*where)
    assert anyone.returncode == 0, anyone.stderr + old.log()
    assert check(*where, "-local").returncode == 0, "the old version's worker runs here"
    waited = check(*where, "-supervisor", str(_pid(new)), "-wait", "2")
    assert waited.returncode == 1, waited.stdout + new.log()
    assert f"was started by supervisor pid {_pid(new)} on this host" in waited.stderr
    assert "no process" not in waited.stderr, "the new supervisor runs"
    old_own = check(*where, "-supervisor", str(_pid(old)))
    assert old_own.returncode == 0, old_own.stderr
    assert f"1 of 1 worker(s) started by pid {_pid(old)} alive and answering" in old_own.stdout

    (gate / "hold-load").unlink()
    loaded = check(*where, "-supervisor", str(_pid(new)), "-wait", "60")
    assert loaded.returncode == 0, loaded.stderr + new.log()
    (new_worker,) = _worker_processes(_pid(new))
    assert f"(pid {new_worker}," in loaded.stdout
    beats = old.live_workers().values()
    assert sorted(b["supervisor"] for b in beats) == sorted([_pid(old), _pid(new)])

    gone = subprocess.Popen(["true"])
    gone.wait()
    nobody = check(*where, "-supervisor", str(gone.pid))
    assert nobody.returncode == 1 and f"no process {gone.pid} runs here" in nobody.stderr
    refused = check(*where, "-supervisor", "-3")
    assert refused.returncode == 2 and "-supervisor" in refused.stderr


def test_a_heartbeat_names_its_supervisor_as_a_number_or_not_at_all() -> None:
    old = {"worker_id": "svc.0.ab12cd34", "pid": 41, "host": "h", "requests": 2}
    assert read_beat(dumps(old)) == old, "a beat of a version before the field still counts"
    assert read_beat(dumps({**old, "supervisor": 40})) is not None
    assert read_beat(dumps({**old, "supervisor": "40"})) is None


def test_the_run_script_and_the_unit_check_the_workers_of_the_process_they_started() -> None:
    argv = [GATED, "-name", "svc", "-broker_url", "redis://127.0.0.1:1/0"]
    spec = serving_command(argv, workdir=str(ROOT))
    script = render_script(spec)
    health = script.split("health() {")[1].split("\n}")[0]
    assert health.rstrip().endswith('\\\n        -supervisor "$1"'), health
    assert 'if health "$pid" > /dev/null 2>&1; then' in script.split("start() {")[1]
    assert 'if health "$pid"; then' in script.split("status() {")[1]
    post = [line for line in render_unit(spec).splitlines() if line.startswith("ExecStartPost=")]
    # left for systemd to expand: an escaped $$MAINPID would reach the check as text
    assert len(post) == 1 and post[0].endswith(" -name svc -broker_url "
                                               "redis://127.0.0.1:1/0 -supervisor $MAINPID")


def _sh(script: Path, command: str, **env: str) -> subprocess.Popen[str]:
    """``sh run_script.sh command`` typed in the project folder, where the service runs."""
    return subprocess.Popen(["sh", str(script), command], cwd=ROOT, env=user_env(env),
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def test_a_run_scripts_start_waits_for_its_own_workers_while_another_version_serves(
    version: Callable[..., tuple[Service, Path]], redis_url: str, tmp_path: Path,
) -> None:
    name = f"s{uuid.uuid4().hex[:8]}"
    old, _ = version(name)
    old.wait_workers(1)
    folder, gate = tmp_path / "v2", tmp_path / "v2-gate"
    folder.mkdir()
    gate.mkdir()
    (gate / "hold-load").touch()
    script = folder / "run_script.sh"
    script.write_text(render_script(serving_command(
        [GATED, "-name", name, "-broker_url", redis_url, "-result_url", redis_url,
         "-model_dir", str(gate)], workdir=str(ROOT))))
    pid_file = folder / f"{name}.pid"
    starting = _sh(script, "start")
    try:
        pid = wait_until(lambda: _read_pid(pid_file), 30, what="the run script's pid file")
        wait_until(lambda: _worker_processes(pid), 30, what="its worker process to exist")
        checked = check("-name", name, "-broker_url", redis_url)
        assert checked.returncode == 0, "the old version serves the name"
        assert starting.poll() is None, "start returned on the old version's workers: " + (
            starting.communicate(timeout=10)[0])
        status = _sh(script, "status")
        said = status.communicate(timeout=120)[0]
        assert status.returncode == 1 and "running (pid" in said and "not serving" in said

        (gate / "hold-load").unlink()
        output = starting.communicate(timeout=120)[0]
        assert starting.returncode == 0, output
        assert f"started (pid {pid}) and serving" in output
        assert pid in [b.get("supervisor") for b in old.live_workers().values()]
        status = _sh(script, "status")
        said = status.communicate(timeout=120)[0]
        assert status.returncode == 0 and f"started by pid {pid} alive" in said, said
        stopping = _sh(script, "stop")
        said = stopping.communicate(timeout=120)[0]
        assert stopping.returncode == 0 and "stopped" in said, said
    finally:
        (gate / "hold-load").unlink(missing_ok=True)
        if starting.poll() is None:
            starting.communicate(timeout=150)
        if pid_file.exists():
            _sh(script, "stopf").communicate(timeout=60)


def _read_pid(path: Path) -> int | None:
    """The pid in a pid file; None until the script has written it whole."""
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text.isdigit() else None
