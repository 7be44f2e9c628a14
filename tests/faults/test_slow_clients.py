"""Slow HTTP clients cannot hold the REST API's connections (``-http_read_timeout``).

Raw sockets play the slow clients: one that connects and sends nothing, one that dribbles header
lines (slowloris), one that sends its head and then stalls inside the body. The API closes the
first two and answers the third ``408``; a normal client is served throughout.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator

import httpx
import psutil
import pytest

from tests.helpers import Service, free_port, wait_answering, wait_until
from wkr_celery import codec

WORKER = "tests.faults.workers.Doubler"
READ_TIMEOUT = 1.0
#: How long a test waits for the API to act on a 1 s deadline before it fails.
GIVE_UP = 20.0


def _closed_by_peer(sock: socket.socket) -> bool:
    """True once the server has closed the connection (reads end, or writes are refused)."""
    try:
        return sock.recv(4096) == b""
    except TimeoutError:
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True


def _read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes, within ``GIVE_UP`` seconds."""
    data = b""
    give_up = time.monotonic() + GIVE_UP
    while time.monotonic() < give_up:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def slow_api(make_service: Callable[..., Service]) -> Iterator[tuple[int, httpx.Client]]:
    """A service whose REST API cuts off a client after READ_TIMEOUT without progress: its
    port, and a client of that API once a worker serves."""
    port = free_port()
    service = make_service(WORKER, "-http_port", str(port), "-http_read_timeout",
                           str(READ_TIMEOUT))
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        wait_answering(http, "/readyz", 60, what="the REST API;\n" + service.log()[-3000:])
        yield port, http


@pytest.mark.timeout(120)
def test_slow_clients_are_cut_off_and_normal_ones_served(
    slow_api: tuple[int, httpx.Client],
) -> None:
    port, http = slow_api

    silent = socket.create_connection(("127.0.0.1", port), timeout=0.2)
    dribbler = socket.create_connection(("127.0.0.1", port), timeout=0.2)
    staller = socket.create_connection(("127.0.0.1", port), timeout=0.2)
    try:
        dribbler.sendall(b"POST /encode HTTP/1.1\r\nHost: api\r\n")
        staller.sendall(b"POST /encode HTTP/1.1\r\nHost: api\r\nContent-Type: "
                        b"application/json\r\nContent-Length: 100\r\n\r\n{\"id\": 1, ")
        # The dribbler sends a header line every 0.2 s, forever unless it is cut off.
        give_up = time.monotonic() + GIVE_UP
        line = 0
        while not _closed_by_peer(dribbler):
            assert time.monotonic() < give_up, "a client dribbling its head kept the line"
            try:
                dribbler.sendall(f"X-Slow-{line}: 1\r\n".encode())
            except (BrokenPipeError, ConnectionResetError):
                break
            line += 1
        assert line >= 1, "the dribbler was cut off before it could dribble"
        wait_until(lambda: _closed_by_peer(silent), GIVE_UP,
                   what="the API to close a connection that sent nothing")

        response = _read_response(staller)
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), response[:300]
        error = json.loads(body)["error"]
        assert error["type"] == "RequestTimeout"
        assert f"within {READ_TIMEOUT:g}s (-http_read_timeout)" in error["message"]
    finally:
        for sock in (silent, dribbler, staller):
            sock.close()

    answer = http.post("/encode", json={"id": 1, "data": 21})
    assert answer.status_code == 200 and answer.json() == {"id": 1, "result": 42}


def _server_side_open(port: int, client_port: int) -> bool:
    """Whether the API still holds its end of the connection from ``client_port``."""
    return any(c.laddr and c.laddr.port == port and c.raddr and c.raddr.port == client_port
               and c.status == psutil.CONN_ESTABLISHED
               for c in psutil.net_connections(kind="tcp4"))


@pytest.mark.timeout(120)
def test_a_client_that_stops_reading_its_answer_is_cut_off(
    slow_api: tuple[int, httpx.Client],
) -> None:
    """A client that sends a request and never reads the answer held the API's connection,
    and the whole answer in the API's memory, for ever: uvicorn waits for the socket to drain
    with no deadline. Many such clients exhaust the API process's memory."""
    port, http = slow_api

    body = codec.dumps({"id": 1, "data": b"x" * (4 * 1024 * 1024)})  # answer: 8 MiB
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once
    reader.settimeout(0.2)
    try:
        reader.connect(("127.0.0.1", port))
        reader.sendall(b"POST /encode HTTP/1.1\r\nHost: api\r\nContent-Type: "
                       b"application/msgpack\r\nContent-Length: "
                       + str(len(body)).encode() + b"\r\n\r\n" + body)
        client_port = reader.getsockname()[1]
        wait_until(lambda: not _server_side_open(port, client_port), GIVE_UP,
                   what="the API to drop a connection whose client reads nothing of its "
                        "answer")
    finally:
        reader.close()

    answer = http.post("/encode", json={"id": 1, "data": 21})
    assert answer.status_code == 200 and answer.json() == {"id": 1, "result": 42}
