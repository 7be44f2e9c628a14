"""The oldest version of every dependency that ``pyproject.toml`` allows, installed as a user would.

The suite's own venv has the newest of each, and what is between has broken us: before 5.3
redis-py's ``ConnectionPool.get_connection`` required a command name (every worker died at its
first fetch on 5.0-5.2), before 6.0 its health check recursed without end on a refused PING,
and msgpack, orjson and fastapi-offline each failed a test at an older floor (see
:data:`AT_THE_FLOORS`). So this test makes a venv of its own, installs the package there (with
its test extras) with each dependency at the lowest version its pin allows (read from
``pyproject.toml``, so it follows the pins), serves the quickstart's worker from it the way the
README says (activate, then ``wkr-serving-start`` from the repository root), asks it from both
clients, and stops it with Ctrl+C through its terminal; then it runs, in that venv, the suite's
tests that an older floor failed.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from workers.linear import make_weights

from .doc_commands import Shell
from .helpers import ROOT, free_port, wait_until

#: The suite's tests that failed at an older floor of a pin, run again in the floor venv:
#: a Redis that refuses commands (a wrong or missing password, MISCONF, READONLY, BUSY), where
#: redis-py before 6.0 recursed without end on its health check's refused PING; arrays' bodies,
#: cut short by msgpack before 1.0.4; a million empty maps, which peaked ~70 MB higher before
#: msgpack 1.2.1; JSON nested past the parser's depth, which orjson parsed before 3.9.15; the
#: API docs' assets (fastapi-offline's favicon before 1.7.2 is under the test's bar).
AT_THE_FLOORS = (
    "tests/faults/test_security.py::"
    "test_redis_requirepass_works_end_to_end_and_a_wrong_password_is_refused_clearly",
    "tests/faults/test_redis_refuses_writes.py",
    "tests/test_codec_fuzz.py",
    "tests/faults/test_hostile_payloads.py::"
    "test_empty_maps_pushed_onto_the_queue_are_refused_while_decoding_naming_the_limit",
    "tests/test_envelope.py",
    "tests/test_apidocs.py",
)

#: Run by the floor venv's Python (from a folder of its own, so it imports the installed
#: package, not the checkout): answers from both clients, and the versions it ran with.
CLIENT = """
import asyncio, importlib.metadata as md, json, sys
import numpy as np
from wkr_celery.client import AsyncWKRClient, WKRClient

port_in, port_out, inputs, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
x = np.load(inputs)
with WKRClient(ip="127.0.0.1", port=port_in, port_out=port_out, connect_timeout=60) as client:
    one = client.encode(x[0]).result(timeout=60)
    many = np.stack(list(client.encode_many(x[1:], max_inflight=64, timeout=60)))

async def ask_async():
    async with AsyncWKRClient(ip="127.0.0.1", port=port_in, port_out=port_out) as client:
        return np.stack(await asyncio.gather(*(client.encode(v) for v in x[:20])))

np.save(out, np.concatenate([one[None], many, asyncio.run(ask_async())]))
print(json.dumps({name: md.version(name) for name in sys.argv[5:]}))
"""


def floors() -> dict[str, str]:
    """``{name: lowest version}`` of every dependency in ``pyproject.toml`` that applies here."""
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)
    assert block, "pyproject.toml has no dependencies list"
    found = {}
    for line in re.findall(r'^\s*"([^"]+)"', block.group(1), re.M):
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        lows = [s.version for s in requirement.specifier if s.operator == ">="]
        assert len(lows) == 1, f"{line!r}: expected one >= bound"
        found[requirement.name] = lows[0]
    assert {"celery", "kombu", "redis", "numpy", "msgpack"} <= set(found), found
    return found


@pytest.fixture(scope="module")
def floor_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A venv with the package and every dependency at its floor; built from a copy of the
    checkout, so the build leaves nothing in it."""
    tmp = tmp_path_factory.mktemp("floor")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "*.egg-info", "__pycache__", "bench-results", ".*_cache"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pins = floors()
    done = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
         f"{source}[test]",
         *(f"{name}=={version}" for name, version in pins.items())],
        capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"pip install failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return venv, pins


@pytest.mark.timeout(900)  # pip installs about 40 packages into the new venv first
def test_every_pin_at_its_floor_serves_both_clients_and_stops_on_ctrl_c(
        floor_venv: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    venv, pins = floor_venv
    port_in, port_out = free_port(), free_port()
    service = Shell(f". {venv}/bin/activate && wkr-serving-start workers.linear.Worker "
                    f"-num_worker 1 -port_in {port_in} -port_out {port_out}", ROOT)
    try:
        wait_until(lambda: service.running() and "starting 1 worker" in service.output, 120,
                   what="the floor venv's service to start")
        inputs = np.random.default_rng(7).standard_normal((200, 512)).astype(np.float32)
        np.save(tmp_path / "inputs.npy", inputs)
        (tmp_path / "client.py").write_text(CLIENT)
        asked = subprocess.run(
            [str(venv / "bin" / "python"), "client.py", str(port_in), str(port_out),
             "inputs.npy", "answers.npy", *pins],
            cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert asked.returncode == 0, f"client failed:\n{asked.stderr[-3000:]}\n" \
                                      f"service:\n{service.output[-3000:]}"
        ran_with = json.loads(asked.stdout.strip().splitlines()[-1])
        assert {n: Version(v) for n, v in ran_with.items()} == {
            n: Version(v) for n, v in pins.items()}, ran_with
        answers = np.load(tmp_path / "answers.npy")
        expected = np.tanh(inputs @ make_weights())
        np.testing.assert_allclose(answers, np.concatenate([expected, expected[:20]]),
                                   rtol=1e-5, atol=1e-5)
        assert "exited with code" not in service.output, service.output[-3000:]
        assert service.ctrl_c() == 0, service.output[-3000:]
    finally:
        service.close()


@pytest.mark.timeout(900)
def test_the_tests_an_older_floor_failed_pass_with_every_pin_at_its_floor(
        floor_venv: tuple[Path, dict[str, str]]) -> None:
    """The same tests as the suite's own run, by the floor venv's pytest, from the repository
    root; the services they start are the floor venv's ``wkr-serving-start``."""
    venv, _ = floor_venv
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
         *AT_THE_FLOORS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{done.stdout[-6000:]}\n{done.stderr[-2000:]}"
