"""A new user following the seed guide word by word, with ``wkr_celery`` for ``wkr_serving``:
the commands typed as the guide prints them (console scripts, from the folder it names), its
client code as written, and the mistakes a newcomer makes on the way, each of which must be
one line that says what to do.

Everything runs on 127.0.0.1, on free ports, with the embedded Redis.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .helpers import ROOT
from .scripts import script, user_env


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
