"""Every example in the README and examples/ runs, against services started as the docs say."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from wkr_celery.client import WKRClient
from workers.linear import make_weights

from .helpers import ROOT, free_port
from .scripts import script, user_env

README = (ROOT / "README.md").read_text()


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def _serve(command: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    """``wkr-serving-start *command`` typed in ``cwd``, the folder the doc names."""
    return subprocess.Popen([script("wkr-serving-start"), *command], cwd=cwd, env=user_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    return err.decode()


@pytest.fixture(scope="module")
def quickstart() -> Iterator[tuple[int, int]]:
    """The README's quickstart service, on free ports instead of 8996/8998."""
    port_in, port_out = free_port(), free_port()
    command = re.search(r"wkr-serving-start (workers\.linear\.Worker[^\n`]*)", README)
    assert command, "the quickstart command is missing from the README"
    proc = _serve([*command.group(1).split(), "-port_in", str(port_in), "-port_out",
                   str(port_out)], ROOT)
    WKRClient(port=port_in, port_out=port_out, connect_timeout=60).close()
    yield port_in, port_out
    _stop(proc)


def test_every_python_block_in_the_readme_runs(quickstart: tuple[int, int],
                                               tmp_path: Path) -> None:
    port_in, port_out = quickstart
    blocks = _python_blocks()
    assert len(blocks) >= 3
    for block in blocks:
        if "class Worker" in block:
            assert block.strip() in (ROOT / "examples" / "server.py").read_text()
            continue
        if block.strip() in (ROOT / "examples" / "client.py").read_text():
            continue  # run below, against the server example it belongs to
        code = block.replace("8996", str(port_in)).replace("8998", str(port_out))
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, f"README block failed:\n{block}\n{out.stderr}"


def test_seed_server_example_serves_the_seed_client_example(tmp_path: Path) -> None:
    port_in, port_out = free_port(), free_port()
    log_dir = tmp_path / "log_dir"
    command = re.search(r"cd examples && wkr-serving-start (server\.Worker.*?)\n```", README,
                        flags=re.S)
    assert command, "the start-service command is missing from the README"
    flags = command.group(1).replace("\\\n", " ").split()
    flags = [{"8996": str(port_in), "8998": str(port_out), "/tmp/log_dir": str(log_dir)}.get(f, f)
             for f in flags]
    proc = _serve(flags, ROOT / "examples")
    try:
        out = subprocess.run([sys.executable, "client.py", str(port_in), str(port_out)],
                             cwd=ROOT / "examples", capture_output=True, text=True, timeout=120)
    finally:
        _stop(proc)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("0.") >= 15, out.stdout  # a 5x3 matrix of zeros
    log = (log_dir / "default.log").read_text()
    assert "Begin load model" in log and "DONE input" in log


def test_npy_file_client_encodes_every_row(quickstart: tuple[int, int], tmp_path: Path) -> None:
    port_in, port_out = quickstart
    inputs = np.random.default_rng(3).standard_normal((300, 512)).astype(np.float32)
    np.save(tmp_path / "in.npy", inputs)
    out = subprocess.run(
        [sys.executable, "client/encode_npy.py", str(tmp_path / "in.npy"),
         str(tmp_path / "out.npy"), "--port", str(port_in), "--port_out", str(port_out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), np.tanh(inputs @ make_weights()),
                               atol=1e-5)
    assert "300/300" in out.stderr


def test_readme_documents_every_flag_of_wkr_serving_start() -> None:
    from wkr_celery.config import build_parser

    flags = [a.option_strings[0] for a in build_parser()._actions if a.option_strings
             and a.option_strings[0] != "-h"]
    missing = [f for f in flags if f"`{f}`" not in README]
    assert not missing, f"flags missing from the README's table: {missing}"


def test_readme_shell_examples_are_the_tested_ones() -> None:
    """Shell blocks past the quickstart are copies of blocks that docs/*.md tests run."""
    docs = "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    core = README.split("## REST API")[0]
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        if block in core:
            continue
        lines = [line for line in block.splitlines() if line.strip()]
        missing = [line for line in lines if line not in docs]
        assert not missing, f"README shell lines not in any tested doc: {missing}"
