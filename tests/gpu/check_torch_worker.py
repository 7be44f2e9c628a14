"""GPU check of examples/torch_worker.py: ``-device_map 0`` puts the model on ``cuda:0``.

Not collected by pytest (no GPU in CI). On a machine with an NVIDIA GPU, from the repository root,
in a venv with a CUDA build of torch (PyPI's default Linux wheel is one)::

    pip install -e '.[frameworks]' && python tests/gpu/check_torch_worker.py

It runs the example as the docs show, from ``examples/``: the setup step, then
``wkr-serving-start torch_worker.Worker -model_dir DIR -device_map 0 -protocol npy`` on free
loopback ports. It checks that the worker was pinned to GPU 0 (``CUDA_VISIBLE_DEVICES=0`` in its
heartbeat), that the model sits on CUDA (the ``torch_on_cuda`` statistic the worker records),
and that every answer matches torch run directly on the CPU (atol 1e-3: cuBLAS may use TF32).
Exit status 0 and a last line ``PASS`` when all hold; ``FAIL: why`` and 1 otherwise.
Every wait has a deadline; the whole check takes well under 2 minutes once torch is installed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # examples.torch_worker, for the direct run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fail(why: str) -> None:
    print(f"FAIL: {why}", flush=True)
    raise SystemExit(1)


def live_workers(port: int) -> list[dict]:
    import redis

    from wkr_celery.broker import ServiceRegistry
    from wkr_celery.keys import ServiceKeys

    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        return list(ServiceRegistry(client, ServiceKeys("default")).live_workers().values())
    except redis.ConnectionError:
        return []
    finally:
        client.close()


def main() -> None:
    import torch

    if not torch.cuda.is_available():
        fail(f"torch {torch.__version__} sees no GPU; this check needs one and a CUDA build")
    from examples.torch_worker import load_model
    from wkr_celery.client import WKRClient

    bin_dir = Path(sys.executable).parent
    start = shutil.which("wkr-serving-start", path=str(bin_dir))
    if start is None:
        fail(f"wkr-serving-start is not in {bin_dir}: pip install -e '.[frameworks]' first")
    model_dir = Path(tempfile.mkdtemp(prefix="torch-model-"))
    subprocess.run([sys.executable, "torch_worker.py", "--setup", str(model_dir)],
                   cwd=ROOT / "examples", check=True, timeout=300)
    port = free_port()
    log = open(model_dir / "service.log", "wb")  # noqa: SIM115 - closed at the end
    service = subprocess.Popen(
        [str(start), "torch_worker.Worker", "-model_dir", str(model_dir), "-device_map", "0",
         "-protocol", "npy", "-port_in", str(port), "-port_out", str(port)],
        cwd=ROOT / "examples", stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        client = WKRClient(port=port, port_out=port, connect_timeout=180)
        inputs = np.random.default_rng(7).standard_normal((256, 16, 32)).astype(np.float32)
        answers = np.stack(list(client.encode_many(inputs, max_inflight=64)))
        client.close()
        with torch.inference_mode():
            expected = load_model(torch, str(model_dir))(torch.from_numpy(inputs)).numpy()
        error = float(np.abs(answers - expected).max())
        print(f"max |served - torch on CPU| = {error:.2e}", flush=True)
        if not error <= 1e-3:
            fail(f"answers differ from torch run directly by {error}")
        deadline = time.monotonic() + 30
        beats = live_workers(port)
        while not (beats and "torch_on_cuda" in beats[0].get("statistics", {})):
            if time.monotonic() > deadline:
                fail(f"no heartbeat with torch_on_cuda in 30 s: {beats}")
            time.sleep(0.2)
            beats = live_workers(port)
        beat = beats[0]
        print(f"worker: device_id={beat['device_id']} "
              f"CUDA_VISIBLE_DEVICES={beat['cuda_visible_devices']!r} "
              f"statistics={beat['statistics']}", flush=True)
        if beat["device_id"] != 0 or beat["cuda_visible_devices"] != "0":
            fail("the worker was not pinned to GPU 0")
        if beat["statistics"]["torch_on_cuda"]["max"] != 1:
            fail("the model is not on CUDA")
    finally:
        if service.poll() is None:
            service.send_signal(signal.SIGINT)
            try:
                service.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(service.pid, signal.SIGKILL)
                service.wait(10)
        log.close()
        print((model_dir / "service.log").read_text(errors="replace")[-2000:], flush=True)
    if service.returncode != 0:
        fail(f"wkr-serving-start exited {service.returncode} on Ctrl+C")
    print("PASS", flush=True)


if __name__ == "__main__":
    main()
