"""One service spread over several hosts survives losing a host, a partition and its Redis.

Hosts are Linux network namespaces the test makes itself (``tests/faults/namespaces.py``):
``redis`` runs redis-server on its address, ``gpu-a`` and ``gpu-b`` each run
``wkr-serving-start … -broker_url redis://<redis host>…`` with the same ``-name``, and
``client`` sends the load. No host's clock agrees with Redis's or another's (each runs with
``WKR_TEST_CLOCK_OFFSET``), and every request carries a timeout, so a deadline read on a host's
own clock would fail them. The test watches Redis through a Unix socket, outside every namespace.

Skipped only where namespaces cannot be made at all (not Linux, not root, no ``ip``); as root
on Linux, a namespace that cannot be made fails the test.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.faults.namespaces import (
    Host,
    HostRedis,
    Network,
    answers_ping,
    ip,
    start_redis,
    unavailable_reason,
)
from tests.helpers import ROOT, wait_until
from wkr_celery.broker import RequestQueue, ServiceRegistry
from wkr_celery.clock import TEST_OFFSET_ENV
from wkr_celery.keys import ServiceKeys, task_meta_key
from wkr_celery.messages import decode_meta, parse_request
from wkr_celery.redis_embedded import redis_server_binary

_REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")

VISIBILITY_TIMEOUT = 3
#: Seconds allowed past the visibility timeout for a sweep (every 2 heartbeats) and the
#: requeued requests' turn, on a shared 2-core machine.
SLACK = 10.0
#: Each host's clock offset from the true time, in seconds: no two agree.
SKEW = {"redis": 0.0, "gpu-a": -900.0, "gpu-b": 3600.0, "client": -1800.0}
LOAD = 4000
OUTAGE = 5.0
SERVE = [str(Path(sys.executable).parent / "wkr-serving-start"),
         "tests.faults.host_workers.HostDoubler", "-num_worker", "1", "-batch_size", "32",
         "-prefetch", "1", "-visibility_timeout", str(VISIBILITY_TIMEOUT)]


@dataclass
class ClientRun:
    """The client host's program, running; :meth:`report` waits for its report."""

    proc: subprocess.Popen[bytes]
    path: Path

    def all_sent(self) -> bool:
        return Path(f"{self.path}.sent").exists()

    def release(self) -> None:
        """Let a client started with ``-linger`` finish."""
        Path(f"{self.path}.release").touch()

    def report(self, timeout: float) -> list[dict[str, Any]]:
        code = self.proc.wait(timeout)
        assert code == 0, f"the client program exited with {code}"
        data = json.loads(self.path.read_text())
        assert data["pending"] == 0, f"{data['pending']} requests still pending in the client"
        return list(data["rows"])


@dataclass
class Cluster:
    """Four hosts, Redis on one, a service of the same name on ``gpu-a`` and ``gpu-b``."""

    net: Network
    redis: HostRedis
    name: str
    log_dir: Path

    def __post_init__(self) -> None:
        self.watcher = self.redis.watcher()
        self.queue = RequestQueue(self.watcher, ServiceKeys(self.name))
        self.registry = ServiceRegistry(self.watcher, ServiceKeys(self.name))

    def host(self, name: str) -> Host:
        return self.net[name]

    def serve(self, host: str) -> None:
        self.host(host).popen([*SERVE, "-name", self.name, "-broker_url", self.redis.url],
                              log=f"{host}.log", env={TEST_OFFSET_ENV: str(SKEW[host])})

    def workers(self) -> dict[str, tuple[str, int]]:
        """Live workers by host: (worker id, pid), from their heartbeats."""
        live = {}
        for wid, beat in self.registry.live_workers().items():
            live[self._host_of(beat["host"])] = (wid, int(beat["pid"]))
        return live

    def answered(self) -> int:
        """Requests the live workers have answered, by their heartbeats."""
        return sum(int(beat["requests"]) for beat in self.registry.live_workers().values())

    def _host_of(self, hostname: str) -> str:
        return next(h.name for h in self.net.hosts.values() if h.hostname == hostname)

    def wait_serving(self, *hosts: str, timeout: float = 60) -> dict[str, tuple[str, int]]:
        return wait_until(lambda: (lambda live: live if set(hosts) <= set(live) else None)(
            self.workers()), timeout, what=f"workers on {hosts}; logs:\n{self.logs()}")

    def send(self, count: int, label: str, *options: str) -> ClientRun:
        """Start the client host's program (``tests/faults/host_client.py``) sending ``count``."""
        path = self.log_dir / f"report-{label}.json"
        argv = [sys.executable, "tests/faults/host_client.py", str(path), self.redis.url,
                self.name, str(count), *options]
        proc = self.host("client").popen(argv, log=f"client-{label}.log",
                                         env={TEST_OFFSET_ENV: str(SKEW["client"])})
        return ClientRun(proc, path)

    def answered_ids(self) -> set[str]:
        """Task ids with a stored answer."""
        prefix = task_meta_key("")
        return {key.decode()[len(prefix):]
                for key in self.watcher.scan_iter(match=prefix + "*", count=1000)}

    def held(self, wid: str) -> set[str]:
        """Task ids in worker ``wid``'s inflight hash."""
        raws = self.watcher.hvals(self.queue.keys.inflight(wid))
        return {str(parse_request(raw).task_id) for raw in raws}

    def stored_host(self, task_id: str) -> str | None:
        """The hostname in the answer to ``task_id`` stored now (the last one stored)."""
        data = self.watcher.get(task_meta_key(task_id))
        return None if data is None else str(decode_meta(data)["result"][1])

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.log_dir.glob("*.log")))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    net = Network(("redis", "gpu-a", "gpu-b", "client"), tmp_path)
    made: Cluster | None = None
    try:
        served = start_redis(net["redis"], tmp_path)
        made = Cluster(net, served, f"h{uuid.uuid4().hex[:8]}", tmp_path)
        made.serve("gpu-a")
        made.serve("gpu-b")
        made.wait_serving("gpu-a", "gpu-b")
        yield made
    finally:
        if made is not None:
            made.watcher.close()
        net.close()


