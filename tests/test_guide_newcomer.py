"""A new user following the seed guide word by word, with ``wkr_celery`` for ``wkr_serving``:
the commands typed as the guide prints them (console scripts, from the folder it names), its
client code as written, and the mistakes a newcomer makes on the way, each of which must be
one line that says what to do.

Everything runs on 127.0.0.1, on free ports, with the embedded Redis.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from wkr_celery import WKRClient
from wkr_celery.client import AsyncWKRClient
from wkr_celery.errors import ServiceUnavailable

from .helpers import ROOT, free_port, nothing_listens, stop_gracefully, wait_until
from .scripts import BIN, script, user_env


def _run(argv: list[str], cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=user_env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("command", "typo", "meant"), [
    (["wkr-serving-start", "workers.linear.Worker"], "-num_workers", "-num_worker"),
    (["wkr-serving-make", "workers.linear.Worker", "-name", "x"], "-num_workers", "-num_worker"),
    (["wkr-serving-start", "workers.linear.Worker"], "-http_prot", "-http_port"),
    (["wkr-decentral-start", "decentralize.ProcessingModel", "-remote_servers",
      "[[127.0.0.1, 8996, 8998]]"], "-num_clients", "-num_client"),
])
def test_a_mistyped_flag_is_one_line_naming_the_flag_meant(
        command: list[str], typo: str, meant: str) -> None:
    done = _run([script(command[0]), *command[1:], typo, "2"], cwd=ROOT / "examples")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert f"did you mean {meant}?" in lines[0] and f"{command[0]} -h" in lines[0], lines[0]


def test_more_units_than_max_units_is_refused_at_start_in_one_line() -> None:
    """docs/decentral.md's ``-max_units``, typed in ``examples/``: 3 units for each of 2 servers
    is 6 processes, over a cap of 4, refused before anything starts or connects."""
    done = _run([script("wkr-decentral-start"), "decentralize.ProcessingModel", "-remote_servers",
                 "[[127.0.0.1, 8996, 8998], [127.0.0.1, 8997, 8999]]", "-num_client", "3",
                 "-max_units", "4"], cwd=ROOT / "examples")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "num_client 3 x 2 remote server(s) is 6 units" in lines[0], lines[0]
    assert "-max_units 4" in lines[0], lines[0]


class SeedService:
    """The guide's server (``examples/server.py``) as the production section names it: typed
    in ``examples/`` as ``wkr-serving-start server.Worker -name … -port_in … -port_out …``."""

    def __init__(self, tmp_path: Path) -> None:
        self.name = "YOUR_PRODUCTION_SERVICE_NAME"
        self.port_in, self.port_out = free_port(), free_port()
        self.log_path = tmp_path / "service.log"
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [script("wkr-serving-start"), "server.Worker", "-name", self.name,
                 "-port_in", str(self.port_in), "-port_out", str(self.port_out),
                 "-num_worker", "2", "-batch_size", "1", "-device_map", "-1"],
                cwd=ROOT / "examples", env=user_env(), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        WKRClient(port=self.port_in, port_out=self.port_out, connect_timeout=60).close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def seed_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeedService]:
    service = SeedService(tmp_path_factory.mktemp("seed"))
    yield service
    assert stop_gracefully(service.proc) == 0, service.log()


def test_the_guides_client_at_0_0_0_0_gets_its_answer(seed_service: SeedService,
                                                      tmp_path: Path) -> None:
    """The guide's client as written: ``ip='0.0.0.0'`` reaches the embedded Redis on this
    machine, whose password it finds as for 127.0.0.1."""
    client = tmp_path / "client.py"
    client.write_text(
        "import numpy as np\n"
        "from wkr_celery.client import WKRClient\n\n"
        'if __name__ == "__main__":\n'
        f"    client = WKRClient(ip='0.0.0.0', port={seed_service.port_in}, "
        f"port_out={seed_service.port_out}, check_version=False)\n"
        "    input = np.zeros((5,5))\n"
        "    output = client.encode(input)\n"
        "    print(output.result(timeout=30).shape)\n")
    done = _run([str(BIN / "python"), str(client)], cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "(5, 3)", done.stdout + done.stderr


def test_a_refused_password_says_to_put_it_in_the_url(seed_service: SeedService) -> None:
    url = f"redis://:wrong@127.0.0.1:{seed_service.port_in}/0"
    with pytest.raises(ServiceUnavailable, match=r"put the password in the URL: redis://:PASS"):
        WKRClient(broker_url=url, connect_timeout=0.5)


@pytest.mark.parametrize("flag", ["-http_port", "-flower_port"])
def test_an_http_port_in_use_is_refused_in_one_line_before_anything_starts(flag: str) -> None:
    """The guide's ``-http_port 8900`` with something already on 8900: said at once, naming the
    holder, instead of a service whose REST API fails to bind and is restarted forever."""
    port_in = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        done = _run([script("wkr-serving-start"), "server.Worker", "-port_in", str(port_in),
                     "-port_out", str(free_port()), flag, str(taken)], cwd=ROOT / "examples")
        http = _run([script("wkr-serving-http"), "-port_in", str(port_in), "-http_port",
                     str(taken)])
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert f"{flag} {taken}: port {taken} on 127.0.0.1 is taken by pid {os.getpid()}" in lines[0]
    assert f"choose another {flag}" in lines[0]
    assert nothing_listens(port_in)  # refused before its Redis started
    if flag == "-http_port":
        assert http.returncode == 1 and "is taken by" in http.stderr.strip(), http.stderr


@pytest.mark.parametrize("client_module", ["wkr_celery.client", "wkr_serving.client"])
def test_the_guides_unit_client_finds_a_service_started_with_a_name(
        seed_service: SeedService, client_module: str) -> None:
    """The guide's decentralize unit builds ``WKRClient(ip=ip, port=port, port_out=port_out,
    ignore_all_checks=True)``: no name. Its service was started under the production section's
    ``-name``; the unit's requests must reach it, not a ``default`` service nobody serves."""
    module = importlib.import_module(client_module)
    client = module.WKRClient(ip="127.0.0.1", port=seed_service.port_in,
                              port_out=seed_service.port_out, ignore_all_checks=True)
    try:
        assert client.name == seed_service.name
        output = client.encode(np.zeros(5), timeout=30)
        result = output.result(timeout=30) if client_module == "wkr_celery.client" else output
        assert np.shape(result) == (3,)
    finally:
        client.close()


