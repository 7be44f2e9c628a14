"""The real-framework examples, run for real on the CPU as the docs show, answer as the framework
does when run directly in this process on the same weights.

``examples/torch_worker.py`` (PyTorch), ``examples/onnx_worker.py`` (ONNX Runtime, on the model the
torch example's setup step exports) and the benchmark's ``torch`` workload. They need the
``frameworks`` extra and fail, never skip, without it: ``pip install '.[frameworks]'``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wkr_celery import ConfigError
from wkr_celery.broker import ServiceRegistry
from wkr_celery.keys import ServiceKeys

from .doc_commands import Command, Session, Substitutions, make_project
from .helpers import ROOT, local_redis, wait_until
from .scripts import user_env
from .test_documented_commands import FRAMEWORKS_ONNX, FRAMEWORKS_TORCH, client_when_serving
from .test_documented_commands import commands_run_by as _commands_run_by

pytestmark = pytest.mark.frameworks

FRAMEWORK_MODULES = ("torch", "onnxruntime", "onnxscript")
INPUTS = np.random.default_rng(7).standard_normal((300, 16, 32)).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def frameworks_installed() -> None:
    missing = [m for m in FRAMEWORK_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: pip install '.[frameworks]' "
                    "(the frameworks tests fail, never skip, without it)")


def _command(test: str, *needles: str) -> Command:
    (found,) = [c for c in _commands_run_by(test) if all(n in c.text for n in needles)]
    return found


@pytest.fixture(scope="module")
def subs(tmp_path_factory: pytest.TempPathFactory) -> Substitutions:
    return Substitutions(tmp_path_factory.mktemp("frameworks"))


@pytest.fixture(scope="module")
def project(subs: Substitutions) -> Path:
    return make_project(subs.tmp)


@pytest.fixture
def session(subs: Substitutions, project: Path) -> Iterator[Session]:
    session = Session(subs, project)
    yield session
    session.close()


@pytest.fixture(scope="module")
def model_dir(subs: Substitutions, project: Path) -> Path:
    """The documented setup step, run once: seeded weights and their ONNX export."""
    session = Session(subs, project)
    try:
        printed = session.run(_command(FRAMEWORKS_TORCH.test, "--setup"), timeout=240)
    finally:
        session.close()
    found = subs.tmp / "tmp_torch-model"
    assert (found / "weights.pt").is_file() and (found / "model.onnx").is_file(), printed
    return found


def _torch_answers(model_dir: Path, inputs: np.ndarray) -> np.ndarray:
    import torch

    from examples.torch_worker import load_model

    with torch.inference_mode():
        out = load_model(torch, str(model_dir))(torch.from_numpy(inputs)).numpy()
    assert np.ptp(out, axis=0).max() > 0.1, "the model answers every input alike"
    return out


def _served(session: Session, command: Command, workers: int, loaded: str) -> np.ndarray:
    """Start ``command``; once all ``workers`` report ``loaded``, send every input with many in
    flight and return the answers in order."""
    service = session.start(command)
    client = client_when_serving(service, session.subs.port("8996"), session.subs.port("8998"))
    try:
        _statistics(session, workers, loaded)
        return np.stack(list(client.encode_many(INPUTS, max_inflight=64)))
    finally:
        client.close()


def _statistics(session: Session, workers: int, *keys: str) -> list[dict[str, Any]]:
    """The ``record_statistic`` figures of each live worker, once all of them report ``keys``."""
    client = local_redis(session.subs.port("8996"))
    registry = ServiceRegistry(client, ServiceKeys("default"))

    def reported() -> list[dict[str, Any]] | None:
        stats = [beat["statistics"] for beat in registry.live_workers().values()]
        return stats if len(stats) == workers and all(k in s for s in stats for k in keys) \
            else None

    try:
        return wait_until(reported, 30, what=f"{workers} workers reporting {keys}: "
                          f"{list(registry.live_workers().values())}")
    finally:
        client.close()


def test_the_documented_torch_service_answers_as_torch_run_directly(
        session: Session, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # wkr-serving-start's default: 1
    command = _command(FRAMEWORKS_TORCH.test, "torch_worker.Worker", "-num_worker 2")
    answers = _served(session, command, 2, "torch_threads")
    np.testing.assert_allclose(answers, _torch_answers(model_dir, INPUTS), rtol=1e-5, atol=1e-5)
    stats = wait_until(lambda: (lambda got: got if sum(s.get("batchsize", {}).get("sum", 0)
                                                       for s in got) == len(INPUTS) else None)(
        _statistics(session, 2, "torch_on_cuda")), 30, what="heartbeats counting every input")
    assert [s["torch_threads"]["max"] for s in stats] == [1, 1]
    assert [s["torch_on_cuda"]["max"] for s in stats] == [0, 0]
    assert max(s["batchsize"]["max"] for s in stats if "batchsize" in s) > 1, \
        "batches should reach predict whole"
    session.stop(session.services[0])


def test_the_documented_onnx_service_answers_as_onnxruntime_run_directly(
        session: Session, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice, kept per worker
    answers = _served(session, _command(FRAMEWORKS_ONNX.test, "onnx_worker.Worker"), 1,
                      "onnx_threads")
    direct = ort.InferenceSession(str(model_dir / "model.onnx"),
                                  providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(answers, direct.run(None, {"tokens": INPUTS})[0], rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(answers, _torch_answers(model_dir, INPUTS), atol=1e-4)
    (stats,) = _statistics(session, 1, "onnx_threads", "onnx_on_cuda")
    assert stats["onnx_threads"]["max"] == 2 and stats["onnx_on_cuda"]["max"] == 0
    session.stop(session.services[0])


def test_the_torch_worker_names_the_setup_step_when_its_weights_are_missing(
        tmp_path: Path) -> None:
    import torch

    from examples.torch_worker import Worker

    worker = Worker()
    envs = (torch, torch.device("cpu"), worker.new_logger())
    with pytest.raises(ConfigError, match=r"torch_worker\.py --setup"):
        worker.get_model(envs, str(tmp_path), "", str(tmp_path))
    with pytest.raises(ConfigError, match="-model_dir is empty"):
        worker.get_model(envs, "", "", str(tmp_path))


def test_the_torch_worker_refuses_a_gpu_its_process_cannot_see(tmp_path: Path) -> None:
    """GPU 1000 exists nowhere: pinned to it, torch sees no GPU, on any machine."""
    code = "from torch_worker import Worker; Worker().get_env(1000, '.')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "examples", env=user_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "ConfigError: -device_map 1000 asks for a GPU, but torch" in proc.stderr, proc.stderr
    assert "CUDA_VISIBLE_DEVICES='1000'" in proc.stderr, proc.stderr


def test_the_onnx_worker_refuses_a_gpu_without_a_cuda_build_of_onnxruntime() -> None:
    """The extra installs ``onnxruntime``, the CPU package: no CUDAExecutionProvider."""
    code = "from onnx_worker import Worker; Worker().get_env(0, '.')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "examples", env=user_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "has no CUDAExecutionProvider; install onnxruntime-gpu" in proc.stderr, proc.stderr


def test_the_benchmark_torch_workload_checks_every_answer_against_torch(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--workloads", "torch", "--systems",
         "wkr,naive", "--scenarios", "systems", "--requests", "200", "--latency-requests", "20",
         "--inflight", "32", "--sweep", "1,16", "--sweep-seconds", "0.3", "--out", str(out)],
        cwd=ROOT, env=user_env(), capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = json.loads((out / "results.json").read_text())["runs"]["torch"]
    assert sorted(runs) == ["naive", "wkr"]
    for key, record in runs.items():
        assert record["ok"], (key, record["error"])
        assert record["stream"]["answered"] == 200 and record["stream"]["wrong"] == 0, key
    assert runs["wkr"]["stream"]["mean_batch"] > 1
    assert (out / "throughput_torch.png").read_bytes()[:4] == b"\x89PNG"
    assert os.path.exists(out / "latency_cdf_torch.png")
