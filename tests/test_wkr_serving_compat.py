"""The original's users: ``wkr_serving`` imports, and the guide's examples run as docs/compat.md says.

The examples in ``examples/wkr_serving/`` are started with the console scripts, from that folder,
on free ports; nothing is put on ``PYTHONPATH``, so ``wkr_serving`` comes from the install.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

import wkr_celery.client
from wkr_celery.errors import DeadlineExceeded, InputError

from .decentral_support import Sink
from .helpers import ROOT, free_port, stop_gracefully, wait_answering, wait_until

DOC = (ROOT / "docs" / "compat.md").read_text()
EXAMPLES = ROOT / "examples" / "wkr_serving"
BIN = Path(sys.executable).parent
# The server example's model: what examples/wkr_serving/server.py loads in get_model.
WEIGHTS = np.random.default_rng(0).standard_normal((5, 3))

EXPORTS = {
    "wkr_serving": {"__version__"},
    "wkr_serving.server": {"WKRServer", "WKRHardWorker"},
    "wkr_serving.server.helper": {"get_args_parser", "import_tf", "import_torch", "pin_device"},
    "wkr_serving.client": {"WKRClient", "WKRWorker", "WKRDecentralizeCentral"},
    "wkr_serving.client.helper": {"RedisHandler", "SERIALIZERS"},
}


def _bash_block(starting: str) -> str:
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", DOC, flags=re.S) if starting in b]
    assert len(blocks) == 1, f"docs/compat.md should have one bash block with {starting!r}"
    return blocks[0]


def _substitute(text: str, values: dict[str, str]) -> str:
    for old, new in values.items():
        text = re.sub(rf"(?<![\w.]){re.escape(old)}(?![\w])", new, text)
    return text


def _script_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The user's shell: this venv's console scripts first on PATH, nothing on PYTHONPATH."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    return {**env, **(extra or {})}


def _doc_command(program: str, values: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The doc's ``cd examples/wkr_serving && [VAR=value …] program …`` as argv and env."""
    text = _substitute(_bash_block(f"{program} "), values).replace("\\\n", " ")
    words = text.split()
    assert words[:3] == ["cd", "examples/wkr_serving", "&&"], text
    words = words[3:]
    env: dict[str, str] = {}
    while "=" in words[0]:
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    assert words[0] == program and (BIN / program).exists(), f"{program} is not in {BIN}"
    return words, _script_env(env)


@dataclass
class SeedServer:
    port_in: int
    port_out: int
    http_port: int
    log_dir: Path


