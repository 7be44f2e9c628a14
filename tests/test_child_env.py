"""The one builder of a child process's environment (workers' extras, decentralize units)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from wkr_celery.child_env import build_child_env
from wkr_celery.config import Settings
from wkr_celery.rest.extras import child_env as extras_env


def test_a_child_imports_from_the_users_folder_first_and_reads_the_settings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.setenv("WKR_BATCH_SIZE", "3")  # the parent's, replaced by the settings'
    monkeypatch.setenv("USER_THING", "kept")
    (tmp_path / "usermod.py").write_text("WHERE = 'user folder'\n")
    env = build_child_env(import_first=[str(tmp_path)], settings=Settings(batch_size=9),
                          extra={"WKR_WORKER_ID": "w1"})

    assert env["PYTHONPATH"] == os.pathsep.join([str(tmp_path), "/elsewhere"])
    assert env["PYTHONUNBUFFERED"] == "1" and env["USER_THING"] == "kept"
    child = subprocess.run(
        [sys.executable, "-c", "import usermod, os; from wkr_celery.config import Settings; "
         "print(usermod.WHERE, Settings.from_env().batch_size, os.environ['WKR_WORKER_ID'])"],
        env=env, capture_output=True, text=True, timeout=60, cwd="/")
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["user", "folder", "9", "w1"]


def test_flower_beside_the_workers_gets_its_json_api_unless_it_has_auth(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWER_UNAUTHENTICATED_API", raising=False)
    assert extras_env(Settings(flower_port=5555))["FLOWER_UNAUTHENTICATED_API"] == "true"
    assert "FLOWER_UNAUTHENTICATED_API" not in extras_env(
        Settings(flower_port=5555, flower_basic_auth="u:p"))
    assert extras_env(Settings())["PYTHONPATH"].split(os.pathsep)[0] == os.getcwd()
