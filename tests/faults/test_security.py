"""A Redis with ``requirepass``: the service and clients work with the password in the URL, and
a wrong password is a clear ``ServiceUnavailable`` that does not echo the password."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.helpers import Service
from wkr_celery.client import WKRClient
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

    for url in (server.url.replace(PASSWORD, "wrong-pw"), server.url.replace(f":{PASSWORD}@", "")):
        with pytest.raises(ServiceUnavailable) as caught:
            WKRClient(name=service.name, broker_url=url, connect_timeout=2)
        message = str(caught.value)
        assert "Redis refused the credentials" in message, message
        assert "wrong-pw" not in message
