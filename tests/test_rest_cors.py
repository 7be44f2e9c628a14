"""``-cors``: a web page from another origin calls the REST API in a real headless Chromium.

The page is served by a plain ``http.server`` on another loopback port (another origin); its
script ``fetch``es ``POST /encode`` of three APIs of one ``tests.rest_workers.Calc`` service:

- ``listed``: ``wkr-serving-start … -http_port A -cors <the page's origin>`` (the REST API is
  the supervisor's child: the flag reaches it through the environment);
- ``closed``: ``wkr-serving-http`` without ``-cors`` (as every API before this flag);
- ``anyone``: ``wkr-serving-http -cors '*'`` with an API key.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from wkr_celery import codec
from wkr_celery.redis_embedded import EmbeddedRedis

from .cdp import PipeBrowser
from .helpers import Service, free_port, start_service, wait_answering, wait_until
from .rest_support import Api, start_rest
from .test_dashboard import HEADLESS, chromium_binary

KEY = "cors-key"
UNLISTED = "http://127.0.0.1:9"

#: The page: its query string says which API to call, with which body and key; the outcome
#: (status, content type and body in base64, or the error fetch raised) lands in
#: ``document.body.dataset.outcome``, tagged with the query's ``run``.
PAGE = """<!doctype html><html><body><script>
const q = new URLSearchParams(location.search);
const msgpack = q.get("type") === "msgpack";
const headers = {"Content-Type": msgpack ? "application/msgpack" : "application/json"};
if (q.get("key")) headers["X-API-Key"] = q.get("key");
const body = msgpack ? Uint8Array.from(atob(q.get("body")), c => c.charCodeAt(0)) : q.get("body");
fetch(q.get("api") + "/encode", {method: "POST", headers, body, signal: AbortSignal.timeout(20000)})
  .then(async r => {
    const bytes = new Uint8Array(await r.arrayBuffer());
    return {status: r.status, type: r.headers.get("content-type"),
            body: btoa(String.fromCharCode(...bytes))};
  })
  .catch(e => ({error: String(e)}))
  .then(outcome => { document.body.dataset.outcome = JSON.stringify({...outcome, run: q.get("run")}); });
</script></body></html>
"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Apis:
    page_origin: str
    other_origin: str
    listed: Api
    closed: Api
    anyone: Api
    service: Service