def test_a_unit_client_with_no_service_yet_still_starts(tmp_path: Path) -> None:
    """``ignore_all_checks`` waits for nothing: with no broker to look at, it takes ``default``."""
    client = WKRClient(ip="127.0.0.1", port=free_port(), port_out=free_port(),
                       ignore_all_checks=True, connect_timeout=1)
    try:
        assert client.name == "default"
    finally:
        client.close()


def test_the_asyncio_client_without_checks_finds_a_service_started_with_a_name(
        seed_service: SeedService) -> None:
    async def call() -> tuple[str, tuple[int, ...]]:
        async with AsyncWKRClient(ip="127.0.0.1", port=seed_service.port_in,
                                  port_out=seed_service.port_out, ignore_all_checks=True) as c:
            return c.name, np.shape(await c.encode(np.zeros(5), timeout=30))

    assert asyncio.run(asyncio.wait_for(call(), 60)) == (seed_service.name, (3,))


@pytest.mark.parametrize(("command", "held"), [
    (["wkr-serving-start", "server.Worker"], "server.py"),
    (["wkr-serving-make", "server.Worker", "-name", "x"], "server.py"),
    (["wkr-serving-start", "workers.linear.Worker"], "workers/"),
    (["wkr-decentral-start", "decentralize.ProcessingModel", "-remote_servers",
      "[[127.0.0.1, 8996, 8998]]"], "decentralize.py"),
])
def test_a_command_typed_in_the_wrong_folder_says_which_folder(
        command: list[str], held: str, tmp_path: Path) -> None:
    done = _run([script(command[0]), *command[1:]], cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert f"run the command in the folder that holds {held}" in lines[0], lines[0]
    assert str(tmp_path) in lines[0]


def test_with_log_dir_a_worker_that_fails_to_start_is_told_on_the_terminal(tmp_path: Path) -> None:
    """The guide's server as written imports TensorFlow in ``get_env`` and starts with
    ``-log_dir``: where TensorFlow is missing, every worker dies at start, and the terminal
    must say so (one line per death, naming the .err file), not only the log file."""
    (tmp_path / "server.py").write_text(
        "from wkr_celery.server import WKRHardWorker\n\n"
        "class Worker(WKRHardWorker):\n"
        "    def get_env(self, device_id, tmp_dir):\n"
        "        import no_such_framework_here\n"
        "    def get_model(self, envs, model_dir, model_name, tmp_dir):\n"
        "        return None\n"
        "    def predict(self, model, input):\n"
        "        return input\n")
    log_dir = tmp_path / "log_dir"
    told, shown = _terminal_until(
        [script("wkr-serving-start"), "server.Worker", "-port_in", str(free_port()),
         "-port_out", str(free_port()), "-num_worker", "2", "-log_dir", str(log_dir)],
        tmp_path, "failed to start")
    assert f"log in {log_dir}/default.log and .err" in shown, shown
    assert "No module named 'no_such_framework_here'" in told[0], told
    assert told[0].endswith(f"(details: {log_dir}/default.err)"), told
    assert "Traceback" not in shown, shown


def test_with_log_dir_a_unit_that_fails_is_told_on_the_terminal(tmp_path: Path) -> None:
    """The same for the guide's ``wkr-decentral-start … -log_dir /tmp/log_dir``: a unit whose
    ``get_model`` raises is one line on the terminal, its multi-line error joined."""
    (tmp_path / "decentralize.py").write_text(
        "from wkr_celery.client import WKRWorker\n\n"
        "class ProcessingModel(WKRWorker):\n"
        "    def get_model(self, ip, port, port_out):\n"
        "        raise Exception('no job Redis here\\nTHIS IS CUSTOM EXCEPTION')\n"
        "    def do_work(self, model, logger):\n"
        "        pass\n"
        "    def off_model(self, model):\n"
        "        pass\n")
    log_dir = tmp_path / "log_dir"
    told, _ = _terminal_until(
        [script("wkr-decentral-start"), "decentralize.ProcessingModel", "-port",
         str(free_port()), "-port_out", str(free_port()), "-num_client", "1",
         "-remote_servers", f"[[127.0.0.1, {free_port()}, {free_port()}]]",
         "-log_dir", str(log_dir)],
        tmp_path, "no job Redis here THIS IS CUSTOM EXCEPTION")
    assert told[0].startswith("wkr-decentral-start: unit "), told
    assert told[0].endswith(f"(details: {log_dir}/decentral.err)"), told


def test_a_client_with_no_service_at_its_address_says_what_to_check() -> None:
    port = free_port()
    with pytest.raises(ServiceUnavailable) as failed:
        WKRClient(ip="127.0.0.1", port=port, port_out=free_port(), connect_timeout=0.5)
    said = str(failed.value)
    assert f"broker redis://127.0.0.1:{port}/0: not reachable" in said, said
    assert "check ip and port, or start the service there with wkr-serving-start" in said, said


def test_a_redis_port_of_0_is_refused_in_one_line() -> None:
    """``-port_out 0`` started the broker's Redis, then failed in redis-server's own lines."""
    done = _run([script("wkr-serving-start"), "server.Worker", "-port_in", str(free_port()),
                 "-port_out", "0"], cwd=ROOT / "examples")
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "wkr-serving-start: error: port_out 0 is out of range: give a port from 1 to 65535"]


