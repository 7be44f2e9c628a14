"""How a worker process starts: the one loader of worker classes, what the supervisor tells each
process, and the one place that sets its CUDA mask."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

from tests.faults.terminal import Terminal
from tests.helpers import wait_until
from tests.scripts import user_env
from wkr_celery.broker import ServiceRegistry
from wkr_celery.client import WKRClient
from wkr_celery.decentral import WKRWorker
from wkr_celery.errors import ConfigError
from wkr_celery.keys import ServiceKeys
from wkr_celery.server import WKRHardWorker
from wkr_celery.server.worker_slot import WorkerProcess, WorkerProcessEnv
from wkr_celery.worker_class import class_path, load_class

PACKAGE = Path(__file__).resolve().parents[1] / "wkr_celery"

USER_WORKER = '''
import os
from wkr_celery.server import WKRHardWorker


class Worker(WKRHardWorker):
    def get_env(self, device_id, tmp_dir):
        return {"device_id": device_id, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}

    def get_model(self, envs, model_dir, model_name, tmp_dir):
        return envs

    def predict(self, model, input):
        return [model for _ in input]
'''

#: A script serving its own class: ``python serve.py NAME BROKER`` until its stdin closes.
SERVING_SCRIPT = USER_WORKER + '''

if __name__ == "__main__":
    import sys
    from wkr_celery.server import WKRServer

    with WKRServer(Worker, name=sys.argv[1], broker_url=sys.argv[2], num_worker=1,
                   device_map=(-1,)) as server:
        server.wait_ready(60)
        print("READY", flush=True)
        sys.stdin.readline()
'''


def test_one_loader_finds_service_and_decentralize_classes_and_says_why_not() -> None:
    from tests.decentral_units import Idler
    from tests.workers_for_tests import EnvWorker

    assert load_class("tests.workers_for_tests.EnvWorker", WKRHardWorker) is EnvWorker
    assert load_class("tests.decentral_units.Idler", WKRWorker) is Idler
    with pytest.raises(ConfigError, match=r"'tests.workers_for_tests.EnvWorker' is not a "
                                          r"WKRWorker subclass"):
        load_class("tests.workers_for_tests.EnvWorker", WKRWorker)
    with pytest.raises(ConfigError, match=r"'tests.workers_for_tests.Nothing' is not a "
                                          r"WKRHardWorker subclass \(found nothing"):
        load_class("tests.workers_for_tests.Nothing", WKRHardWorker)
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module'"):
        load_class("no_such_module.Worker", WKRHardWorker)
    with pytest.raises(ConfigError, match="must be module.Class"):
        load_class("Worker", WKRHardWorker)


def test_a_class_is_named_by_the_path_worker_processes_import() -> None:
    from tests.workers_for_tests import EnvWorker

    assert class_path(EnvWorker) == ("tests.workers_for_tests.EnvWorker", [])


def test_what_the_supervisor_tells_a_worker_process_is_what_it_reads(tmp_path: Path) -> None:
    slot = WorkerProcess(index=2, device_id=1)
    env = slot.prepare("svc.2.abc", str(tmp_path))
    told = WorkerProcessEnv.from_environ(env)
    assert told == WorkerProcessEnv("svc.2.abc", 2, 1, slot.running_file, slot.failure_file,
                                    supervisor=os.getpid())  # its heartbeat names the supervisor
    assert env["TMPDIR"] == slot.tmp_dir and Path(slot.tmp_dir).is_dir()
    assert "CUDA_VISIBLE_DEVICES" not in env  # the worker pins itself (bootstep)
    assert WorkerProcessEnv.from_environ({}) == WorkerProcessEnv()  # a worker started by hand


def test_a_script_serving_its_own_class_is_served_from_any_folder(
        tmp_path: Path, redis_url: str) -> None:
    """The class lives in ``__main__``: worker processes import it by the script's file name,
    from the script's folder, though the script was run from elsewhere."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "serve.py").write_text(SERVING_SCRIPT)
    name = f"t{uuid.uuid4().hex[:10]}"
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:  # the workers write their log lines to the same output
        proc = subprocess.Popen([sys.executable, "app/serve.py", name, redis_url], cwd=tmp_path,
                                env=user_env(), stdin=subprocess.PIPE, stdout=out,
                                stderr=subprocess.STDOUT)
    client = WKRClient(name=name, broker_url=redis_url, connect_timeout=60)
    try:
        wait_until(lambda: b"READY\n" in log.read_bytes() or proc.poll() is not None, 90,
                   what="the script's READY line")
        assert proc.poll() is None, log.read_text()
        assert client.encode(1).result(timeout=60) == {"device_id": -1, "cuda": ""}
    finally:
        client.close()
        try:
            proc.communicate(b"\n", timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, log.read_text()


def _writes_of(name: str, tree: ast.AST) -> list[tuple[int, str]]:
    """(line, function) of every write of environment variable ``name`` in ``tree``: an
    assignment to ``…[name]``, ``name`` as a key of a dict literal or keyword, or
    ``setdefault``/``putenv`` called with it."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        is_write = (
            isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store)
            and isinstance(node.slice, ast.Constant) and node.slice.value == name
        ) or (
            isinstance(node, ast.Dict)
            and any(isinstance(k, ast.Constant) and k.value == name for k in node.keys)
        ) or (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("setdefault", "putenv")
            and any(isinstance(a, ast.Constant) and a.value == name for a in node.args)
        ) or (isinstance(node, ast.keyword) and node.arg == name)
        if is_write:
            found.append((getattr(node, "lineno", 0), function))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, "<module>")
    return found


def test_the_cuda_mask_is_set_in_one_place_only() -> None:
    writes = {
        f"{path.relative_to(PACKAGE.parent)}:{line} in {function}"
        for path in PACKAGE.rglob("*.py")
        for line, function in _writes_of("CUDA_VISIBLE_DEVICES", ast.parse(path.read_text()))
    }
    assert len(writes) == 1 and next(iter(writes)).startswith(
        "wkr_celery/server/helper.py:") and next(iter(writes)).endswith(" in pin_device"), writes


@pytest.mark.parametrize(("exported", "device_map", "expected"), [
    pytest.param({"CUDA_VISIBLE_DEVICES": "7"}, "0", "7", id="the-users-mask-is-kept"),
    pytest.param({}, "-1", "", id="no-mask-pins-to-the-device-map"),
])
def test_a_worker_started_by_hand_with_celery_serves_pinned_as_documented(
        tmp_path: Path, redis_url: str, exported: dict[str, str], device_map: str,
        expected: str) -> None:
    """README, "Celery's own tools": ``celery -A wkr_celery worker`` with ``WKR_*`` set, typed
    in the folder of the worker's module; stopped with Ctrl+C."""
    (tmp_path / "byhand.py").write_text(USER_WORKER)
    name = f"t{uuid.uuid4().hex[:10]}"
    env = user_env({"WKR_WORKER_CLASS": "byhand.Worker", "WKR_NAME": name,
                    "WKR_BROKER_URL": redis_url, "WKR_DEVICE_MAP": device_map, **exported})
    if not exported:
        env.pop("CUDA_VISIBLE_DEVICES", None)
    worker = Terminal(["celery", "-A", "wkr_celery", "worker", "--pool", "solo"], tmp_path, env)
    client = WKRClient(name=name, broker_url=redis_url, connect_timeout=60)
    try:
        answer = client.encode(1).result(timeout=60)
        assert answer == {"device_id": int(device_map), "cuda": expected}, worker.output
    finally:
        client.close()
        worker.press_ctrl_c()
        code = worker.close(timeout=30)
    # Celery ends a Ctrl+C warm shutdown with EX_FAILURE (1); killed past the timeout: -9.
    assert code == 1 and "Warm shutdown" in worker.output, worker.output


@pytest.mark.timeout(90)
def test_a_worker_whose_log_pipe_lost_its_reader_still_stops_on_sigterm(
        tmp_path: Path, redis_url: str) -> None:
    """A worker's output is a pipe to its supervisor (``-log_dir``); when the supervisor is
    killed, the worker's SIGTERM comes when that pipe has no reader. Celery's warm-shutdown
    handler printed to it before setting its stop flag, so the print failed (EPIPE), the error
    surfaced in the consumer as a lost broker connection, and the worker reconnected and served
    on. Here the reader is the test, which closes its end before the SIGTERM."""
    (tmp_path / "byhand.py").write_text(USER_WORKER)
    name = f"t{uuid.uuid4().hex[:10]}"
    env = user_env({"WKR_WORKER_CLASS": "byhand.Worker", "WKR_NAME": name,
                    "WKR_BROKER_URL": redis_url, "WKR_DEVICE_MAP": "-1"})
    worker = subprocess.Popen(["celery", "-A", "wkr_celery", "worker", "--pool", "solo"],
                              cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    assert worker.stdout is not None
    with redis.Redis.from_url(redis_url) as broker:
        registry = ServiceRegistry(broker, ServiceKeys(name))
        try:
            wait_until(lambda: registry.live_workers() or worker.poll() is not None, 60,
                       what="the worker to serve")
            assert worker.poll() is None, worker.stdout.read().decode(errors="replace")
            worker.stdout.close()  # nobody reads the worker's output any more
            worker.send_signal(signal.SIGTERM)
            try:
                code = worker.wait(40)
            except subprocess.TimeoutExpired:
                raise AssertionError("the worker did not stop on SIGTERM") from None
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
        assert code == 0, f"the worker's warm shutdown failed (exit code {code})"
        assert not registry.live_workers(), "the worker stopped without leaving the registry"


@pytest.mark.timeout(90)
def test_a_worker_says_in_its_output_that_sigterm_began_its_warm_shutdown_and_when_it_ended(
        tmp_path: Path, redis_url: str) -> None:
    """Celery's own "Warm shutdown" print is off on SIGTERM (see the test above), so the worker
    says it through logging, which cannot raise on a pipe without a reader. At INFO, as the
    supervisor starts its workers."""
    (tmp_path / "byhand.py").write_text(USER_WORKER)
    name = f"t{uuid.uuid4().hex[:10]}"
    env = user_env({"WKR_WORKER_CLASS": "byhand.Worker", "WKR_NAME": name,
                    "WKR_BROKER_URL": redis_url, "WKR_DEVICE_MAP": "-1"})
    worker = subprocess.Popen(["celery", "-A", "wkr_celery", "worker", "--pool", "solo",
                               "--loglevel", "INFO"],
                              cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    with redis.Redis.from_url(redis_url) as broker:
        registry = ServiceRegistry(broker, ServiceKeys(name))
        try:
            wait_until(lambda: registry.live_workers() or worker.poll() is not None, 60,
                       what="the worker to serve")
            worker.send_signal(signal.SIGTERM)
            output, _ = worker.communicate(timeout=40)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.communicate(timeout=10)
    text = output.decode(errors="replace")
    assert worker.returncode == 0, text
    began = text.find(": warm shutdown (finishing the batch in predict")
    assert began >= 0 and text.find(": stopped", began) > began, text


SLOW_LOADING_WORKER = '''
import os, time
from wkr_celery.server import WKRHardWorker


class Worker(WKRHardWorker):
    def get_model(self, envs, model_dir, model_name, tmp_dir):
        open("loading", "w").close()
        time.sleep(120)

    def predict(self, model, input):
        return list(input)
'''


@pytest.mark.timeout(90)
def test_ctrl_c_on_a_worker_started_by_hand_ends_it_while_its_model_still_loads(
        tmp_path: Path, redis_url: str) -> None:
    """Celery's Ctrl+C handler only sets a flag its consumer reads, and the consumer starts
    once the model is loaded: the worker used to go on loading (two minutes here) first."""
    (tmp_path / "slowload.py").write_text(SLOW_LOADING_WORKER)
    env = user_env({"WKR_WORKER_CLASS": "slowload.Worker", "WKR_NAME": f"t{uuid.uuid4().hex[:10]}",
                    "WKR_BROKER_URL": redis_url, "WKR_DEVICE_MAP": "-1"})
    worker = Terminal(["celery", "-A", "wkr_celery", "worker", "--pool", "solo",
                       "--loglevel", "INFO"], tmp_path, env)
    try:
        wait_until(lambda: (tmp_path / "loading").exists() or worker.proc.poll() is not None,
                   60, what="the model to start loading")
        assert worker.proc.poll() is None, worker.output
    finally:
        worker.press_ctrl_c()
        code = worker.close(timeout=20)
    # Celery ends a Ctrl+C warm shutdown with EX_FAILURE (1); killed past the timeout: -9.
    assert code == 1, worker.output
    assert "stopped while its model was loading; it had fetched nothing" in worker.output