@pytest.fixture(scope="module")
def seed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeedServer]:
    """``wkr-serving-start server.Worker`` with the guide's flags, from examples/wkr_serving."""
    server = SeedServer(free_port(), free_port(), free_port(),
                        tmp_path_factory.mktemp("seed") / "log_dir")
    argv, env = _doc_command("wkr-serving-start", {
        "8996": str(server.port_in), "8998": str(server.port_out),
        "8900": str(server.http_port), "/tmp/log_dir": str(server.log_dir)})
    output = server.log_dir.parent / "server.out"
    with open(output, "wb") as out:
        proc = subprocess.Popen(argv, cwd=EXAMPLES, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        try:  # construction waits for a live worker
            wkr_celery.client.WKRClient(port=server.port_in, port_out=server.port_out,
                                        connect_timeout=60).close()
        except Exception as exc:
            raise AssertionError(f"{exc}\n{output.read_text(errors='replace')}") from exc
        yield server
    finally:
        code = stop_gracefully(proc)
    assert code == 0, output.read_text(errors="replace")


def test_wkr_serving_exports_exactly_these_names() -> None:
    for module_name, names in EXPORTS.items():
        module = importlib.import_module(module_name)
        assert set(module.__all__) == names, module_name
        assert all(getattr(module, name) is not None for name in names)


def test_wkr_serving_names_are_wkr_celery_objects_except_the_blocking_client() -> None:
    import wkr_serving
    import wkr_serving.client

    for module_name, names in EXPORTS.items():
        compat = importlib.import_module(module_name)
        own = importlib.import_module(module_name.replace("wkr_serving", "wkr_celery", 1))
        for name in names - {"WKRClient"}:
            assert getattr(compat, name) is getattr(own, name), f"{module_name}.{name}"
    blocking = wkr_serving.client.WKRClient
    assert blocking is not wkr_celery.client.WKRClient
    assert issubclass(blocking, wkr_celery.client.WKRClient)
    assert wkr_serving.__version__ == wkr_celery.__version__


def test_the_guides_client_example_prints_the_result_it_waited_for(seed_server: SeedServer
                                                                   ) -> None:
    block = _bash_block("python client.py").strip()
    assert block == "cd examples/wkr_serving && python client.py", block
    done = subprocess.run(
        [sys.executable, "client.py", str(seed_server.port_in), str(seed_server.port_out)],
        cwd=EXAMPLES, env=_script_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = re.findall(r"\[([^\[\]]*)\]", done.stdout)  # numpy's print of a 5x3 array
    assert [[float(v) for v in row.split()] for row in rows] == [[0.0] * 3] * 5, done.stdout
    log = (seed_server.log_dir / "default.log").read_text()
    assert "Begin load model" in log and "DONE input" in log


def test_wkr_serving_client_encode_blocks_and_returns_the_result(seed_server: SeedServer) -> None:
    from wkr_serving.client import WKRClient

    rng = np.random.default_rng(5)
    x = rng.standard_normal(5)
    with WKRClient(ip="127.0.0.1", port=seed_server.port_in, port_out=seed_server.port_out,
                   check_version=False) as client:
        assert isinstance(client, WKRClient)
        np.testing.assert_allclose(client.encode(x), x @ WEIGHTS)
        np.testing.assert_allclose(client.encode(2 * x, timeout=30), 2 * x @ WEIGHTS)
        with pytest.raises(DeadlineExceeded):
            client.encode(x, timeout=1e-6)
        with pytest.raises(InputError):
            client.encode(x, timeout=-1)
        many = rng.standard_normal((20, 5))
        np.testing.assert_allclose(list(client.encode_many(many, max_inflight=4)),
                                   many @ WEIGHTS)


def test_the_guides_http_port_serves_the_rest_api(seed_server: SeedServer) -> None:
    """The fixture waits for a live worker; the REST API is a process of its own, which may
    come up a moment later (CI once asked before it listened: connection refused)."""
    with httpx.Client(base_url=f"http://127.0.0.1:{seed_server.http_port}", timeout=10) as api:
        wait_answering(api, "/readyz", 60, what="the guide's REST API to answer /readyz")


def test_the_guides_decentralize_example_posts_a_result_for_every_queued_job(
        seed_server: SeedServer, tmp_path: Path) -> None:
    sink = Sink()
    control, status, http_port = free_port(), free_port(), free_port()
    ports = {"8996": str(seed_server.port_in), "8998": str(seed_server.port_out),
             "21324": str(control), "21326": str(status), "8901": str(http_port)}
    argv, env = _doc_command("wkr-decentral-start", {
        **ports, "http://127.0.0.1:8000/result": sink.url, "/tmp/log_dir": str(tmp_path)})
    output = tmp_path / "central.out"
    with open(output, "wb") as out:
        central = subprocess.Popen(argv, cwd=EXAMPLES, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        push = re.search(r'python -c "(.*?)"\n', _bash_block("RedisHandler"), flags=re.S)
        assert push, "the job-pushing snippet is missing from docs/compat.md"
        pushed = subprocess.run([sys.executable, "-c", _substitute(push.group(1), ports)],
                                cwd=tmp_path, env=_script_env(), capture_output=True,
                                text=True, timeout=60)
        assert pushed.returncode == 0, pushed.stderr
        from wkr_serving.client.helper import RedisHandler

        known = np.random.default_rng(8).standard_normal((10, 5))
        with RedisHandler("EXAMPLE_QUEUE", "127.0.0.1", seed_server.port_in) as jobs:
            jobs.push_many(known.tolist())

        inputs = np.vstack([np.repeat(np.arange(10.0)[:, None], 5, axis=1), known])
        sink.wait(lambda s: len(s.posts) >= len(inputs), 90,
                  what=f"{len(inputs)} results; central:\n{output.read_text()}")
        got = sorted(map(tuple, np.asarray(sink.posts)))
        np.testing.assert_allclose(got, sorted(map(tuple, inputs @ WEIGHTS)), atol=1e-9)

        def calls() -> int:  # the -http_port status, rewritten by the central every second
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/status", timeout=10) as r:
                return int(json.loads(r.read())["totals"]["calls"])

        wait_until(lambda: calls() >= len(inputs), 30, what="the status to count the jobs")

        terminate = shutil.which("wkr-decentral-terminate", path=str(BIN))
        assert terminate, f"wkr-decentral-terminate is not in {BIN}"
        done = subprocess.run(["wkr-decentral-terminate", "-port", str(control), "-port_out",
                               str(status)], env=_script_env(), capture_output=True, text=True,
                              timeout=90)
        assert done.returncode == 0, done.stderr
        assert central.wait(30) == 0
        assert "DONE job with input: [" in (tmp_path / "decentral.log").read_text()
    finally:
        sink.close()
        stop_gracefully(central)


def _package_dirs(root: Path) -> set[str]:
    """Folders under ``root`` that are packages, relative to the repository."""
    return {p.parent.relative_to(ROOT).as_posix() for p in root.rglob("__init__.py")}


def test_the_wheel_holds_wkr_serving_beside_every_wkr_celery_package(tmp_path: Path) -> None:
    """``pip install .`` installs a wheel: build it from the files an sdist would carry."""
    source = tmp_path / "src"
    shutil.copytree(ROOT / "wkr_celery", source / "wkr_celery",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps",
                            "-q", "-w", str(tmp_path / "dist")],
                           capture_output=True, text=True, timeout=180)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    compat_source = ROOT / "wkr_celery" / "_wkr_serving"
    packages = _package_dirs(ROOT / "wkr_celery") - _package_dirs(compat_source)
    missing = [p for p in packages if f"{p}/__init__.py" not in names]
    assert not missing, f"packages missing from pyproject's [tool.setuptools] packages: {missing}"
    compat = {f"wkr_serving/{p.relative_to(compat_source)}" for p in compat_source.rglob("*.py")}
    assert compat <= names, sorted(compat - names)
    assert not [n for n in names if n.startswith("wkr_celery/_wkr_serving")]
    static = ROOT / "wkr_celery" / "rest" / "static"
    assert {f"wkr_celery/rest/static/{p.name}" for p in static.iterdir()} <= names
    lua = ROOT / "wkr_celery" / "lua"
    assert {f"wkr_celery/{p.relative_to(lua.parent).as_posix()}" for p in lua.rglob("*.lua")} <= names