def _check_answers(rows: list[dict[str, Any]], count: int) -> None:
    """Every request answered once, with the right answer."""
    assert [r["n"] for r in rows] == list(range(count))
    _check_answers_of(rows)


def _check_answers_of(rows: list[dict[str, Any]]) -> None:
    count = len(rows)
    errors = [r for r in rows if "error" in r]
    assert errors == [], f"{len(errors)} of {count} requests failed, first: {errors[:3]}"
    wrong = [r for r in rows if r["result"][0] != 2 * r["n"]]
    assert wrong == [], f"{len(wrong)} wrong answers, first: {wrong[:3]}"


@pytest.mark.timeout(150)
def test_a_whole_host_killed_under_load_has_every_request_answered_by_the_other(
    cluster: Cluster,
) -> None:
    gpu_a_worker, _ = cluster.workers()["gpu-a"]
    run = cluster.send(LOAD, "kill")
    wait_until(lambda: run.all_sent() and cluster.held(gpu_a_worker), timeout=60,
               what="gpu-a holding requests with the whole load sent")
    killed_at = time.monotonic()
    killed = cluster.host("gpu-a").kill_all()
    held = cluster.held(gpu_a_worker)  # frozen now: these needed another host
    answered = cluster.answered_ids()  # everything else needs gpu-b from now on
    queued = cluster.queue.queue_length()

    rows = run.report(timeout=90)
    _check_answers(rows, LOAD)
    by_task = {r["task_id"]: r for r in rows}
    late = max(by_task[t]["settled"] for t in held) - killed_at
    last = max(r["settled"] for r in rows) - killed_at
    print(f"\nkilled {len(killed)} processes of gpu-a holding {len(held)} requests, "
          f"{queued} queued; its requests answered {late:.1f} s after, the last of all "
          f"{last:.1f} s after (visibility timeout {VISIBILITY_TIMEOUT} s)")
    assert held, "gpu-a held no request when killed; the test proved nothing"
    assert len(killed) >= 2, f"killed only {killed}: the supervisor and its worker run there"
    assert {by_task[t]["result"][1] for t in held} == {cluster.host("gpu-b").hostname}
    after = {r["result"][1] for r in rows if r["task_id"] not in answered}
    assert after == {cluster.host("gpu-b").hostname}, after
    assert late <= VISIBILITY_TIMEOUT + SLACK
    assert "gpu-a" not in cluster.workers()
    assert not cluster.watcher.exists(cluster.queue.keys.inflight(gpu_a_worker))


