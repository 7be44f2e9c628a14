"""The REST API under ``wrk``: ``/healthz``, ``/encode`` msgpack and ``/encode`` JSON.

A Python load generator saturates before the API does on a small machine, so this uses ``wrk``
(Debian: ``apt-get install wrk``), a C load generator, with a Lua script for the POST bodies. The
service is ``wkr-serving-start benchmarks.workers.Tiny -http_port P`` on a fresh embedded Redis;
the input is one float32 (512,) array, sent as msgpack-numpy (``msgpack.packb(obj,
default=msgpack_numpy.encode)``, as docs/rest.md says) or as a JSON list of 512 numbers. Before
``wrk`` runs, one request of each kind is sent with ``urllib`` and its answer checked against
``numpy.tanh(x @ W)``; ``wrk``'s count of non-2xx answers must be zero.

``-http_workers N`` (several API processes on one port) is run for each N in ``--http-workers``
when the service's ``--help`` lists :data:`HTTP_WORKERS_FLAG`; otherwise the run says so and
measures the single API process only.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

HTTP_WORKERS_FLAG = "-http_workers"  # the hook: the flag that runs N API processes on one port
ENDPOINTS = ("healthz", "msgpack", "json")
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk_binary(name: str = "wrk") -> str | None:
    """The wrk to run (``--wrk``: a name on PATH or a path), or ``None`` if there is none."""
    return shutil.which(name)


def http_workers_supported() -> bool:
    """Whether this wkr-celery's service takes :data:`HTTP_WORKERS_FLAG`."""
    text = subprocess.run([sys.executable, "-m", "wkr_celery.server.cli", "--help"],
                          capture_output=True, text=True, timeout=60).stdout
    return re.search(re.escape(HTTP_WORKERS_FLAG) + r"\b", text) is not None


def bodies(x: np.ndarray) -> dict[str, tuple[str, bytes]]:
    """``{endpoint: (content type, body)}`` for the POSTs."""
    import msgpack
    import msgpack_numpy

    packed = msgpack.packb({"id": 1, "data": x}, default=msgpack_numpy.encode)
    return {"msgpack": ("application/msgpack", packed),
            "json": ("application/json", json.dumps({"id": 1, "data": x.tolist()}).encode())}


def check_answers(base: str, x: np.ndarray, expected: np.ndarray) -> None:
    """One request of each kind, its answer checked; raises with what was wrong."""
    import msgpack
    import msgpack_numpy

    for endpoint, (ctype, body) in bodies(x).items():
        request = urllib.request.Request(f"{base}/encode", data=body,
                                         headers={"Content-Type": ctype})
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
        answer = (msgpack.unpackb(raw, object_hook=msgpack_numpy.decode)
                  if endpoint == "msgpack" else json.loads(raw))
        got = np.asarray(answer["result"], dtype=np.float32)
        if got.shape != expected.shape or not np.allclose(got, expected, atol=1e-4):
            raise RuntimeError(f"/encode {endpoint}: wrong answer {str(answer)[:200]}")


def wait_ready(base: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{base}/readyz not 200 within {timeout:.0f}s")
        time.sleep(0.1)


def lua_script(path: Path, ctype: str, body_file: Path) -> Path:
    path.write_text("wrk.method = \"POST\"\n"
                    f"wrk.headers[\"Content-Type\"] = \"{ctype}\"\n"
                    f"local f = assert(io.open([==[{body_file}]==], \"rb\"))\n"
                    "wrk.body = f:read(\"*a\")\nf:close()\n")
    return path


def parse_wrk(text: str) -> dict[str, Any]:
    """Requests/s, latency percentiles (ms), non-2xx answers and socket errors from wrk's text."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    found: dict[str, Any] = {"rps": float(rate.group(1)) if rate else float("nan")}
    for pct in ("50", "90", "99"):
        hit = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        found[f"p{pct}_ms"] = float(hit.group(1)) * _UNITS[hit.group(2)] if hit else float("nan")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    found["non_2xx"] = int(bad.group(1)) if bad else 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    found["socket_errors"] = sum(int(v) for v in sock.groups()) if sock else 0
    total = re.search(r"(\d+) requests in", text)
    found["requests"] = int(total.group(1)) if total else 0
    return found


def run_wrk(wrk: str, url: str, connections: int, seconds: float,
            script: Path | None) -> dict[str, Any]:
    threads = 1 if connections < 2 else 2
    command = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s",
               "--latency", "--timeout", "10s", *(["-s", str(script)] if script else []), url]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    found = parse_wrk(proc.stdout)
    found["ok"] = proc.returncode == 0 and found["non_2xx"] == 0 and found["requests"] > 0
    if not found["ok"]:
        found["error"] = (proc.stdout + proc.stderr)[-500:]
    return found


def measure(http_workers: int, args: Any, run_dir: Path) -> dict[str, Any]:
    """One service with ``http_workers`` API processes (1: the flag is not passed); every
    endpoint at every connection count."""
    from wkr_celery.redis_embedded import EmbeddedRedis

    from .scenarios import Pool
    from .systems import WKRSystem, free_port

    wrk = wrk_binary(args.wrk)
    if wrk is None:
        raise RuntimeError(f"wrk not found as {args.wrk!r}")
    record: dict[str, Any] = {"http_workers": http_workers, "ok": False, "error": None,
                              "points": {}}
    port = free_port()
    extra = ("-http_port", str(port),
             *((HTTP_WORKERS_FLAG, str(http_workers)) if http_workers > 1 else ()))
    redis_server = EmbeddedRedis(free_port()).start()
    system = WKRSystem("tiny", args.http_service_workers, args.batch_size, redis_server.url,
                       run_dir, extra_args=extra)
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        system.start(timeout=90)
        wait_ready(base, 60)
        pool = Pool.make(workload="tiny")
        check_answers(base, pool.inputs[0], pool.expected[0])
        scripts: dict[str, Path | None] = {"healthz": None}
        for endpoint, (ctype, body) in bodies(pool.inputs[0]).items():
            body_file = run_dir / f"{endpoint}.body"
            body_file.write_bytes(body)
            scripts[endpoint] = lua_script(run_dir / f"{endpoint}.lua", ctype, body_file)
        for connections in args.http_connections:
            for endpoint in ENDPOINTS:
                url = f"{base}/healthz" if endpoint == "healthz" else f"{base}/encode"
                record["points"][f"{endpoint}@{connections}"] = run_wrk(
                    wrk, url, connections, args.http_seconds, scripts[endpoint])
        failed = [k for k, v in record["points"].items() if not v["ok"]]
        record["ok"] = not failed
        if failed:
            record["error"] = "; ".join(f"{k}: {record['points'][k]['error']}" for k in failed)
    except Exception as exc:  # one failing run must not stop the others
        record["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        system.stop()
        redis_server.stop()
    record["seconds"] = round(time.monotonic() - started, 1)
    return record
