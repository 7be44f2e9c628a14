"""``docker-compose.yml`` without a Docker engine: the file is checked against the Compose
Specification's JSON schema, and each service's ``command`` runs here as a local process with
the service's own environment (a loopback Redis stands in for the ``redis`` service)."""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import yaml

from wkr_celery.client import WKRClient
from wkr_celery.config import Settings
from workers.linear import make_weights

from .helpers import ROOT, free_port, wait_until
from .scripts import script, user_env

COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
GPU_BLOCK = re.compile(r"^    # deploy:\n(?:    #.*\n)+", re.M)
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def compose(text: str | None = None) -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text() if text is None else text)


def validator() -> jsonschema.Draft201909Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


def interpolate(value: object, variables: Mapping[str, str]) -> str:
    """Compose's ``${NAME:-default}`` substitution, from ``variables`` (the shell / .env)."""
    return INTERPOLATION.sub(lambda m: variables.get(m[1]) or (m[2] or ""), str(value))


def test_the_compose_file_is_valid_against_the_compose_specification() -> None:
    check = validator()
    assert not [e.message for e in check.iter_errors(compose())]
    text = COMPOSE.read_text()
    gpu = GPU_BLOCK.search(text)
    assert gpu is not None, "the worker's GPU reservation is there, commented"
    enabled = compose(text.replace(gpu[0], re.sub(r"^    # ?", "    ", gpu[0], flags=re.M)))
    assert not list(check.iter_errors(enabled))
    devices = enabled["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    broken = compose()
    broken["services"]["worker"]["healthcheck"]["retries"] = "three"
    broken["services"]["api"]["restart_policy"] = "always"
    assert len(list(check.iter_errors(broken))) == 2, "the schema can fail"


def test_every_service_has_a_health_check_and_a_restart_policy_and_reads_settings_from_env(
) -> None:
    services = compose()["services"]
    assert set(services) == {"redis", "worker", "api", "flower"}
    assert services["redis"]["command"][1:] == ["--appendonly", "yes", "--appendfsync",
                                                "everysec"]
    assert services["redis"]["image"].startswith("redis:")
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"][0] == "CMD", name
        env = {k: interpolate(v, {}) for k, v in service.get("environment", {}).items()}
        Settings.from_env(env)  # an unknown or invalid WKR_ variable raises
        if name != "redis":
            assert service["build"]["context"] == "." and service["image"] == "wkr-celery:latest"
            assert env["WKR_BROKER_URL"] == "redis://redis:6379/0"
            assert not [w for w in service["command"][1:] if w.startswith("-") and w != "-A"]
    assert services["worker"]["command"] == ["wkr-serving-start", "workers.linear.Worker"]
    assert "${WKR_NUM_WORKER:-" in services["worker"]["environment"]["WKR_NUM_WORKER"]
    assert services["api"]["command"] == ["wkr-serving-http"]
    assert services["api"]["ports"] == ["127.0.0.1:8900:8900"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+-slim$", dockerfile, re.M)
    assert re.search(r"^RUN pip install \.$", dockerfile, re.M)
    assert "COPY workers ./workers" in dockerfile


# Running the services' commands here ----------------------------------------------------------


def local_command(argv: list[str]) -> list[str]:
    """What the image's PATH would run: its ``python``, or a console script that ``pip install .``
    put on it (this venv's, run in the checkout's root as the image runs it in ``/app``)."""
    program, args = argv[0], argv[1:]
    return [sys.executable if program == "python" else script(program), *args]


class Stack:
    """The compose services as local processes: same commands, same environment."""

    def __init__(self, redis_url: str, tmp_path: Path) -> None:
        self.redis = redis_url.rsplit("/", 1)[0]  # redis://127.0.0.1:PORT
        self.ports = {"8900": str(free_port()), "5555": str(free_port())}
        self.variables = {"WKR_NAME": f"linear-{uuid.uuid4().hex[:8]}", "WKR_NUM_WORKER": "1"}
        self.services = compose()["services"]
        self.tmp = tmp_path
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def local(self, text: str) -> str:
        text = interpolate(text, self.variables).replace("redis://redis:6379", self.redis)
        text = text.replace("0.0.0.0", "127.0.0.1")
        for port, local in self.ports.items():
            text = re.sub(rf"\b{port}\b", local, text)
        return text

    def env(self, name: str) -> dict[str, str]:
        base = {k: v for k, v in user_env().items() if not k.startswith(("WKR_", "FLOWER_"))}
        own = {k: self.local(v) for k, v in self.services[name].get("environment", {}).items()}
        return {**base, **own}

    def start(self, name: str) -> subprocess.Popen[bytes]:
        argv = [self.local(word) for word in self.services[name]["command"]]
        with open(self.tmp / f"{name}.log", "wb") as out:
            self.procs[name] = subprocess.Popen(
                local_command(argv), cwd=ROOT, env=self.env(name), stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self.procs[name]

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def healthy(self, name: str) -> bool:
        """The service's own compose health check, run here."""
        test = [self.local(word) for word in self.services[name]["healthcheck"]["test"][1:]]
        done = subprocess.run(local_command(test), cwd=ROOT, env=self.env(name),
                              capture_output=True, timeout=60)
        return done.returncode == 0

    def wait_healthy(self, name: str, timeout: float = 90.0) -> None:
        wait_until(lambda: self.procs[name].poll() is None and self.healthy(name), timeout,
                   interval=0.5, what=f"{name} to pass its health check; log:\n{self.log(name)}")

    def url(self, port: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[port]}{path}"

    def stop(self) -> dict[str, int]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait(10)
        return codes


@pytest.fixture
def stack(redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    running = Stack(redis_url, tmp_path)
    yield running
    running.stop()


def linear_input(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(512).astype(np.float32)


def test_the_worker_service_runs_from_its_compose_command_and_serves(stack: Stack) -> None:
    stack.start("worker")
    stack.wait_healthy("worker")
    name = stack.variables["WKR_NAME"]
    url = stack.redis + "/0"
    with WKRClient(name=name, broker_url=url, result_url=url, connect_timeout=30) as client:
        assert client.protocol == "npy"
        x = linear_input()
        np.testing.assert_allclose(client.encode(x).result(30), np.tanh(x @ make_weights()),
                                   rtol=1e-5, atol=1e-6)
        assert len(client.server_status()["workers"]) == 1, "WKR_NUM_WORKER=1 from the shell"
    assert stack.stop()["worker"] == 0, "SIGTERM (stop_signal) stops it cleanly"


def test_flower_from_the_compose_file_lists_the_worker(stack: Stack) -> None:
    stack.start("worker")
    stack.start("flower")
    stack.wait_healthy("worker")
    stack.wait_healthy("flower")
    name = stack.variables["WKR_NAME"]

    def listed() -> list[str]:
        with urllib.request.urlopen(stack.url("5555", "/api/workers?refresh=1"), timeout=10) as r:
            return [node for node in json.load(r) if node.startswith(f"wkr.{name}.0@")]

    assert wait_until(listed, 30, interval=0.5, what="Flower to list the worker")


@pytest.mark.needs_rest
def test_the_compose_stack_answers_encode_through_the_rest_port(stack: Stack) -> None:
    if importlib.util.find_spec("wkr_celery.rest") is None:
        pytest.fail("wkr_celery.rest is missing: this test runs the compose `api` service "
                    "(wkr-serving-http) and needs the REST layer (issue 5) merged")
    stack.start("worker")
    stack.start("api")
    stack.wait_healthy("worker")
    stack.wait_healthy("api")
    x = linear_input(2)
    request = urllib.request.Request(
        stack.url("8900", "/encode"), data=json.dumps({"id": 7, "data": x.tolist()}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.load(response)
    if isinstance(answer, list):  # the REST layer may answer a one-item list
        (answer,) = answer
    assert answer["id"] == 7
    np.testing.assert_allclose(np.asarray(answer["result"], dtype=np.float32),
                               np.tanh(x @ make_weights()), rtol=1e-4, atol=1e-5)




# Scaling out: the first host's override and the file of every other worker host -------------

REQUIRED = re.compile(r"\$\{(\w+):\?[^}]*\}")


def test_the_scale_out_files_are_valid_and_every_worker_host_joins_the_same_service() -> None:
    check = validator()
    scale_out = yaml.safe_load((ROOT / "docker-compose.scale-out.yml").read_text())
    worker_host = yaml.safe_load((ROOT / "docker-compose.worker-host.yml").read_text())
    assert not [e.message for e in check.iter_errors(scale_out)]
    assert not [e.message for e in check.iter_errors(worker_host)]
    first = compose()["services"]
    # The first host: Redis published, with a password every service of the stack uses.
    redis_service = scale_out["services"]["redis"]
    assert redis_service["command"][:len(first["redis"]["command"])] == first["redis"]["command"]
    assert redis_service["command"][-2:] == ["--requirepass", "${REDIS_PASSWORD:?set REDIS_PASSWORD}"]
    assert redis_service["ports"] == ["${REDIS_PUBLISH:-6379}:6379"]
    assert set(scale_out["services"]) == set(first)
    for name in ("worker", "api", "flower"):
        url = scale_out["services"][name]["environment"]["WKR_BROKER_URL"]
        assert url == "redis://:${REDIS_PASSWORD:?set REDIS_PASSWORD}@redis:6379/0", name
    # Another host: the same image, command and service name, pointed at that Redis.
    (name, extra), = worker_host["services"].items()
    for key in ("image", "build", "command", "restart", "stop_signal", "healthcheck"):
        assert extra[key] == first["worker"][key], key
    env = {k: interpolate(REQUIRED.sub("redis://:pw@10.0.0.5:6379/0", str(v)), {})
           for k, v in extra["environment"].items()}
    settings = Settings.from_env(env)
    assert settings.name == interpolate(first["worker"]["environment"]["WKR_NAME"], {})
    assert settings.broker == "redis://:pw@10.0.0.5:6379/0"
    assert REQUIRED.fullmatch(extra["environment"]["WKR_BROKER_URL"]), "no default broker"
