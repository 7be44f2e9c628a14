"""``examples/decentralize.py`` and the commands in ``docs/decentral.md`` run as documented."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from wkr_celery.client.helper import RedisHandler
from wkr_celery.redis_embedded import EmbeddedRedis
from workers.linear import make_weights

from .decentral_support import Sink, child_env, run_cli
from .helpers import ROOT, Service, free_port, wait_until

DOC = (ROOT / "docs" / "decentral.md").read_text()
EXAMPLE = ROOT / "examples" / "decentralize.py"


@pytest.fixture
def sink() -> Iterator[Sink]:
    sink = Sink()
    yield sink
    sink.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _results_with_ids(sink: Sink, ids: set[object]) -> Callable[[Sink], bool]:
    return lambda s: ids <= {p["id"] for p in s.posts}


def test_the_docs_show_the_example_file_and_the_block_runs_on_its_own() -> None:
    (block,) = re.findall(r"```python\n(.*?)```", DOC, flags=re.S)
    assert block.strip() in EXAMPLE.read_text()
    done = subprocess.run([sys.executable, "-c", block], cwd=ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_documented_commands_run_the_example_end_to_end(
        make_service: Callable[..., Service], redis_server: EmbeddedRedis, sink: Sink,
        tmp_path: Path) -> None:
    service = make_service("workers.linear.Worker")
    port, queue = redis_server.port, f"EXAMPLE_QUEUE_{uuid.uuid4().hex[:6]}"
    control, status_port, http_port = free_port(), free_port(), free_port()
    start = re.search(r"DECENTRAL_PUSH_API=\S+ \\\nwkr-decentral-start (.*?)\n```", DOC, re.S)
    assert start, "the wkr-decentral-start command is missing from docs/decentral.md"
    text = start.group(1).replace("\\\n", " ").replace(
        "[[127.0.0.1, 8996, 8998]]", f"[[127.0.0.1, {port}, {port}, {service.name}]]")
    swap = {"21324": str(control), "21326": str(status_port), "8900": str(http_port),
            "/tmp/log_dir": str(tmp_path)}
    flags = [swap.get(flag, flag) for flag in text.split()]
    env = {"DECENTRAL_REDIS_PORT": str(port), "DECENTRAL_QUEUE_KEY": queue,
           "DECENTRAL_PUSH_API": sink.url}
    central = subprocess.Popen([sys.executable, "-m", "wkr_celery.decentral.cli", *flags],
                               cwd=ROOT / "examples", env=child_env(env),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    where = ["-port", str(control), "-port_out", str(status_port)]
    try:
        def four_running() -> bool:
            done = run_cli("status", [*where, "-timeout", "5"])
            return done.returncode == 0 and json.loads(done.stdout)["status"]["totals"][
                "running"] == 4

        wait_until(four_running, 60, interval=0.3, what="4 running units")

        push = re.search(r'```bash\npython -c "(.*?)"\n```', DOC, re.S)
        assert push, "the job-pushing snippet is missing from docs/decentral.md"
        code = push.group(1).replace("8996", str(port)).replace("'EXAMPLE_QUEUE'", repr(queue))
        pushed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env(),
                                capture_output=True, text=True, timeout=60)
        assert pushed.returncode == 0, pushed.stderr
        rng = np.random.default_rng(9)
        known = {f"k{i}": rng.standard_normal(512).astype(np.float32) for i in range(10)}
        with RedisHandler(queue, "127.0.0.1", port) as jobs:
            jobs.push_many({"id": key, "input": x.tolist()} for key, x in known.items())

        sink.wait(_results_with_ids(sink, set(range(100)) | set(known)), 90, what="110 results")
        assert Counter(p["id"] for p in sink.posts) == Counter([*range(100), *known])
        assert all(len(p["result"]) == 128 for p in sink.posts)
        by_id = {p["id"]: p["result"] for p in sink.posts}
        for key, x in known.items():
            np.testing.assert_allclose(by_id[key], np.tanh(x @ make_weights()), atol=1e-5)

        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/status", timeout=10) as r:
            assert json.loads(r.read())["totals"]["calls"] >= 1

        done = run_cli("terminate", where)
        assert done.returncode == 0, done.stderr
        assert central.wait(30) == 0
        assert "DONE job with input: k9" in (tmp_path / "decentral.log").read_text()
    finally:
        _stop(central)


def test_running_the_example_file_with_python_starts_the_same_central(
        make_service: Callable[..., Service], redis_server: EmbeddedRedis, redis_url: str,
        sink: Sink, tmp_path: Path) -> None:
    service = make_service("workers.linear.Worker")
    port, queue, name = redis_server.port, f"q{uuid.uuid4().hex[:6]}", f"ex{uuid.uuid4().hex[:6]}"
    env = {"DECENTRAL_REDIS_PORT": str(port), "DECENTRAL_QUEUE_KEY": queue,
           "DECENTRAL_PUSH_API": sink.url}
    with open(tmp_path / "central.out", "wb") as out:
        central = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "-name", name, "-broker_url", redis_url,
             "-remote_servers", f'[["127.0.0.1", {port}, {port}, "{service.name}"]]'],
            cwd=ROOT, env=child_env(env), stdout=out, stderr=subprocess.STDOUT)
    try:
        x = np.linspace(-1, 1, 512, dtype=np.float32)
        with RedisHandler(queue, "127.0.0.1", port) as jobs:
            jobs.push({"id": "one", "input": x.tolist()})
        sink.wait(_results_with_ids(sink, {"one"}), 60, what="the result")
        np.testing.assert_allclose(sink.posts[0]["result"], np.tanh(x @ make_weights()),
                                   atol=1e-5)
        done = run_cli("terminate", ["-name", name, "-broker_url", redis_url])
        assert done.returncode == 0, done.stderr
        assert central.wait(30) == 0, (tmp_path / "central.out").read_text()
    finally:
        _stop(central)
