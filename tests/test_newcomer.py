"""What a new user meets first, the way they meet it: the quickstart's two embedded Redis ports,
a producer that knows only the broker, and the input contract in the README's own words.

The service is ``wkr-serving-start`` as the user types it (the venv's console script, run from
the repository root where ``workers/`` lives), on free ports, with no broker URL: it runs the
embedded Redis on ``-port_in`` and stores results on ``-port_out``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from wkr_celery import ConfigError, InputError, InvalidInput, WKRClient
from wkr_celery.broker import ServiceRegistry
from wkr_celery.connections import with_local_password
from wkr_celery.keys import ServiceKeys
from workers.linear import make_weights

from .helpers import ROOT, PortForward, free_port, stop_gracefully, wait_answering, wait_until

BIN = Path(sys.executable).parent


def readme_input_message() -> str:
    """The refusal the README quotes for a wrong input shape."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"each with the same words: `([^`]+)`", text)
    assert match, "README no longer quotes the input refusal"
    return match.group(1)


class Quickstart:
    """``wkr-serving-start workers.linear.Worker -port_in P -port_out Q`` in its own session."""

    def __init__(self, tmp_path: Path, one_redis: bool = False) -> None:
        self.port_in = free_port()
        self.port_out = self.port_in if one_redis else free_port()
        self.log_path = tmp_path / "service.log"
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "wkr-serving-start"), "workers.linear.Worker", "-num_worker", "1",
                 "-port_in", str(self.port_in), "-port_out", str(self.port_out)],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=_user_env())
        self.client = WKRClient(port=self.port_in, port_out=self.port_out, connect_timeout=60)

    @property
    def broker_url(self) -> str:
        return f"redis://127.0.0.1:{self.port_in}/0"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.client.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"service did not stop; log:\n{self.log()}") from None


def _user_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH, no WKR_* variables of the test run."""
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONPATH" and not k.startswith("WKR_")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quickstart]:
    service = Quickstart(tmp_path_factory.mktemp("quickstart"))
    yield service
    service.stop()


@pytest.fixture(scope="module")
def one_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quickstart]:
    """The quickstart with ``-port_out`` equal to ``-port_in``: one Redis for both."""
    service = Quickstart(tmp_path_factory.mktemp("one_redis"), one_redis=True)
    yield service
    service.stop()


def test_send_task_with_only_the_broker_url_finds_the_results_on_port_out(
        quickstart: Quickstart, tmp_path: Path) -> None:
    script = tmp_path / "producer.py"
    script.write_text(
        "import numpy as np\n"
        "from wkr_celery import app\n"
        "x = np.ones(512, dtype=np.float32)\n"
        "result = app.send_task('wkr_celery.predict', args=[x])\n"
        "y = result.get(timeout=30)\n"
        "assert app.AsyncResult(result.id).get(timeout=10).shape == y.shape\n"
        "np.save(__import__('sys').argv[1], y)\n")
    out = tmp_path / "y.npy"
    done = subprocess.run([sys.executable, str(script), str(out)], cwd=tmp_path, timeout=90,
                          capture_output=True, text=True,
                          env=_user_env(WKR_BROKER_URL=quickstart.broker_url))
    assert done.returncode == 0, done.stdout + done.stderr
    expected = np.tanh(np.ones(512, np.float32) @ make_weights())
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-6)


def test_client_with_only_the_broker_url_finds_the_results_on_port_out(
        quickstart: Quickstart) -> None:
    with WKRClient(broker_url=quickstart.broker_url, connect_timeout=30) as client:
        assert client.result_url == f"redis://127.0.0.1:{quickstart.port_out}/0"
        assert client.encode(np.zeros(512, np.float32)).result(timeout=30).shape == (128,)


def test_rest_without_port_out_serves_and_is_ready_only_with_its_result_store(
        quickstart: Quickstart, tmp_path: Path) -> None:
    def start_http(*flags: str) -> tuple[subprocess.Popen[bytes], httpx.Client]:
        port = free_port()
        proc = subprocess.Popen(
            [str(BIN / "wkr-serving-http"), "-port_in", str(quickstart.port_in),
             "-http_port", str(port), *flags], cwd=tmp_path, env=_user_env(),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

        wait_answering(http, "/healthz", 60, what="wkr-serving-http")
        return proc, http

    found, found_http = start_http()
    wrong, wrong_http = start_http("-result_url", f"redis://127.0.0.1:{free_port()}/0")
    try:
        assert found_http.get("/readyz").status_code == 200
        answer = found_http.post("/encode", json={"id": 1, "data": [0.0] * 512})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["result"]) == 128

        not_ready = wrong_http.get("/readyz")
        assert not_ready.status_code == 503
        assert "result Redis" in not_ready.json()["reason"]
    finally:
        for proc, http in ((found, found_http), (wrong, wrong_http)):
            http.close()
            proc.terminate()
            proc.wait(15)


def test_wkr_serving_http_help_describes_itself_not_wkr_serving_start() -> None:
    shown = subprocess.run([str(BIN / "wkr-serving-http"), "--help"], capture_output=True,
                           text=True, timeout=60, cwd=ROOT, env=_user_env())
    assert shown.returncode == 0, shown.stderr
    usage = shown.stdout.split("\n\n")[0]
    assert usage.startswith("usage: wkr-serving-http ") and "[worker_class]" in usage, usage
    assert "REST API" in shown.stdout and "WKRHardWorker subclass" not in shown.stdout
    assert "-http_port" in shown.stdout and "-name" in shown.stdout and "-cors" in shown.stdout
    for worker_only in ("-num_worker", "-batch_size", "-device_map", "-model_dir", "-data_dir"):
        assert worker_only not in shown.stdout, f"{worker_only} is listed: {shown.stdout}"


def test_wkr_serving_http_warns_at_start_when_its_service_has_no_worker(
        quickstart: Quickstart, tmp_path: Path) -> None:
    """Without -name it serves the service named "default"; one that no worker serves is said
    at start (the API still starts), not only as a 503 on every request."""
    assert quickstart.client.encode(np.zeros(512, np.float32)).result(timeout=60) is not None

    def start_http(*flags: str) -> str:
        port, said = free_port(), tmp_path / f"http-{len(flags)}.log"
        with open(said, "wb") as out:
            proc = subprocess.Popen(
                [str(BIN / "wkr-serving-http"), "-port_in", str(quickstart.port_in),
                 "-http_port", str(port), *flags], cwd=tmp_path, env=_user_env(),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                wait_answering(http, "/healthz", 60, what=f"wkr-serving-http {flags}: {said.read_text()}")
        finally:
            proc.terminate()
            proc.wait(15)
        return said.read_text()

    served = start_http()  # the quickstart's service is "default": its worker is alive
    assert "warning" not in served, served
    ghost = start_http("-name", "nosuch")
    assert "warning: no worker of service 'nosuch' is alive" in ghost, ghost


def test_wrong_shape_is_refused_in_the_readme_words_by_client_and_worker_under_obj(
        quickstart: Quickstart) -> None:
    message = readme_input_message()
    assert quickstart.client.server_config["protocol"] == "obj"

    with pytest.raises(InputError) as refused:
        quickstart.client.encode(np.ones((4, 5), np.float32))
    assert str(refused.value).endswith(message)

    # The worker refuses the same input when it arrives by another door (checks off here).
    unchecked = WKRClient(port=quickstart.port_in, port_out=quickstart.port_out,
                          ignore_all_checks=True)
    unchecked.spec = type(unchecked.spec)()  # a client that knows no contract
    try:
        with pytest.raises(InvalidInput) as failed:
            unchecked.encode(np.ones((4, 5), np.float32)).result(timeout=30)
        assert message in str(failed.value)
    finally:
        unchecked.close()


def test_array_like_inputs_are_checked_as_arrays_under_obj(quickstart: Quickstart) -> None:
    client = quickstart.client
    x = np.linspace(-1, 1, 512, dtype=np.float32)
    y = client.encode(x.tolist()).result(timeout=30)
    np.testing.assert_allclose(y, np.tanh(x @ make_weights()), rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match=r"input has shape \(4,\); this service takes \(512,\)"):
        client.encode([1.0, 2.0, 3.0, 4.0])
    with pytest.raises(InputError, match=r"input is dict; this service takes arrays of shape"):
        client.encode({"x": 1})
    with pytest.raises(InputError, match="input has dtype float64; this service takes float32"):
        client.encode(np.ones(512))


def test_a_timeout_or_priority_of_the_wrong_type_is_refused_naming_it(
        quickstart: Quickstart) -> None:
    client, x = quickstart.client, np.ones(512, np.float32)
    with pytest.raises(InputError, match=r"timeout must be a number of seconds, got '5'"):
        client.encode(x, timeout="5")  # type: ignore[arg-type]
    for wrong in (True, 2.5):  # not silently level 1 or 2
        with pytest.raises(ValueError, match=rf"priority {wrong!r} is not one of"):
            client.encode(x, priority=wrong)  # type: ignore[arg-type]
    # numpy's numbers are numbers
    expected = np.tanh(x @ make_weights())
    answer = client.encode(x, timeout=np.float32(30), priority=np.int64(1)).result(timeout=30)
    np.testing.assert_allclose(answer, expected, rtol=1e-4, atol=1e-5)


def test_a_port_out_that_is_not_where_the_service_stores_results_fails_at_once_naming_both(
        quickstart: Quickstart) -> None:
    with pytest.raises(ConfigError) as refused:
        WKRClient(port=quickstart.port_in, port_out=quickstart.port_in, connect_timeout=30)
    said = str(refused.value)
    assert f"redis://127.0.0.1:{quickstart.port_out}/0" in said
    assert f"redis://127.0.0.1:{quickstart.port_in}/0" in said
    assert f"pass port_out={quickstart.port_out}" in said and "leave port_out out" in said
    with pytest.raises(ConfigError, match=f"127.0.0.1:{quickstart.port_out}/0"):
        WKRClient(broker_url=quickstart.broker_url, result_url=quickstart.broker_url,
                  connect_timeout=30)


def test_a_result_port_mapped_to_another_number_is_the_same_redis_and_serves(
        quickstart: Quickstart) -> None:
    """The address check asks the servers when two addresses differ on one host: a port
    published under another number (here a forward in the test) reaches the same Redis."""
    results = with_local_password(f"redis://127.0.0.1:{quickstart.port_out}/0")
    with PortForward(quickstart.port_out) as mapped:
        mapped_url = results.replace(f":{quickstart.port_out}/", f":{mapped.port}/")
        with WKRClient(broker_url=quickstart.broker_url, result_url=mapped_url,
                       connect_timeout=30) as client:
            assert client.result_url == mapped_url
            assert client.encode(np.zeros(512, np.float32)).result(timeout=30).shape == (128,)


def test_a_client_that_names_no_port_out_reads_the_results_where_the_service_stores_them(
        quickstart: Quickstart, one_redis: Quickstart) -> None:
    for service in (quickstart, one_redis):
        with WKRClient(port=service.port_in, connect_timeout=60) as client:
            assert client.result_url == f"redis://127.0.0.1:{service.port_out}/0"
            assert client.encode(np.zeros(512, np.float32)).result(timeout=30).shape == (128,)


def test_the_default_result_port_against_a_one_redis_service_names_the_port_it_uses(
        one_redis: Quickstart) -> None:
    with pytest.raises(ConfigError) as refused:
        WKRClient(port=one_redis.port_in, port_out=8998, connect_timeout=60)
    assert f"pass port_out={one_redis.port_in}" in str(refused.value)


def _hand_worker(service: Quickstart, tmp_path: Path, **env: str) -> subprocess.Popen[bytes]:
    """``celery -A wkr_celery worker`` as the README starts one by hand beside the service
    (no ``--pool``: the app's own is solo)."""
    with open(tmp_path / "hand.log", "wb") as log:
        return subprocess.Popen(
            [str(BIN / "celery"), "-A", "wkr_celery", "worker", "-n", "wkr.default.9@%h"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=_user_env(
                WKR_WORKER_CLASS="workers.linear.Worker", WKR_NAME="default",
                WKR_BROKER_URL=service.broker_url, WKR_DEVICE_MAP="-1", **env))


def test_a_worker_started_by_hand_answers_through_the_services_result_redis(
        quickstart: Quickstart, tmp_path: Path) -> None:
    hand = _hand_worker(quickstart, tmp_path)
    registry = ServiceRegistry(redis.Redis.from_url(with_local_password(quickstart.broker_url)),
                               ServiceKeys("default"))
    log = tmp_path / "hand.log"
    try:
        def its_beat() -> dict[str, object] | None:
            beats = list(registry.live_workers().values())
            return next((b for b in beats if b["pid"] == hand.pid), None)

        wait_until(lambda: its_beat() or hand.poll() is not None, 90,
                   what=f"the hand-started worker's heartbeat; log:\n{log.read_text()}")
        assert hand.poll() is None, log.read_text()
        assert "(solo)" in log.read_text(), "not the solo pool: " + log.read_text()
        assert registry.info()["result_store"] == f"port:{quickstart.port_out}"
        with WKRClient(broker_url=quickstart.broker_url, connect_timeout=30) as client:
            def answered_one_more() -> bool:  # every answer comes, whoever computed it
                assert client.encode(np.zeros(512, np.float32)).result(timeout=30).shape == (128,)
                beat = its_beat()
                return beat is not None and int(str(beat["requests"])) > 0

            wait_until(answered_one_more, 60, what="the hand-started worker to answer requests")
    finally:
        stop_gracefully(hand)
    assert registry.info()["result_store"] == f"port:{quickstart.port_out}"


def test_a_worker_started_by_hand_with_another_result_redis_refuses_to_start(
        quickstart: Quickstart, tmp_path: Path) -> None:
    hand = _hand_worker(quickstart, tmp_path, WKR_RESULT_URL=quickstart.broker_url)
    try:
        hand.wait(90)
    finally:
        stop_gracefully(hand)
    said = (tmp_path / "hand.log").read_text(errors="replace")
    assert hand.returncode != 0, said
    assert f"stores its results on redis://127.0.0.1:{quickstart.port_out}/0" in said
    assert f"WKR_RESULT_URL=redis://127.0.0.1:{quickstart.port_out}/0" in said
