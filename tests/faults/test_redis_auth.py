"""The embedded Redis requires a password: another local user who reaches its port is refused
(``NOAUTH``) and cannot read the password's files, while a client of the same user, started
from the shell with nothing but the address, gets its answers.

Runs ``wkr-serving-start`` in a terminal as typed, on embedded Redis ports of its own."""

from __future__ import annotations

import os
import select
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis as redis_py

from tests.helpers import ROOT, free_port
from tests.scripts import script, user_env
from wkr_celery import redis_passwords
from wkr_celery.connections import with_local_password

from .terminal import TerminalService

DOUBLER = "tests.faults.workers.Doubler"
NOBODY = 65534  # the uid of ``nobody``: another local user, who can open TCP connections


@pytest.fixture
def services() -> Iterator[list[TerminalService]]:
    started: list[TerminalService] = []
    yield started
    for service in started:
        service.close()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data directory other users may enter (0755, under /tmp), so what keeps them from the
    password file is that file's own mode, not a folder above it."""
    folder = Path(tempfile.mkdtemp(prefix="wkr-auth-test-"))
    folder.chmod(0o755)
    yield folder
    subprocess.run(["rm", "-rf", str(folder)], check=True, timeout=30)


def _serve(services: list[TerminalService], tmp_path: Path, *extra: str,
           env: dict[str, str] | None = None) -> TerminalService:
    service = TerminalService(tmp_path, DOUBLER, *extra, env=env)
    services.append(service)
    service.start()
    return service


def _raw_reply(port: int, command: bytes) -> bytes:
    """What the Redis on ``port`` answers ``command`` from a bare TCP connection: what any
    local user can do, no client library, no password."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(command)
        return sock.recv(4096)


def _as_another_user(*argv: str) -> subprocess.CompletedProcess[str]:
    """``argv`` run as ``nobody`` (this test runs as root, so it can switch users): a local
    user who is not the service's. Only system programs, which every user may run."""
    return subprocess.run(list(argv), user=NOBODY, group=NOBODY, extra_groups=[],
                          capture_output=True, text=True, timeout=30, cwd="/")


#: What a new Python process of this user runs, told only the address and the service's name;
#: it says "asking" when it has imported the package and is about to make its client.
SYNC_CLIENT = """
from wkr_celery.client import WKRClient
print("asking", flush=True)
with WKRClient(port={port_in}, port_out={port_out}, name={name!r}, connect_timeout=60) as c:
    print(c.encode(21).result(timeout=30))
"""
ASYNC_CLIENT = """
import asyncio
from wkr_celery.client import AsyncWKRClient
async def main():
    print("asking", flush=True)
    async with AsyncWKRClient(port={port_in}, port_out={port_out}, name={name!r},
                              connect_timeout=60) as c:
        print(await c.encode(21))
asyncio.run(main())
"""


def _shell_client(port_in: int, port_out: int, name: str, code: str = SYNC_CLIENT
                  ) -> subprocess.Popen[str]:
    code = code.format(port_in=port_in, port_out=port_out, name=name)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT.parent, env=user_env())


def _asking(client: subprocess.Popen[str]) -> None:
    """Wait until ``client`` is about to make its client (or has failed: then say why)."""
    assert client.stdout is not None
    ready, _, _ = select.select([client.stdout], [], [], 60)
    line = client.stdout.readline() if ready else ""
    if line.strip() != "asking":
        client.kill()
        raise AssertionError(f"the client never asked: {line!r} {client.communicate()[1][-3000:]}")


def _answer(client: subprocess.Popen[str]) -> str:
    try:
        out, err = client.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        client.kill()
        out, err = client.communicate(timeout=10)
    assert client.returncode == 0, err[-3000:]
    return out.strip().splitlines()[-1]


def _client_from_the_shell(port_in: int, port_out: int, name: str) -> str:
    return _answer(_shell_client(port_in, port_out, name))


@pytest.mark.timeout(120)
def test_embedded_redis_refuses_a_connection_without_its_password(
    services: list[TerminalService], tmp_path: Path
) -> None:
    service = _serve(services, tmp_path)
    for port in (service.port_in, service.port_out):
        assert _raw_reply(port, b"PING\r\n").startswith(b"-NOAUTH"), port
        assert _raw_reply(port, b"KEYS *\r\n").startswith(b"-NOAUTH"), port
        with redis_py.Redis(port=port, socket_timeout=5) as stranger:
            with pytest.raises(redis_py.AuthenticationError):
                stranger.ping()
        with redis_py.Redis(port=port, password="guess", socket_timeout=5) as guesser:
            with pytest.raises(redis_py.AuthenticationError):
                guesser.ping()
    if os.getuid() == 0:  # as another user, through bash's /dev/tcp: refused just the same
        stranger_ping = _as_another_user(
            "/bin/bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{service.port_in}; "
            "printf 'PING\\r\\n' >&3; head -c 7 <&3")
        assert stranger_ping.stdout == "-NOAUTH", stranger_ping


