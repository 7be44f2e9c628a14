"""The embedded Redis has no admin commands: a local user who reaches its port cannot make it
write files (CONFIG SET dir + SAVE), load code (MODULE LOAD) or freeze it (DEBUG SLEEP)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_py

from tests.helpers import free_port
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
