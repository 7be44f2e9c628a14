"""The embedded Redis has no admin commands: a local user who reaches its port cannot make it
write files (CONFIG SET dir + SAVE), load code (MODULE LOAD) or freeze it (DEBUG SLEEP)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_py

from tests.helpers import free_port
from wkr_celery.errors import ServiceUnavailable
from wkr_celery.redis_embedded import DISABLED_COMMANDS, EmbeddedRedis


@pytest.fixture(scope="module")
def embedded() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(free_port(), persist=True) as server:
        yield server


def test_config_set_dir_and_save_cannot_write_a_file(embedded: EmbeddedRedis,
                                                     tmp_path: Path) -> None:
    attacker = redis_py.Redis(port=embedded.port)
    attacker.set("payload", "* * * * * root sh /tmp/evil")
    for command in (("CONFIG", "SET", "dir", str(tmp_path)),
                    ("CONFIG", "SET", "dbfilename", "crontab"), ("SAVE",), ("BGSAVE",)):
        with pytest.raises(redis_py.ResponseError, match="unknown command"):
            attacker.execute_command(*command)
    assert list(tmp_path.iterdir()) == []
    attacker.close()


@pytest.mark.parametrize("command", DISABLED_COMMANDS)
def test_admin_command_is_unknown(embedded: EmbeddedRedis, command: str) -> None:
    with redis_py.Redis(port=embedded.port) as client:
        with pytest.raises(redis_py.ResponseError, match=f"unknown command `{command}`"):
            client.execute_command(command, "x")
        assert client.ping(), "a refused command must not take the server down"


def test_a_leftover_of_the_same_data_dir_is_stopped_and_a_stranger_is_not(
        tmp_path: Path) -> None:
    """A redis-server an earlier run left on this data dir and port is stopped (pid file, title
    and working directory all match); one on the same port started elsewhere is refused."""
    port = free_port()
    leftover = EmbeddedRedis(port, data_dir=str(tmp_path / "data"), persist=True).start()
    try:
        with EmbeddedRedis(port, data_dir=str(tmp_path / "data"), persist=True) as again:
            assert leftover.exit_code() is not None, "the leftover still runs"
            with redis_py.Redis(port=port) as client:
                assert client.ping()
            with pytest.raises(ServiceUnavailable, match=f"port {port} on 127.0.0.1 is taken"):
                EmbeddedRedis(port, data_dir=str(tmp_path / "elsewhere")).start()
            assert again.exit_code() is None, "a start on another data dir stopped it"
    finally:
        leftover.stop()