def test_a_mistyped_environment_variable_names_the_one_meant() -> None:
    done = subprocess.run([script("wkr-serving-start"), "server.Worker"], cwd=ROOT / "examples",
                          env=user_env({"WKR_NUM_WORKERS": "2"}), capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "WKR_NUM_WORKERS (did you mean WKR_NUM_WORKER?)" in done.stderr


def test_the_decentral_http_port_in_use_names_its_holder() -> None:
    """The guide gives the server and the decentralize command the same ``-http_port 8900``:
    on one machine the second must say who holds it and what to change."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        done = _run([script("wkr-decentral-start"), "decentralize.ProcessingModel", "-port",
                     str(free_port()), "-port_out", str(free_port()), "-http_port", str(taken),
                     "-remote_servers", f"[[127.0.0.1, {free_port()}, {free_port()}]]"],
                    cwd=ROOT / "examples")
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert done.returncode == 1 and len(errors) == 1, done.stderr
    assert (f"-http_port {taken}: port {taken} on 127.0.0.1 is taken by pid {os.getpid()}"
            in errors[0]) and "choose another -http_port" in errors[0], errors[0]


def test_a_port_holder_is_named_without_its_terminal_escapes() -> None:
    """The process named as holding a port may be another user's (root reads every
    /proc/PID/cmdline), and its command line is its own choice: escape sequences in it reached
    the operator's terminal, clearing it or retitling it."""
    with subprocess.Popen(
            [sys.executable, "-c", "# \x1b[2J\x1b]0;owned\x07\x9b31m\nimport socket, sys; "
             "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
             "print(s.getsockname()[1], flush=True); sys.stdin.read()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout is not None
            taken = int(holder.stdout.readline())
            done = _run([script("wkr-serving-start"), "workers.linear.Worker", "-port_in",
                         str(free_port()), "-port_out", str(free_port()), "-http_port",
                         str(taken)])
        finally:
            holder.kill()
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert done.returncode == 1 and len(errors) == 1, done.stderr
    assert f"is taken by pid {holder.pid} (" in errors[0], errors[0]
    assert not any(c in done.stderr for c in "\x1b\x07\x9b"), repr(errors[0])


def _terminal_until(argv: list[str], cwd: Path, needle: str) -> tuple[list[str], str]:
    """Start ``argv`` in ``cwd`` with its output on a file standing for the terminal, wait for
    a line holding ``needle``, stop it as Ctrl+C would: those lines, and all it showed."""
    terminal = cwd / "terminal.txt"
    with open(terminal, "wb") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=user_env(), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        told = wait_until(lambda: [line for line in terminal.read_text().splitlines()
                                   if needle in line], 60, what=f"{needle!r} on the terminal")
    finally:
        stop_gracefully(proc)
    return told, terminal.read_text()
