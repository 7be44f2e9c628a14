"""``/docs`` (Swagger UI) and ``/redoc`` work offline: every asset is served by the package.

The REST API runs as ``wkr-serving-http`` (no worker needed to document the API); a headless
Chromium that cannot resolve any host but 127.0.0.1 renders both pages, so a page that still
needed a CDN would stay blank and fail the test.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest

from wkr_celery.redis_embedded import EmbeddedRedis

from .helpers import ROOT, free_port
from .rest_support import Api
from .scripts import script, user_env
from .test_dashboard import chromium

#: Chromium flag: every host name fails to resolve, so only 127.0.0.1 URLs can load.
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"

ASSET_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


@pytest.fixture(scope="module")
def api(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    port, log = free_port(), tmp_path_factory.mktemp("apidocs") / "http.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [script("wkr-serving-http"), "-name", f"docs{uuid.uuid4().hex[:6]}",
             "-broker_url", redis_server.url, "-http_port", str(port)],
            cwd=ROOT, env=user_env(), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
    api = Api(f"http://127.0.0.1:{port}", "docs", log, proc)
    try:
        api.wait_up()
        yield api
    finally:
        api.close()


def _asset_urls(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_only_assets_the_api_serves_itself(api: Api, page: str) -> None:
    response = api.http.get(page)
    assert response.status_code == 200
    urls = _asset_urls(response.text)
    assert any(u.endswith(".js") for u in urls), urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), f"{page} loads {url} from afar"
        asset = api.http.get(url)
        assert asset.status_code == 200, url
        kind = ASSET_TYPES[Path(urlparse(url).path).suffix]
        assert kind in asset.headers["content-type"], (url, asset.headers["content-type"])
        assert len(asset.content) > 1000, url
    assert "cdn" not in response.text.lower()


def test_swagger_ui_renders_every_operation_with_no_network_but_loopback(
        api: Api, tmp_path: Path) -> None:
    dom = chromium(tmp_path, OFFLINE, "--dump-dom", urljoin(api.url, "/docs"))
    assert "swagger-ui" in dom and "opblock" in dom, dom[-2000:]
    for path in ("/encode", "/tasks", "/status/server", "/healthz"):
        assert f'data-path="{path}"' in dom, f"Swagger UI did not list {path}"


def test_redoc_renders_the_api_with_no_network_but_loopback(api: Api, tmp_path: Path) -> None:
    dom = chromium(tmp_path, OFFLINE, "--dump-dom", urljoin(api.url, "/redoc"))
    assert "/encode" in dom and "Something went wrong" not in dom, dom[-2000:]
