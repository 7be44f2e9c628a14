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
from .doc_commands import Command, Session, Substitutions, make_project
from .helpers import ROOT, Service, wait_until
from .test_documented_commands import (
    DECENTRAL,
    RECEIVER,
    client_when_serving,
    commands_run_by,
)

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


def test_the_documented_commands_run_the_example_end_to_end(tmp_path: Path) -> None:
    """docs/decentral.md's commands as typed, in order, in their own terminals (see
    tests/doc_commands.py for the substitutions); the sink stands for DECENTRAL_PUSH_API."""
    commands = commands_run_by(DECENTRAL.test)

    def command(*needles: str) -> Command:
        (found,) = [c for c in commands if all(n in c.text for n in needles)]
        return found

    subs = Substitutions(tmp_path)
    sink = Sink(port=subs.port("8000"))
    session = Session(subs, make_project(tmp_path))
    port = subs.port("8996")
    try:
        service = session.start(command("wkr-serving-start workers.linear.Worker"))
        client_when_serving(service, port, subs.port("8998")).close()
        central = session.start(command("wkr-decentral-start"))

        def running() -> int:
            central.running()
            printed = session.run(command("wkr-decentral-status"), expect=None, timeout=60)
            return int(json.loads(printed)["status"]["totals"]["running"]) \
                if printed.lstrip().startswith("{") else 0

        wait_until(lambda: running() == 4, 90, interval=0.3,
                   what=f"4 running units:\n{central.output[-2000:]}")
        session.run(command("RedisHandler('EXAMPLE_QUEUE'"))
        rng = np.random.default_rng(9)
        known = {f"k{i}": rng.standard_normal(512).astype(np.float32) for i in range(10)}
        with RedisHandler("EXAMPLE_QUEUE", "127.0.0.1", port) as jobs:
            jobs.push_many({"id": key, "input": x.tolist()} for key, x in known.items())

        sink.wait(_results_with_ids(sink, set(range(100)) | set(known)), 90, what="110 results")
        assert Counter(p["id"] for p in sink.posts) == Counter([*range(100), *known])
        assert all(len(p["result"]) == 128 for p in sink.posts)
        by_id = {p["id"]: p["result"] for p in sink.posts}
        for key, x in known.items():
            np.testing.assert_allclose(by_id[key], np.tanh(x @ make_weights()), atol=1e-5)

        switched = json.loads(session.run(command("wkr-decentral-switch")))
        assert switched["status"]["totals"]["running"] == 8, switched
        status = json.loads(session.run(command("curl -s http://127.0.0.1:8900/status")))
        assert status["totals"]["units"] == 8 and status["totals"]["calls"] >= 1
        session.run(command("wkr-decentral-terminate"))
        assert central.wait(30) == 0, central.output[-3000:]
        assert "DONE job with input: k9" in (tmp_path / "tmp_log_dir" / "decentral.log").read_text()
        session.stop(service)
    finally:
        session.close()
        sink.close()


def test_the_documented_receiver_answers_each_post_and_prints_it(tmp_path: Path) -> None:
    """The stand-in for DECENTRAL_PUSH_API the docs start before the units, as typed."""
    (command,) = commands_run_by(RECEIVER.test)
    subs = Substitutions(tmp_path)
    session = Session(subs, make_project(tmp_path))
    url = f"http://127.0.0.1:{subs.port('8000')}/result"
    try:
        receiver = session.start(command)
        wait_until(lambda: "receiving results" in receiver.output, 30,
                   what=f"the receiver to listen:\n{receiver.output}")
        for job in range(3):
            assert _post(url, {"id": job, "result": [0.5, 1.5]}) == 200
        wait_until(lambda: '{"id": 2, "result": [0.5, 1.5]}' in receiver.output, 10,
                   what=f"the last result printed:\n{receiver.output}")
        session.stop(receiver)
    finally:
        session.close()


def _post(url: str, payload: dict[str, object]) -> int:
    """POST ``payload`` as JSON the way ``examples/decentralize.py`` does; the HTTP status."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        return int(response.status)


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