@pytest.fixture(scope="module")
def page_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Two origins, ``http://127.0.0.1:<port>`` each, serving ``/page.html``: the first is
    given to ``-cors``, the second is not."""
    folder = tmp_path_factory.mktemp("page")
    (folder / "page.html").write_text(PAGE)
    servers = [http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder))) for _ in range(2)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    try:
        first, second = (f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
        yield first, second
    finally:
        for server, thread in zip(servers, threads, strict=True):
            server.shutdown()
            server.server_close()
            thread.join(10)


@pytest.fixture(scope="module")
def apis(redis_server: EmbeddedRedis, page_servers: tuple[str, str],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Apis]:
    log_dir = tmp_path_factory.mktemp("cors")
    page_server, other = page_servers
    url, port, name = redis_server.url, free_port(), f"cors{uuid.uuid4().hex[:8]}"
    service = start_service(name, url, url, log_dir, "tests.rest_workers.Calc",
                            ["-http_port", str(port), "-cors", page_server,
                             "-batch_timeout", "1"])
    listed = Api(f"http://127.0.0.1:{port}", name, service.log_path)
    closed = start_rest(name, url, log_dir)
    anyone = start_rest(name, url, log_dir, "-cors", "*", env={"WKR_HTTP_API_KEY": KEY})
    try:
        for api in (listed, closed, anyone):
            wait_answering(api.http, "/readyz", 90, what=f"{api.url} ready; log:\n{api.log()}")
        yield Apis(page_server, other, listed, closed, anyone, service)
    finally:
        for api in (listed, closed, anyone):
            api.close()
        service.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipeBrowser]:
    chrome = PipeBrowser(chromium_binary(), HEADLESS, tmp_path_factory.mktemp("profile"))
    try:
        chrome.open("about:blank", 800, 600)
        yield chrome
    finally:
        chrome.close()


def page_fetch(browser: PipeBrowser, page_origin: str, api: str, body: bytes | str, *,
               msgpack: bool = False, key: str = "") -> dict[str, Any]:
    """Load the page from ``page_origin`` and return what its ``fetch`` of ``api`` got."""
    run = uuid.uuid4().hex
    text = base64.b64encode(body).decode() if isinstance(body, bytes) else body
    query = {"api": api, "type": "msgpack" if msgpack else "json", "body": text, "key": key,
             "run": run}
    browser.send("Page.navigate", {"url": f"{page_origin}/page.html?{urlencode(query)}"})

    def outcome() -> dict[str, Any] | None:
        raw = browser.evaluate("document.body && document.body.dataset.outcome || ''")
        found = json.loads(raw) if raw else None
        return found if found and found["run"] == run else None

    return wait_until(outcome, 30, interval=0.1, what=f"the page's fetch of {api}")


def _json(outcome: dict[str, Any]) -> Any:
    assert "error" not in outcome, outcome
    return json.loads(base64.b64decode(outcome["body"]))


def test_a_page_from_the_listed_origin_gets_answers_in_json_and_msgpack(
        apis: Apis, browser: PipeBrowser) -> None:
    got = page_fetch(browser, apis.page_origin, apis.listed.url,
                     json.dumps({"id": 1, "data": {"op": "double", "x": 21}}))
    assert got["status"] == 200 and got["type"] == "application/json", got
    assert _json(got) == {"id": 1, "result": 42}

    body = codec.dumps({"id": 2, "data": {"op": "double", "x": [1.5, 2.5]}})
    got = page_fetch(browser, apis.page_origin, apis.listed.url, body, msgpack=True)
    assert got["status"] == 200 and got["type"] == "application/msgpack", got
    answer = codec.loads(base64.b64decode(got["body"]))
    assert answer["id"] == 2 and answer["result"].tolist() == [3.0, 5.0]


def test_without_cors_the_browser_blocks_what_the_api_would_answer(
        apis: Apis, browser: PipeBrowser) -> None:
    got = page_fetch(browser, apis.page_origin, apis.closed.url,
                     json.dumps({"id": 1, "data": {"op": "double", "x": 21}}))
    assert got.get("error", "").startswith("TypeError"), got  # "Failed to fetch"
    # The API is up and answers the same call outside a browser: only CORS stopped the page.
    direct = apis.closed.http.post("/encode", json={"data": {"op": "double", "x": 21}},
                                   headers={"Origin": apis.page_origin})
    assert direct.status_code == 200 and "access-control-allow-origin" not in direct.headers


def test_a_page_from_an_origin_not_listed_is_blocked(apis: Apis, browser: PipeBrowser) -> None:
    got = page_fetch(browser, apis.other_origin, apis.listed.url,
                     json.dumps({"id": 1, "data": {"op": "double", "x": 21}}))
    assert got.get("error", "").startswith("TypeError"), got


def test_a_page_sends_the_api_key_to_an_api_open_to_every_origin(
        apis: Apis, browser: PipeBrowser) -> None:
    item = json.dumps({"id": "k", "data": {"op": "echo", "v": 1}})
    got = page_fetch(browser, apis.page_origin, apis.anyone.url, item, key=KEY)
    assert got["status"] == 200 and _json(got) == {"id": "k", "result": {"op": "echo", "v": 1}}
    refused = page_fetch(browser, apis.page_origin, apis.anyone.url, item)
    assert refused["status"] == 401, refused  # an error answer the page can read
    assert _json(refused)["error"]["type"] == "Unauthorized"
    answer = httpx.post(f"{apis.anyone.url}/encode", json={"data": {"op": "echo"}},
                        headers={"Origin": "http://anywhere.test", "X-API-Key": KEY}, timeout=30)
    assert answer.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in answer.headers
    assert "retry-after" in answer.headers["access-control-expose-headers"].lower()


def _preflight(api: Api, origin: str) -> httpx.Response:
    return httpx.options(f"{api.url}/encode", timeout=30, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-api-key"})


def test_preflight_allows_the_key_header_for_a_listed_origin_only(apis: Apis) -> None:
    allowed = _preflight(apis.listed, apis.page_origin)
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["access-control-allow-origin"] == apis.page_origin
    assert "x-api-key" in allowed.headers["access-control-allow-headers"].lower()
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in allowed.headers

    unlisted = _preflight(apis.listed, UNLISTED)
    assert unlisted.status_code == 400
    assert "access-control-allow-origin" not in unlisted.headers

    closed = _preflight(apis.closed, apis.page_origin)
    assert "access-control-allow-origin" not in closed.headers

    anyone = _preflight(apis.anyone, UNLISTED)
    assert anyone.status_code == 200 and anyone.headers["access-control-allow-origin"] == "*"