@pytest.mark.timeout(150)
def test_a_host_cut_off_under_load_has_its_requests_answered_once_and_rejoins_unrestarted(
    cluster: Cluster,
) -> None:
    gpu_a, gpu_b = cluster.host("gpu-a"), cluster.host("gpu-b")
    gpu_a_worker = cluster.workers()["gpu-a"]
    processes = set(gpu_a.pids())
    run = cluster.send(LOAD, "cut", "-linger")
    wait_until(lambda: run.all_sent() and cluster.held(gpu_a_worker[0]), timeout=60,
               what="gpu-a holding requests with the whole load sent")
    gpu_a.link(up=False)
    cut_at = time.monotonic()
    try:
        held = cluster.held(gpu_a_worker[0])  # what gpu-a holds and cannot answer now
        wait_until(lambda: "gpu-a" not in cluster.workers() and not cluster.watcher.exists(
            cluster.queue.keys.inflight(gpu_a_worker[0])), timeout=VISIBILITY_TIMEOUT + SLACK,
            what="a sweep requeueing the cut-off host's requests")
        wait_until(lambda: all(cluster.stored_host(t) == gpu_b.hostname for t in held),
                   timeout=30, what="gpu-b answering what gpu-a held")
        moved = time.monotonic() - cut_at
    finally:
        gpu_a.link(up=True)

    # gpu-a comes back by itself: the same worker, the same processes, no restart.
    assert cluster.wait_serving("gpu-a", timeout=30)["gpu-a"] == gpu_a_worker
    assert set(gpu_a.pids()) == processes
    # It finishes what it held and stores those answers again; the live client drops them.
    wait_until(lambda: [t for t in held if cluster.stored_host(t) == gpu_a.hostname],
               timeout=30, what="gpu-a's late duplicate answers")
    duplicates = sum(cluster.stored_host(t) == gpu_a.hostname for t in held)
    run.release()
    rows = run.report(timeout=90)
    _check_answers(rows, LOAD)
    by_task = {r["task_id"]: r for r in rows}
    assert {by_task[t]["result"][1] for t in held} == {gpu_b.hostname}
    print(f"\ncut gpu-a off holding {len(held)} requests; gpu-b had answered them "
          f"{moved:.1f} s later; gpu-a rejoined and stored {duplicates} late duplicates, "
          "which the client dropped")

    # gpu-a serves again. Its heartbeat is back before its fetcher may be (that one can still
    # sleep out its backoff, up to 2 s, while gpu-b alone answers 1,000 requests in less), so
    # rounds of 1,000 are sent, each checked in full, until gpu-a answers some.
    served_by: set[str] = set()
    for round_number in range(5):
        again = cluster.send(1000, f"again-{round_number}").report(timeout=60)
        _check_answers(again, 1000)
        served_by |= {r["result"][1] for r in again}
        if gpu_a.hostname in served_by:
            break
    assert gpu_a.hostname in served_by, "gpu-a did not serve again in 5 rounds of 1,000"


@pytest.mark.timeout(150)
def test_redis_unreachable_for_seconds_under_load_loses_nothing_and_no_caller_waits_past_a_timeout(
    cluster: Cluster,
) -> None:
    redis_host = cluster.host("redis")
    workers = cluster.workers()
    # 4,000 requests over about four seconds; every tenth with a 2 s timeout.
    run = cluster.send(LOAD, "outage", "-chunk", "200", "-pause", "0.2", "-timeout", "40",
                       "-short_every", "10", "-short_timeout", "2")
    wait_until(lambda: cluster.answered() >= 500, timeout=60, what="the load flowing")
    redis_host.link(up=False)
    time.sleep(OUTAGE)  # the fault's length, not synchronisation
    redis_host.link(up=True)

    rows = run.report(timeout=120)
    assert [r["n"] for r in rows] == list(range(LOAD))
    late = [r for r in rows if r["settled"] - r["sent"] > r["timeout"] + 1.5]
    assert late == [], f"{len(late)} callers waited past their timeout, first: {late[:3]}"
    long_ones = [r for r in rows if r["timeout"] > 2]
    _check_answers_of(long_ones)
    missed = [r for r in rows if r["timeout"] == 2 and "error" in r]
    assert all(r["error"].startswith("DeadlineExceeded") for r in missed), missed[:3]
    # Both hosts came back by themselves: the same workers, and they serve.
    assert cluster.wait_serving("gpu-a", "gpu-b", timeout=30) == workers
    again = cluster.send(1000, "again").report(timeout=60)
    _check_answers(again, 1000)
    overrun = max(r["settled"] - r["sent"] - r["timeout"] for r in missed)
    print(f"\nRedis unreachable {OUTAGE:g} s under load: {len(long_ones)} requests answered, "
          f"{len(missed)} of {LOAD - len(long_ones)} with a 2 s timeout failed in time "
          f"(DeadlineExceeded, at most {overrun:.2f} s past it), "
          f"{len(rows) - len(long_ones) - len(missed)} answered")


