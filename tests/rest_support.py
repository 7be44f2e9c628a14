"""One shared stack for the REST tests: real services, real uvicorn processes, real Flower.

- ``calc``: ``wkr-serving-start tests.rest_workers.Calc -http_port … -flower_port …`` (obj
  protocol; the REST API and Flower are children of the supervisor), small limits so the
  413/503 paths are cheap to reach.
- ``keyed``: ``wkr-serving-http`` on its own, with an API key, against a ``workers.linear``
  service (npy protocol) started without a REST port.
- ``ghost``: ``wkr-serving-http`` for a service name no worker serves.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from wkr_celery.redis_embedded import EmbeddedRedis

from .helpers import ROOT, Service, free_port, start_service, wait_answering
from .scripts import script, user_env

API_KEY = "s3cret-key"
CALC_LIMITS = {"http_max_body": 4000, "max_payload": 2000, "max_queue": 8, "batch_size": 4}


@dataclass
class Api:
    """A REST API under test: its base URL and an HTTP client."""

    url: str
    name: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url, headers=self.headers, timeout=30.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_up(self) -> None:
        wait_answering(self.http, "/healthz", 60, what=f"REST API {self.url}; log:\n{self.log()}")

    def close(self) -> None:
        self.http.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class Stack:
    calc: Api
    keyed: Api
    ghost: Api
    calc_service: Service
    linear_service: Service
    flower_port: int
    broker_url: str


def start_rest(name: str, broker_url: str, log_dir: Path, *args: str,
               env: dict[str, str] | None = None) -> Api:
    """``wkr-serving-http -name … -broker_url … -http_port <free>`` in a subprocess: the
    console script, typed in the checkout's root with no ``PYTHONPATH``."""
    port = free_port()
    log_path = log_dir / f"rest-{name}-{port}.log"
    command = [script("wkr-serving-http"), "-name", name,
               "-broker_url", broker_url, "-result_url", broker_url, "-http_port", str(port),
               *args]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL,
                                env=user_env(env))
    headers = {"X-API-Key": env["WKR_HTTP_API_KEY"]} if env and "WKR_HTTP_API_KEY" in env else {}
    return Api(f"http://127.0.0.1:{port}", name, log_path, proc, headers)


@pytest.fixture(scope="session")
def stack(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    log_dir = tmp_path_factory.mktemp("rest")
    url = redis_server.url
    http_port, flower_port = free_port(), free_port()
    calc_name, linear_name = f"calc{uuid.uuid4().hex[:8]}", f"lin{uuid.uuid4().hex[:8]}"
    limits = [a for k, v in CALC_LIMITS.items() for a in (f"-{k}", str(v))]
    calc_service = start_service(
        calc_name, url, url, log_dir, "tests.rest_workers.Calc",
        ["-http_port", str(http_port), "-flower_port", str(flower_port), "-prefetch", "1",
         "-batch_timeout", "1", "-task_events", *limits])
    linear_service = start_service(linear_name, url, url, log_dir, "workers.linear.Worker",
                                   ["-protocol", "npy"])
    keyed = start_rest(linear_name, url, log_dir, env={"WKR_HTTP_API_KEY": API_KEY})
    ghost = start_rest(f"ghost{uuid.uuid4().hex[:8]}", url, log_dir)
    calc = Api(f"http://127.0.0.1:{http_port}", calc_name, calc_service.log_path)
    apis = [calc, keyed, ghost]
    try:
        for api in apis:
            api.wait_up()
        calc_service.wait_workers(1)
        linear_service.wait_workers(1)
        yield Stack(calc, keyed, ghost, calc_service, linear_service, flower_port, url)
    finally:
        for api in apis:
            api.close()
        calc_service.stop()
        linear_service.stop()


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The ``error`` object of a JSON error answer (fails the test if it is not one)."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["status"] == response.status_code
    assert "Traceback" not in response.text
    return body["error"]
