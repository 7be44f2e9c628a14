"""Every shell command in README.md and docs/*.md runs as written, or says why not and what runs
in its place.

:data:`COVERAGE` maps each command (as :func:`tests.doc_commands.documented_commands` reads it)
to the test that runs it, or to the reason it cannot run here and the test that covers it
instead. A command the docs gain without an entry fails
:func:`test_every_documented_command_is_run_by_a_named_test`; an entry whose command left the
docs fails it too. The tests that run commands take them from this table
(:func:`commands_run_by`), so a command mapped to a test is a command that test runs.

How commands run (console scripts on PATH, a pseudo-terminal and Ctrl+C, the project folder,
and the only substitutions made: ports, remote Redis hosts, example directories) is described in
``tests/doc_commands.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from wkr_celery.client import WKRClient
from wkr_celery.errors import ServiceUnavailable

from .doc_commands import (
    Command,
    Session,
    Shell,
    Substitutions,
    documented_commands,
    make_project,
)
from .helpers import ROOT, wait_answering, wait_until

HERE = "tests/test_documented_commands.py"


@dataclass(frozen=True)
class RunBy:
    """The command runs, as written, in ``test`` (``tests/file.py::test_name``)."""

    test: str


@dataclass(frozen=True)
class CannotRun:
    """The command cannot run in the test suite: ``why``; ``instead`` covers what it does."""

    why: str
    instead: str


REST = RunBy(f"{HERE}::test_the_rest_commands_answer_as_the_docs_show")
SEED = RunBy(f"{HERE}::test_the_seed_server_starts_from_examples_and_celery_sees_its_workers")
PRODUCTION = RunBy(f"{HERE}::test_the_production_commands_run_as_written")
DECENTRAL = RunBy("tests/test_decentral_example.py::"
                  "test_the_documented_commands_run_the_example_end_to_end")
COMPAT = "tests/test_wkr_serving_compat.py"
COMPAT_DECENTRAL = RunBy(
    f"{COMPAT}::test_the_guides_decentralize_example_posts_a_result_for_every_queued_job")
RECEIVER = RunBy("tests/test_decentral_example.py::"
                 "test_the_documented_receiver_answers_each_post_and_prints_it")
ELASTIC = RunBy(f"{HERE}::test_the_elastic_command_serves_and_reports_its_worker_range")
BENCH_HELP = RunBy(f"{HERE}::test_the_benchmark_help_runs_as_written")
QUICK_BENCH = "tests/test_benchmark.py::test_quick_benchmark_exits_zero_and_prints_the_table"
CPU_PER_THREAD = RunBy(f"{HERE}::test_cpu_per_thread_names_each_client_thread_and_sums_every_"
                       "process")
CLIENTS_HTTP_BENCH = ("tests/test_benchmark.py::"
                      "test_many_clients_report_capacity_and_cpu_per_request_per_process_kind and "
                      "test_http_scenario_measures_every_endpoint_with_wrk (tiny counts)")
FRAMEWORKS_TORCH = RunBy("tests/test_frameworks.py::"
                         "test_the_documented_torch_service_answers_as_torch_run_directly")
FRAMEWORKS_ONNX = RunBy("tests/test_frameworks.py::"
                        "test_the_documented_onnx_service_answers_as_onnxruntime_run_directly")
FRAMEWORKS_BENCH = ("tests/test_frameworks.py::"
                    "test_the_benchmark_torch_workload_checks_every_answer_against_torch")
COMPOSE = "tests/test_compose.py::test_the_compose_stack_answers_encode_through_the_rest_port"
DEPLOY = CannotRun(
    "needs a running version 1, an external Redis at $WKR_BROKER_URL and a model under "
    "/models; the test takes the same steps on loopback (start beside it with -log_dir, wait for "
    "the serving lines, SIGTERM version 1's supervisor by its pid) under load",
    "tests/faults/test_rolling_deploy.py::test_a_new_version_started_beside_the_old_then_the_old_"
    "stopped_loses_no_request")
MANY_HOSTS = RunBy("tests/faults/test_many_hosts.py::"
                   "test_the_scaling_out_commands_in_the_docs_serve_from_two_hosts_as_written")
SCALE_OUT_COMPOSE = ("tests/test_compose.py::"
                     "test_the_scale_out_files_are_valid_and_every_worker_host_joins_the_same_service")
SYSTEMD = ("tests/test_production_tools.py::"
           "test_make_systemd_prints_a_unit_running_the_same_command_with_a_graceful_stop")

COVERAGE: dict[str, RunBy | CannotRun] = {
    # README.md
    "python3 -m venv .venv && . .venv/bin/activate && pip install . && wkr-serving-start "
    "workers.linear.Worker -num_worker 2 -batch_size 32": CannotRun(
        "creates a virtual environment and installs every dependency from the package index",
        ".ci/run runs it as written (a fresh venv, Ctrl+C through a pseudo-terminal) before the "
        "suite; tests/test_examples.py::test_every_python_block_in_the_readme_runs serves its "
        "wkr-serving-start command and runs the README's client on it"),
    "apt-get install -y chromium redis-server iproute2 wrk": CannotRun(
        "installs Debian packages as root", "tests/test_dashboard.py, tests/faults/test_tls.py "
        "and tests/test_benchmark.py's HTTP scenario fail, never skip, without them, as "
        "tests/faults/test_many_hosts.py does as root; .ci/run installs them"),
    "pip install '.[test,frameworks]' && python -m pytest": CannotRun(
        "runs the whole suite, this test included", "the suite itself"),
    "cd examples && wkr-serving-start server.Worker -model_dir /path/to/model -model_name "
    "model.hdf5 -port_in 8996 -port_out 8998 -num_worker 2 -batch_size 1 -device_map -1 "
    "-gpu_memory_fraction 0.25 -log_dir /tmp/log_dir": SEED,
    "WKR_BROKER_URL=redis://127.0.0.1:8996/0 celery -A wkr_celery inspect ping": SEED,
    "wkr-serving-start workers.echo.Worker -name echo -http_port 8900 -flower_port 5555 "
    "-task_events": REST,
    "curl -s localhost:8900/encode -H 'Content-Type: application/json' -d '{\"id\": 1, "
    "\"data\": {\"text\": \"hello\"}}'": REST,
    "python -c 'import sys, numpy as np; from wkr_celery import codec; "
    "sys.stdout.buffer.write(codec.dumps({\"id\": 1, \"data\": np.arange(4, "
    "dtype=np.float32)}))' > body.msgpack": REST,
    "curl -s localhost:8900/encode -H 'Content-Type: application/msgpack' --data-binary "
    "@body.msgpack | python -c 'import sys; from wkr_celery import codec; "
    "print(codec.loads(sys.stdin.buffer.read()))'": REST,
    "cd examples && DECENTRAL_REDIS_PORT=8996 DECENTRAL_PUSH_API=http://127.0.0.1:8000/result "
    "wkr-decentral-start decentralize.ProcessingModel -port 21324 -port_out 21326 -http_port "
    "8900 -num_client 4 -remote_servers [[127.0.0.1, 8996, 8998]] -log_dir /tmp/log_dir":
        DECENTRAL,
    "wkr-serving-make workers.linear.Worker -port_in 8996 -port_out 8996 -num_worker 2 "
    "-batch_size 32 -data_dir /var/lib/wkr/linear -name linear > run_script.sh": PRODUCTION,
    "sh run_script.sh start": PRODUCTION,  # also the decentral script's: see the next entry
    "sh run_script.sh status": PRODUCTION,
    "sh run_script.sh stop": PRODUCTION,
    "sh run_script.sh stopf": PRODUCTION,
    "sh run_script.sh restart": PRODUCTION,
    # docs/compat.md (the seed guide's examples, run from examples/wkr_serving/)
    "pip install .": CannotRun(
        "installs the package from the package index into the current environment",
        ".ci/run installs it exactly so in a fresh venv before the suite"),
    "cd examples/wkr_serving && wkr-serving-start server.Worker -model_dir /path/to/model "
    "-model_name model.hdf5 -port_in 8996 -port_out 8998 -http_port 8900 -num_worker 2 "
    "-batch_size 1 -device_map -1 -gpu_memory_fraction 0.25 -log_dir /tmp/log_dir": RunBy(
        f"{COMPAT}::test_wkr_serving_client_encode_blocks_and_returns_the_result"),
    "cd examples/wkr_serving && python client.py": RunBy(
        f"{COMPAT}::test_the_guides_client_example_prints_the_result_it_waited_for"),
    "cd examples/wkr_serving && DECENTRAL_REDIS_PORT=8996 "
    "DECENTRAL_PUSH_API=http://127.0.0.1:8000/result wkr-decentral-start "
    "decentralize.ProcessingModel -port 21324 -port_out 21326 -http_port 8901 -num_client 4 "
    "-remote_servers [[127.0.0.1, 8996, 8998]] -log_dir /tmp/log_dir": COMPAT_DECENTRAL,
    'python -c "\nfrom wkr_serving.client.helper import RedisHandler\njobs = '
    "RedisHandler('EXAMPLE_QUEUE', '127.0.0.1', 8996)\njobs.push_many([i, i, i, i, i] for i "
    'in range(10))"': COMPAT_DECENTRAL,
    # docs/decentral.md
    "wkr-serving-start workers.linear.Worker -num_worker 2": DECENTRAL,
    "cd examples && python push_receiver.py 8000": RECEIVER,
    "python -c \"\nimport numpy as np\nfrom wkr_celery.client.helper import RedisHandler\n"
    "jobs = RedisHandler('EXAMPLE_QUEUE', '127.0.0.1', 8996)\njobs.push_many({'id': i, "
    "'input': np.random.rand(512).tolist()} for i in range(100))\"": DECENTRAL,
    "wkr-decentral-status -port 21324 -port_out 21326": DECENTRAL,
    "wkr-decentral-switch -remote_servers [[127.0.0.1, 8996, 8998]] -num_client 8 -port 21324 "
    "-port_out 21326": DECENTRAL,
    "curl -s http://127.0.0.1:8900/status": DECENTRAL,
    "wkr-decentral-terminate -port 21324 -port_out 21326": DECENTRAL,
    # docs/guarantees.md
    "python -m pytest tests/faults -q": CannotRun(
        "runs a test suite from inside the test suite", "tests/faults/, collected by every "
        "full run"),
    # docs/performance.md
    "pip install '.[bench]'": CannotRun(
        "installs packages from the package index", "the [test] extra the suite runs with holds "
        "every [bench] package (see pyproject.toml)"),
    "python -m benchmarks": CannotRun("10-15 minutes of every core", QUICK_BENCH),
    "python -m benchmarks --quick": CannotRun(
        "about 2 minutes of every core; the test runs it on one workload", QUICK_BENCH),
    "python -m benchmarks --systems wkr,naive --workloads tiny --requests 5000": CannotRun(
        "minutes of every core", QUICK_BENCH),
    "python -m benchmarks --repeat 3": CannotRun("three full runs", QUICK_BENCH),
    "python -m benchmarks --requests 100000 --systems wkr --workloads tiny": CannotRun(
        "100,000 requests", QUICK_BENCH),
    "python -m benchmarks --help": BENCH_HELP,
    "apt-get install -y wrk": CannotRun(
        "installs a Debian package as root", ".ci/run installs wrk; "
        "tests/test_benchmark.py's HTTP scenario test fails, never skips, without it"),
    "python -m benchmarks --systems wkr,naive,coalesce --repeat 3": CannotRun(
        "three runs of every scenario, about 15 minutes of every core", CLIENTS_HTTP_BENCH),
    "python -m benchmarks --scenarios clients": CannotRun(
        "a minute or two of every core", CLIENTS_HTTP_BENCH),
    "python -m benchmarks --scenarios http --http-seconds 10": CannotRun(
        "a minute of every core under wrk", CLIENTS_HTTP_BENCH),
    "python -m benchmarks --systems wkr --scenarios clients,http --repeat 3": CannotRun(
        "three runs of the many-clients and HTTP scenarios, minutes of every core",
        CLIENTS_HTTP_BENCH),
    "python -m benchmarks --systems wkr,naive,coalesce --workloads tiny,gpu-sim "
    "--scenarios systems,clients,http --repeat 3": CannotRun(
        "three runs of every scenario but torch, about 10 minutes of every core",
        f"{QUICK_BENCH} and {CLIENTS_HTTP_BENCH}"),
    # docs/performance.md, Real frameworks (also in the README)
    "pip install '.[frameworks]'": CannotRun(
        "installs torch, onnxruntime and onnx from the package index",
        ".ci/run installs the extra before the suite; tests/test_frameworks.py fails, never "
        "skips, without it"),
    "cd examples && python torch_worker.py --setup /tmp/torch-model": FRAMEWORKS_TORCH,
    "cd examples && wkr-serving-start torch_worker.Worker -model_dir /tmp/torch-model "
    "-num_worker 2 -protocol npy": FRAMEWORKS_TORCH,
    "cd examples && wkr-serving-start onnx_worker.Worker -model_dir /tmp/torch-model "
    "-protocol npy": FRAMEWORKS_ONNX,
    "cd examples && wkr-serving-start torch_worker.Worker -model_dir /tmp/torch-model "
    "-device_map 0 -protocol npy": CannotRun(
        "needs a GPU and a CUDA build of torch", "tests/gpu/check_torch_worker.py runs it on a "
        "GPU machine; tests/test_frameworks.py::test_the_documented_torch_service_answers_as_"
        "torch_run_directly runs the same worker on the CPU"),
    "python -m benchmarks --workloads torch": CannotRun(
        "minutes of every core", FRAMEWORKS_BENCH),
    "python -m benchmarks.profile --system wkr --workload tiny --inflight 256 --seconds 10":
        CannotRun("a 10 s profile of a service under full load, minutes on 2 cores",
                  QUICK_BENCH),
    "python -m benchmarks.profile --system wkr --workload tiny --inflight 256 --seconds 10 --gil":
        CannotRun("a 10 s profile of a service under full load, minutes on 2 cores",
                  QUICK_BENCH),
    "python -m benchmarks.threads": CPU_PER_THREAD,
    "python -m benchmarks.threads --rounds 3": CannotRun(
        "three rounds of the same, about two minutes of every core", CPU_PER_THREAD.test),
    # docs/production.md
    "cd examples && wkr-decentral-make decentralize.ProcessingModel -port 21324 -port_out 21326 "
    "-http_port 8900 -num_client 24 -remote_servers \"[[10.40.34.16, 8068, 8069], "
    "[10.40.34.14, 8068, 8069]]\" -log_dir /tmp/log_dir -name edge > run_script.sh": PRODUCTION,
    # (its `sh run_script.sh start` would start 48 units against two hosts of the doc's network;
    # tests/test_production_tools.py::test_a_decentral_script_starts_reports_and_stops_wkr_decen
    # tral_start starts, checks and stops a script made the same way)
    "wkr-serving-make workers.linear.Worker -port_in 8996 -port_out 8996 -num_worker 2 "
    "-data_dir /var/lib/wkr/linear -name linear -format systemd > linear.service": PRODUCTION,
    "sudo cp linear.service /etc/systemd/system/": CannotRun("needs root and systemd", SYSTEMD),
    "sudo systemctl daemon-reload && sudo systemctl enable --now linear": CannotRun(
        "needs root and systemd", SYSTEMD),
    "journalctl -u linear -f": CannotRun("needs systemd's journal", SYSTEMD),
    "wkr-serving-check -name linear -port_in 8996 -port_out 8996": PRODUCTION,
    "wkr-serving-check -name linear -broker_url redis://redis-host:6379/0": PRODUCTION,
    "wkr-serving-terminate -name linear -port_in 8996": PRODUCTION,
    "wkr-serving-terminate -name linear -port_in 8996 -force": PRODUCTION,
    "cd /srv/linear-v2": DEPLOY,
    'wkr-serving-start workers.linear.Worker -name linear -broker_url "$WKR_BROKER_URL" '
    "-model_dir /models/linear-v2 -model_name W.npy -log_dir logs &": DEPLOY,
    'grep "serving \'linear\'" logs/linear.log': DEPLOY,
    'kill -TERM "$PID_OF_VERSION_1"': DEPLOY,
    "wkr-serving-start workers.linear.Worker -num_worker 2 -broker_url 'sentinel://10.0.0.5:"
    "26379;sentinel://10.0.0.6:26379;sentinel://10.0.0.7:26379' -sentinel_master mymaster":
        CannotRun("needs three Sentinels, a master and a replica; the test starts its own on "
                  "loopback and serves through them with these flags",
                  "tests/faults/test_sentinel.py::test_master_killed_under_load_fails_over_and_"
                  "every_request_ends_answered_or_lost"),
    'redis-server --bind 0.0.0.0 --port 6379 --requirepass "$REDIS_PASSWORD" --appendonly yes '
    "--dir /var/lib/redis": MANY_HOSTS,
    "cd wkr-celery": MANY_HOSTS,
    "wkr-serving-start workers.linear.Worker -name linear -protocol npy -broker_url "
    '"redis://:$REDIS_PASSWORD@10.0.0.5:6379/0" -num_worker 2 -device_map 0 1': MANY_HOSTS,
    "python3 -c 'from wkr_celery.client import WKRClient\nimport numpy as np\nwith WKRClient("
    'name="linear", broker_url="redis://:PASSWORD@10.0.0.5:6379/0") as c:\n    print(c.encode('
    "np.zeros(512, np.float32), timeout=10).result())'": MANY_HOSTS,
    "REDIS_PASSWORD=$(openssl rand -hex 16)": CannotRun(
        "sets a shell variable for the docker compose commands below it", SCALE_OUT_COMPOSE),
    "REDIS_PASSWORD=$REDIS_PASSWORD docker compose -f docker-compose.yml -f "
    "docker-compose.scale-out.yml up -d --build": CannotRun(
        "no Docker engine runs in CI", SCALE_OUT_COMPOSE),
    'WKR_BROKER_URL="redis://:$REDIS_PASSWORD@FIRST_HOST:6379/0" docker compose -f '
    "docker-compose.worker-host.yml up -d --build": CannotRun(
        "no Docker engine runs in CI", SCALE_OUT_COMPOSE),
    "docker compose up -d --build": CannotRun(
        "no Docker engine runs in CI", "tests/test_compose.py: the compose file is checked "
        "against the Compose Specification and each service's command runs as a process"),
    "docker compose ps": CannotRun(
        "no Docker engine runs in CI", "tests/test_compose.py::test_every_service_has_a_health"
        "_check_and_a_restart_policy_and_reads_settings_from_env"),
    "curl -s localhost:8900/readyz": CannotRun("asks the compose stack", COMPOSE),
    "python3 -c 'import json; print(json.dumps({\"id\": 1, \"data\": [0.5] * 512}))' | curl -s "
    "-X POST -H 'Content-Type: application/json' --data @- localhost:8900/encode": CannotRun(
        "asks the compose stack", COMPOSE),
    "wkr-serving-start workers.linear.Worker -num_worker 1 -num_worker_max 4 -scale_up_wait 0.5 "
    "-scale_down_after 30 -http_port 8900": ELASTIC,
    # docs/rest.md
    "wkr-serving-http -name echo -port_in 8996 -http_port 8901": REST,
    "wkr-serving-http -name echo -port_in 8996 -http_port 8901 -http_workers 4": REST,
    "wrk -t2 -c64 -d10s http://127.0.0.1:8900/healthz": CannotRun(
        "a load generator (Debian's wrk) measuring speed; the suite asserts no speed",
        "tests/faults/test_http_workers.py runs -http_workers and checks every process serves"),
    "wrk -t2 -c64 -d10s -s post.lua http://127.0.0.1:8900/encode": CannotRun(
        "a load generator (Debian's wrk) measuring speed; the suite asserts no speed",
        "tests/test_rest.py answers POST /encode in JSON and msgpack"),
    "wkr-serving-http -name echo -broker_url redis://10.0.0.5:6379/0 -http_port 8901 "
    "-http_api_key s3cret": REST,
    "curl -s 'localhost:8900/encode?timeout=5&priority=high' -H 'Content-Type: "
    "application/json' -d '[{\"id\": \"a\", \"data\": [1, 2, 3]}, {\"id\": \"b\", \"data\": "
    "\"two\"}]'": REST,
    "curl -s localhost:8900/tasks -H 'Content-Type: application/json' -d '{\"id\": 7, \"data\": "
    "\"later\"}'": REST,
    "curl -s localhost:8900/tasks/9f2c…": REST,
    "curl -s -X DELETE localhost:8900/tasks/9f2c…": REST,
    "curl -s localhost:8900/status/server -H 'X-API-Key: KEY'": REST,
}


def commands_run_by(test: str) -> list[Command]:
    """The documented commands :data:`COVERAGE` gives to ``test``, once each, in doc order."""
    seen: dict[str, Command] = {}
    for command in documented_commands():
        if COVERAGE.get(command.text) == RunBy(test):
            seen.setdefault(command.text, command)
    assert seen, f"no documented command is mapped to {test}"
    return list(seen.values())


def shown_output_matches(command: Command, printed: str) -> bool:
    """Whether ``printed`` is the output the doc shows under ``command``.

    Only shown lines that start with ``{``, ``[`` or ``{'`` are output (others are remarks);
    a word ending in ``…`` (``9f2c…``, ``2026-…``) stands for a value that differs per run (ids,
    dates), and text after two spaces is a remark.
    """
    shown = [line.split("  ")[0] for line in command.output if line[:1] in "{["]
    if not shown:
        return True
    pattern = ".*?".join(re.escape(part) for part in re.split(r"[\w-]*…", shown[0]))
    return re.fullmatch(pattern, printed.strip()) is not None


# The table -------------------------------------------------------------------------------------


def test_every_documented_command_is_run_by_a_named_test() -> None:
    documented = {c.text for c in documented_commands()}
    unmapped = sorted(documented - set(COVERAGE))
    assert not unmapped, "documented commands no test runs; add each to COVERAGE: " + "".join(
        f"\n  {text!r}" for text in unmapped)
    stale = sorted(set(COVERAGE) - documented)
    assert not stale, f"COVERAGE entries for commands no longer in the docs: {stale}"
    for text, where in COVERAGE.items():
        named = where.test if isinstance(where, RunBy) else where.instead
        for path, name in re.findall(r"(tests/[\w/]+\.py)(?:::(\w+))?", named):
            source = (ROOT / path).read_text()
            assert not name or f"def {name}(" in source, f"{text!r}: no test {path}::{name}"
        if isinstance(where, CannotRun):
            assert where.why and where.instead, text


def test_the_parser_reads_continued_lines_pipes_quotes_and_shown_output() -> None:
    by_text = {c.text: c for c in documented_commands()}
    assert "-log_dir /tmp/log_dir" in next(t for t in by_text if "server.Worker" in t)
    assert any(t.startswith("python3 -c") and "| curl" in t for t in by_text)
    assert any(t.startswith('python -c "\nimport numpy') for t in by_text)
    hello = next(c for t, c in by_text.items() if '"hello"' in t and "encode?" not in t)
    assert hello.output == ('{"id":1,"result":{"text":"hello"}}',)
    assert shown_output_matches(hello, '{"id":1,"result":{"text":"hello"}}\n')
    assert not shown_output_matches(hello, '{"id":1,"result":{"text":"hellO"}}')


# Running them ----------------------------------------------------------------------------------


@pytest.fixture
def subs(tmp_path: Path) -> Substitutions:
    return Substitutions(tmp_path)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


@pytest.fixture
def session(subs: Substitutions, project: Path) -> Iterator[Session]:
    session = Session(subs, project)
    yield session
    session.close()


def _by(commands: list[Command], *needles: str) -> Command:
    (found,) = [c for c in commands if all(n in c.text for n in needles)]
    return found


def _http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        return httpx.get(url, headers=headers, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def client_when_serving(service: Shell, port_in: int, port_out: int) -> WKRClient:
    """A client of the service ``service`` started, once a worker serves; fails if it exits."""
    def connect() -> WKRClient | None:
        service.running()
        try:
            return WKRClient(port=port_in, port_out=port_out, connect_timeout=1)
        except ServiceUnavailable:
            return None
    return wait_until(connect, 90, interval=0.2, what=f"{service.text!r} to serve")


def test_the_rest_commands_answer_as_the_docs_show(session: Session) -> None:
    commands = commands_run_by(REST.test)
    echo = session.start(_by(commands, "wkr-serving-start workers.echo.Worker"))
    api = f"http://127.0.0.1:{session.subs.port('8900')}"
    wait_until(lambda: echo.running() and _http_ok(f"{api}/readyz"), 90, interval=0.2,
               what=f"the echo service's REST API to be ready:\n{echo.output[-2000:]}")
    flower = f"http://127.0.0.1:{session.subs.port('5555')}/api/workers"
    wait_until(lambda: echo.running() and _http_ok(flower), 90, interval=0.3,
               what="Flower to answer")

    for command in commands:
        text = command.text
        if text.startswith("wkr-serving-") or "/tasks" in text:
            continue
        printed = session.run(command)
        assert shown_output_matches(command, printed), (text, printed)

    alone = f"http://127.0.0.1:{session.subs.port('8901')}"
    for command in (c for c in commands if c.text.startswith("wkr-serving-http")):
        shell = session.start(command)

        def up(shell: Shell = shell) -> bool:
            return shell.running() and _http_ok(f"{alone}/readyz", {"X-API-Key": "s3cret"})

        wait_until(up, 60, interval=0.2, what=f"{command.text!r}:\n{shell.output[-2000:]}")
        keyed = "-http_api_key" in command.text
        assert (httpx.get(f"{alone}/status/server", timeout=10).status_code == 401) == keyed
        session.stop(shell)

    submit, poll, revoke = (c for c in commands if "/tasks" in c.text)
    printed = session.run(submit)
    assert shown_output_matches(submit, printed), printed
    task_id = json.loads(printed)["task_id"]

    def with_id(command: Command) -> Command:
        return Command(command.doc, command.text.replace("9f2c…", task_id), command.output)

    def finished() -> bool:
        return shown_output_matches(poll, session.run(with_id(poll)))

    wait_until(finished, 30, interval=0.2, what="the task's result, as the doc shows it")
    assert json.loads(session.run(with_id(revoke)))["error"]["status"] == 409, "already done"
    session.stop(echo)


def test_the_seed_server_starts_from_examples_and_celery_sees_its_workers(
        session: Session) -> None:
    commands = commands_run_by(SEED.test)
    server = session.start(_by(commands, "server.Worker"))
    port_in, port_out = session.subs.port("8996"), session.subs.port("8998")
    client = client_when_serving(server, port_in, port_out)
    try:
        assert client.encode(np.zeros((5, 5))).result(timeout=60).shape == (5, 3)
    finally:
        client.close()
    printed = session.run(_by(commands, "inspect ping"))
    assert printed.count("pong") == 2, printed  # -num_worker 2
    session.stop(server)
    log = session.subs.tmp / "tmp_log_dir" / "default.log"
    assert "Begin load model" in log.read_text()


def test_the_elastic_command_serves_and_reports_its_worker_range(session: Session) -> None:
    (command,) = commands_run_by(ELASTIC.test)
    server = session.start(command)
    api = httpx.Client(base_url=f"http://127.0.0.1:{session.subs.port('8900')}", timeout=10)

    def scaling() -> dict[str, object]:
        try:
            return dict(api.get("/status/server").json().get("scaling") or {})
        except (httpx.TransportError, ValueError):
            return {}
    try:
        state = wait_until(lambda: (lambda s: s if s.get("workers") == 1 else None)(scaling()),
                           60, what="the elastic state in /status/server")
        # the supervisor counts a worker before it has loaded its model
        wait_answering(api, "/readyz", 60, what="/readyz: the floor's worker serving")
        assert (state["floor"], state["ceiling"]) == (1, 4)
        answer = api.post("/encode", json={"data": [0.0] * 512})
        assert answer.status_code == 200, answer.text
    finally:
        api.close()
    session.stop(server)


def test_the_production_commands_run_as_written(session: Session) -> None:
    commands = commands_run_by(PRODUCTION.test)
    root = session.project

    def sh(verb: str, expect: int = 0) -> str:
        (command,) = [c for c in commands if c.text == f"sh run_script.sh {verb}"]
        return session.run(command, expect=expect)

    session.run(_by(commands, "workers.linear.Worker", "> run_script.sh"))
    assert "linear started" in sh("start")
    assert "running (pid" in sh("status")
    for check in (c for c in commands if c.text.startswith("wkr-serving-check")):
        session.run(check)
    sh("stop")
    sh("status", expect=3)
    assert "not running" in sh("stopf")
    assert "linear started" in sh("restart")
    assert list((session.subs.tmp / "var_lib_wkr_linear").iterdir()), "-data_dir holds the AOF"
    assert (root / "logs" / "linear.std.log").exists() and (root / "linear.pid").exists()

    graceful, force = sorted((c for c in commands if "wkr-serving-terminate" in c.text),
                             key=lambda c: "-force" in c.text)
    session.run(graceful)
    wait_until(lambda: not (root / "linear.pid").exists() or "not running" in sh("status", 3),
               30, what="the terminated service to be gone")
    sh("start")
    session.run(force)
    sh("status", expect=3)

    session.run(_by(commands, "-format systemd"))
    unit = (root / "linear.service").read_text()
    assert "ExecStart=" in unit and "-name linear" in unit
    session.run(_by(commands, "wkr-decentral-make"))
    script = (root / "examples" / "run_script.sh").read_text()
    assert "decentralize.ProcessingModel" in script and "edge" in script


def test_cpu_per_thread_names_each_client_thread_and_sums_every_process(
    session: Session,
) -> None:
    """``python -m benchmarks.threads`` as docs/performance.md has it (and the README names it):
    one round of wkr-celery and of the coalescing loop."""
    (command,) = commands_run_by(CPU_PER_THREAD.test)
    printed = session.run(command, timeout=240)
    rounds: dict[str, dict[str, float]] = {}
    for line in printed.splitlines():
        if line.startswith("round 1, "):
            system = line.split()[2]
            rounds[system] = {"inputs/s": float(line.split(": ")[1].split()[0].replace(",", ""))}
        elif line.startswith("  "):
            what, _, value = line.split("  (")[0].strip().rpartition(" ")
            rounds[system][what.strip()] = float(value)
    assert set(rounds) == {"wkr", "coalesce"}, printed
    for rows in rounds.values():
        assert rows["inputs/s"] > 0, printed
        assert rows["client MainThread"] > 0 and rows["worker 0"] > 0, printed
        processes = rows["client, all threads"] + rows["worker 0"] + rows["redis"]
        assert abs(rows["all processes"] - processes) < 0.2, printed
    # The listener's share is the larger of the two helper threads': 10 ms CPU clock ticks
    # over a short stream could read none for the publisher's.
    assert rounds["wkr"]["client wkr-client-listen"] > 0, printed


def test_the_benchmark_help_runs_as_written(session: Session) -> None:
    (command,) = commands_run_by(BENCH_HELP.test)
    printed = session.run(command)
    assert "--workloads" in printed and "--inflight" in printed