@pytest.mark.timeout(120)
def test_a_client_of_the_same_user_needs_only_the_address(
    services: list[TerminalService], tmp_path: Path
) -> None:
    service = TerminalService(tmp_path, DOUBLER)
    services.append(service)
    # Asking before the service starts (nothing listens on its ports yet), given its name: each
    # client waits for the broker, and looks the password up again as it retries.
    early = [_shell_client(service.port_in, service.port_out, service.name, code)
             for code in (SYNC_CLIENT, ASYNC_CLIENT)]
    for client in early:
        _asking(client)
    service.start()
    assert [_answer(client) for client in early] == ["42", "42"]
    assert _client_from_the_shell(service.port_in, service.port_out, service.name) == "42"
    check = subprocess.run(
        [script("wkr-serving-check"), "-name", service.name, "-port_in", str(service.port_in),
         "-port_out", str(service.port_out)],
        capture_output=True, text=True, timeout=90, cwd=ROOT.parent, env=user_env())
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.timeout(120)
def test_password_files_are_private_to_the_user(
    services: list[TerminalService], tmp_path: Path, data_dir: Path
) -> None:
    service = _serve(services, tmp_path, "-data_dir", str(data_dir))
    kept = data_dir / redis_passwords.PASSWORD_FILE
    entry = redis_passwords.index_dir() / f"redis-127.0.0.1-{service.port_in}"
    for path in (kept, entry, *data_dir.glob("wkr-*.conf")):
        info = path.stat()
        assert info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o600, path
    assert stat.S_IMODE(entry.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o755, "the user's own folder was changed"
    if os.getuid() == 0:  # another user enters the folder and reads a 0644 file, not the password
        (data_dir / "readable").write_text("anyone")
        (data_dir / "readable").chmod(0o644)
        assert _as_another_user("/usr/bin/cat", str(data_dir / "readable")).stdout == "anyone"
        denied = _as_another_user("/usr/bin/cat", str(kept))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
    # The password is on no process's command line (``ps`` shows those to everyone) and in no log.
    password = kept.read_text().strip()
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert password.encode() not in cmdline, f"pid {pid} shows the password"
    assert password not in service.log() and password not in service.terminals[0].output


@pytest.mark.timeout(120)
def test_a_data_dir_the_service_creates_is_readable_by_the_user_alone(
    services: list[TerminalService], tmp_path: Path, data_dir: Path
) -> None:
    """Redis writes its append-only file (queued inputs, results) 0644: the folder that holds
    it is what keeps other local users out, so the service makes it 0700 (inside a folder
    others may enter, as ``data_dir`` is)."""
    made = data_dir / "new" / "redis-data"
    _serve(services, tmp_path, "-data_dir", str(made))
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    assert list(made.glob("wkr-*.aof")), "no AOF in the data dir; the test proved nothing"
    if os.getuid() == 0:  # another user walks down to it and is stopped at its door
        (data_dir / "new").chmod(0o755)
        denied = _as_another_user("/usr/bin/ls", str(made))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied


@pytest.mark.timeout(180)
def test_password_persists_across_a_restart_with_data_dir(
    services: list[TerminalService], tmp_path: Path, data_dir: Path
) -> None:
    service = _serve(services, tmp_path, "-data_dir", str(data_dir))
    password = (data_dir / redis_passwords.PASSWORD_FILE).read_text().strip()
    told = f"redis://:{password}@127.0.0.1:{service.port_in}/0"  # a client given the URL
    with redis_py.Redis.from_url(told) as client:
        client.set("kept", "across restarts")
    service.close()
    assert with_local_password(f"redis://127.0.0.1:{service.port_in}/0") == (
        f"redis://127.0.0.1:{service.port_in}/0"), "a stopped service left its index entry"
    service.terminals.clear()
    service.start()
    assert (data_dir / redis_passwords.PASSWORD_FILE).read_text().strip() == password
    with redis_py.Redis.from_url(told) as client:
        assert client.get("kept") == b"across restarts", "the AOF was not replayed"
    assert _client_from_the_shell(service.port_in, service.port_out, service.name) == "42"


@pytest.mark.timeout(120)
def test_redis_password_flag_sets_the_password(
    services: list[TerminalService], tmp_path: Path, data_dir: Path
) -> None:
    chosen = "chosen-by-the-operator"
    service = _serve(services, tmp_path, "-data_dir", str(data_dir), "-redis_password", chosen)
    with redis_py.Redis(port=service.port_in, password=chosen, socket_timeout=5) as client:
        assert client.ping()
    assert not (data_dir / redis_passwords.PASSWORD_FILE).exists(), "a given password is not kept"
    assert _client_from_the_shell(service.port_in, service.port_out, service.name) == "42"
    assert chosen not in service.log() and chosen not in service.terminals[0].output


@pytest.mark.timeout(120)
def test_wkr_redis_password_variable_sets_the_password(
    services: list[TerminalService], tmp_path: Path
) -> None:
    chosen = "from-the-environment"
    service = _serve(services, tmp_path, env={"WKR_REDIS_PASSWORD": chosen})
    with redis_py.Redis(port=service.port_out, password=chosen, socket_timeout=5) as client:
        assert client.ping()


def test_an_entry_whose_writer_is_gone_is_not_used() -> None:
    """A killed service's Redis died with it: its password is not sent to whatever listens on
    the port next (a Redis without a password would refuse the AUTH)."""
    port = free_port()
    writer = subprocess.run(
        [sys.executable, "-c", "from wkr_celery import redis_passwords as p; "
         f"p.remember('127.0.0.1', {port}, 'stale')"], timeout=30, cwd=ROOT, check=True)
    assert writer.returncode == 0
    entry = redis_passwords.index_dir() / f"redis-127.0.0.1-{port}"
    try:
        assert entry.exists()
        assert redis_passwords.lookup("127.0.0.1", port) is None
        redis_passwords.remember("127.0.0.1", port, "live")  # this process is alive
        assert with_local_password(f"redis://localhost:{port}/0") == (
            f"redis://:live@localhost:{port}/0")
        # An explicit password, and other hosts, are left alone.
        assert with_local_password(f"redis://:mine@127.0.0.1:{port}/0") == (
            f"redis://:mine@127.0.0.1:{port}/0")
        assert with_local_password(f"redis://10.0.0.5:{port}/0") == f"redis://10.0.0.5:{port}/0"
    finally:
        redis_passwords.forget("127.0.0.1", port)
    assert not entry.exists()


def _family(root: int) -> list[int]:
    """``root`` and every process below it, by the parent links in /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry)] = int(fields[1])
    family, todo = [], [root]
    while todo:
        pid = todo.pop()
        family.append(pid)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return family


@pytest.mark.timeout(180)
def test_a_broker_password_given_in_the_environment_is_on_no_command_line(
        own_redis: Any, tmp_path: Path) -> None:
    """docs/production.md (Scaling out) once had each worker host start with the Redis password
    in ``-broker_url``: any local user reads it there (``ps``, /proc/PID/cmdline), and so in a
    run script or systemd unit made with it. The guide now says to make the run script without
    it and ``export WKR_BROKER_URL=…`` before ``sh run_script.sh start``. Typed as written, in
    one shell, from a project folder holding the guide's ``workers/``: the script starts a
    service that serves, reports its status and stops with the URL from the environment, and
    the password is on no command line of the service, its workers or its REST API."""
    import secrets
    import shutil

    import httpx

    from tests.helpers import wait_answering
    from wkr_celery.client import WKRClient

    password = secrets.token_hex(16)
    server = own_redis(password=password)
    http_port = free_port()
    name = f"env{secrets.token_hex(4)}"
    project = tmp_path / "project"
    shutil.copytree(ROOT / "workers", project / "workers",
                    ignore=shutil.ignore_patterns("__pycache__"))

    def typed(*lines: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", "-c", "\n".join(lines)], cwd=project, env=user_env(),
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    export = f"export WKR_BROKER_URL='{server.url}'"
    made = typed(f"wkr-serving-make workers.linear.Worker -num_worker 1 -http_port {http_port} "
                 f"-name {name} > run_script.sh")
    assert made.returncode == 0, made.stderr
    assert password not in (project / "run_script.sh").read_text()
    log = project / "logs" / f"{name}.std.log"
    try:
        started = typed(export, "sh run_script.sh start")
        assert started.returncode == 0, started.stdout + started.stderr + (
            log.read_text(errors="replace") if log.exists() else "")
        with WKRClient(name=name, broker_url=server.url, connect_timeout=60) as client:
            x = np.ones(512, dtype=np.float32)
            assert client.encode(x, timeout=60).result(timeout=60).shape == (128,)
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=5) as http:
            wait_answering(http, "/readyz", 60, "the REST API ready")

        family = _family(int((project / f"{name}.pid").read_text()))
        assert len(family) >= 3, family  # the supervisor, a worker, the REST API
        for pid in family:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            assert password.encode() not in cmdline, cmdline.replace(b"\0", b" ")

        status = typed(export, "sh run_script.sh status")
        assert status.returncode == 0, status.stdout + status.stderr
        checked = typed(export, f"wkr-serving-check -name {name}")
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        stopped = typed(export, "sh run_script.sh stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr + log.read_text(
        errors="replace")
    assert typed(export, "sh run_script.sh status").returncode == 3