def _scaling_out_commands() -> list[str]:
    """docs/production.md's "Scaling out" commands, as tests/test_documented_commands.py maps
    them to the test below: the Redis host's, the worker hosts' (``cd`` and
    ``wkr-serving-start``), the client host's."""
    from tests.test_documented_commands import commands_run_by

    test = "tests/faults/test_many_hosts.py::" + (
        test_the_scaling_out_commands_in_the_docs_serve_from_two_hosts_as_written.__name__)
    texts = [c.text for c in commands_run_by(test)]
    redis_cmd, cd, worker, client = (next(t for t in texts if t.startswith(prefix)) for prefix in
                                     ("redis-server ", "cd ", "wkr-serving-start ", "python3 "))
    assert len(texts) == 4, texts
    return [redis_cmd, f"{cd}\n{worker}", client]


@pytest.mark.timeout(150)
def test_the_scaling_out_commands_in_the_docs_serve_from_two_hosts_as_written(
    tmp_path: Path,
) -> None:
    redis_cmd, worker_cmd, client_cmd = _scaling_out_commands()
    password = secrets.token_hex(8)
    sock = tmp_path / "redis.sock"  # the test's own window on Redis, outside the network
    watcher = redis.Redis(unix_socket_path=str(sock), password=password)
    net = Network(("redis", "gpu-a", "gpu-b", "client"), tmp_path)
    try:
        address = net["redis"].address

        def as_here(command: str) -> list[str]:
            command = (command.replace("10.0.0.5", address).replace(":PASSWORD@", f":{password}@")
                       .replace("/var/lib/redis", str(tmp_path))
                       .replace("redis-server ", f"{redis_server_binary()} --unixsocket {sock} ")
                       .replace("cd wkr-celery", f"cd {ROOT}")
                       .replace("wkr-serving-start ", SERVE[0] + " ")
                       .replace("python3 ", f"{sys.executable} "))
            return ["bash", "-ec", command]

        env = {"REDIS_PASSWORD": password}
        net["redis"].popen(as_here(redis_cmd), log="redis.log", env=env)
        wait_until(lambda: answers_ping(watcher), timeout=15, what="Redis")
        for host in ("gpu-a", "gpu-b"):
            net[host].popen(as_here(worker_cmd), log=f"{host}.log", env=env)
        registry = ServiceRegistry(watcher, ServiceKeys("linear"))
        try:
            wait_until(lambda: {b["host"] for b in registry.live_workers().values()} == {
                net["gpu-a"].hostname, net["gpu-b"].hostname}, timeout=90,
                what="workers of both GPU hosts")
        except AssertionError as exc:
            logs = {p.name: p.read_text()[-2000:] for p in tmp_path.glob("gpu-*.log")}
            raise AssertionError(f"{exc}; logs: {logs}") from None
        out = tmp_path / "client.out"
        with open(out, "wb") as sink:
            client = net["client"].popen(as_here(client_cmd), log="client.log", env=env,
                                         stdout=sink)
            assert client.wait(60) == 0, (tmp_path / "client.log").read_text()
        printed = out.read_text()
        assert printed.startswith("[0. 0. 0.") and printed.count("0.") == 128, printed
    finally:
        watcher.close()
        net.close()


def test_the_hosts_reach_only_each_other_and_leave_nothing_behind(tmp_path: Path) -> None:
    net = Network(("a", "b"), tmp_path)
    try:
        a, b = net["a"], net["b"]
        for host in (a, b):  # one route, the private subnet's: nothing leaves the bridge
            routes = ip("-n", host.netns, "route", "show").strip().splitlines()
            assert len(routes) == 1 and routes[0].startswith("10.213.0.0/24 dev eth0"), routes
            assert ip("-n", host.netns, "route", "show", "default").strip() == ""
        listener = b.popen([sys.executable, "-c", _ECHO_ONCE.format(b.address)], log="b.log",
                           stdout=subprocess.PIPE)
        assert listener.stdout is not None
        with listener.stdout:
            assert listener.stdout.readline().strip() == b"ready"
        talker = a.popen([sys.executable, "-c", _SEND.format(b.address)], log="a.log")
        assert talker.wait(15) == 0 and listener.wait(15) == 0
        assert a.hostname != b.hostname
        sleeper = a.popen(["sleep", "600"], log="a.log")
    finally:
        net.close()
    assert sleeper.poll() is not None, "a process of a host outlived the network"
    assert net.tag not in ip("netns", "list")


_ECHO_ONCE = """
import socket
s = socket.create_server(("{0}", 7000))
print("ready", flush=True)
conn, _ = s.accept()
assert conn.recv(5) == b"hello"
"""
_SEND = """
import socket
socket.create_connection(("{0}", 7000), timeout=10).sendall(b"hello")
"""
