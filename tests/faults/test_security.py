"""A Redis with ``requirepass``: the service and clients work with the password in the URL, and
a wrong password is a clear ``ServiceUnavailable`` that does not echo the password."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.helpers import Service
from wkr_celery.client import AsyncWKRClient, WKRClient
from wkr_celery.errors import ServiceUnavailable

from .conftest import OwnRedis

PASSWORD = "s3cret-Pw"


@pytest.mark.timeout(60)
def test_redis_requirepass_works_end_to_end_and_a_wrong_password_is_refused_clearly(
    own_redis: Callable[..., OwnRedis], serve_on: Callable[..., Service]
) -> None:
    server = own_redis(password=PASSWORD)
    assert f":{PASSWORD}@" in server.url
    service = serve_on(server.url, "tests.faults.workers.Doubler")
    client = service.client()
    assert [client.encode(n).result(timeout=15) for n in range(3)] == [0, 2, 4]

    wrong, missing = server.url.replace(PASSWORD, "wrong-pw"), server.url.replace(f":{PASSWORD}@", "")
    for url, name in ((wrong, service.name), (wrong, None), (missing, service.name)):
        with pytest.raises(ServiceUnavailable) as caught:
            WKRClient(name=name, broker_url=url, connect_timeout=2)
        message = str(caught.value)
        assert "Redis refused the credentials" in message, message
        assert "wrong-pw" not in message
        # A password the URL carries, refused, is said at once: asking again cannot cure it.
        # With none in the URL the client asks again until connect_timeout (a local embedded
        # Redis's password, looked up on each try, may yet appear).
        assert ("(tried for 2s)" in message) == (url == missing), message

    async def ask_with_the_wrong_password() -> None:
        async with AsyncWKRClient(name=service.name, broker_url=wrong, connect_timeout=2):
            pass
    with pytest.raises(ServiceUnavailable, match=r"Redis refused the credentials") as caught:
        asyncio.run(ask_with_the_wrong_password())
    assert "tried for" not in str(caught.value)
