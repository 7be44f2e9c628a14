# ruff: noqa: F811  (the shared `stack` fixture is imported, then requested by name)
"""The dashboard in a real headless Chromium, and Flower's view of the same workers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from .cdp import PipeBrowser
from .helpers import ROOT, wait_until
from .rest_support import Stack, stack  # noqa: F401

#: Set to a path (e.g. docs/dashboard.png) to keep the screenshot the README shows.
SCREENSHOT_ENV = "SAVE_DASHBOARD_PNG"  # not WKR_*: services reject unknown WKR_ vars


HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage"]


def chromium_binary() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("Chromium is not installed: apt-get install -y chromium (.ci/run does)")
    return binary


def chromium(tmp_path: Path, *args: str, budget_ms: int = 6000) -> str:
    """Run headless Chromium once; returns its stdout (the DOM for ``--dump-dom``).

    The virtual-time budget runs the page's timers fast (polls back to back), so a few
    seconds of page time cost a fraction of a second.
    """
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    command = [chromium_binary(), *HEADLESS, f"--user-data-dir={profile}",
               f"--virtual-time-budget={budget_ms}", *args]
    done = subprocess.run(command, capture_output=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode(errors="replace")


def attribute(dom: str, element_id: str, name: str) -> float:
    """``data-<name>`` of the element with ``element_id`` in a dumped DOM."""
    tag = re.search(rf'<[^>]*\bid="{element_id}"[^>]*>', dom)
    assert tag, f"no element #{element_id} in the page"
    value = re.search(rf'\bdata-{name}="([^"]*)"', tag.group(0))
    assert value, f"#{element_id} has no data-{name}: {tag.group(0)}"
    return float(value.group(1))


class Traffic:
    """Keeps a service busy from a thread while the browser watches, so rates are non-zero."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self.stop.is_set():
                items = [{"id": i, "data": {"op": "double", "x": i}} for i in range(4)]
                assert http.post("/encode", json=items).status_code == 200
                self.sent += 4

    def __enter__(self) -> Traffic:
        self.thread.start()
        wait_until(lambda: self.sent >= 40, 30, what="traffic to flow")
        # Figures reach the page through worker heartbeats (about one a second): wait until
        # one carries this traffic, or a browser that loads fast sees the pre-traffic zeros.
        wait_until(self.reported, 30, interval=0.2, what="a heartbeat that counts the traffic")
        return self

    def reported(self) -> bool:
        data = httpx.get(f"{self.url}/dashboard/data", timeout=10).json()
        return data["totals"]["responses"] >= 40

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def test_dashboard_charts_show_live_non_zero_figures(stack: Stack, tmp_path: Path) -> None:
    with Traffic(stack.calc.url):
        dom = chromium(tmp_path, "--dump-dom", f"{stack.calc.url}/dashboard")
    assert attribute(dom, "total-requests", "value") > 0
    assert attribute(dom, "total-responses", "value") >= 40
    assert attribute(dom, "total-workers", "value") == 1
    assert attribute(dom, "chart-rate", "max") > 0          # requests/s and responses/s
    assert attribute(dom, "chart-batch", "last") >= 1       # mean batch size
    assert attribute(dom, "chart-ms", "last") > 0           # predict ms per item
    assert attribute(dom, "chart-hist", "total") > 0        # batch-size histogram
    assert re.search(r'<body[^>]*data-polls="([2-9]|\d\d+)"', dom), "the page did not poll"
    assert dom.count("<tr data-worker=") == 1
    assert re.search(r'id="flower-link" href="http://127\.0\.0\.1:\d+/"', dom)
    assert "<td>batchsize</td>" in dom                     # record_statistic keys


def test_dashboard_in_real_time_keeps_charting_and_screenshots(
        stack: Stack, tmp_path: Path) -> None:
    """Real time (no virtual clock), driven over the DevTools pipe: rates as a person sees them."""
    shot = tmp_path / "dashboard.png"
    browser = PipeBrowser(chromium_binary(), [*HEADLESS, "--hide-scrollbars"],
                          tmp_path / "profile")
    try:
        with Traffic(stack.calc.url):
            browser.open(f"{stack.calc.url}/dashboard", 1280, 900)
            polls = ("location.pathname === '/dashboard' && document.body"
                     " && Number(document.body.dataset.polls || 0)")
            wait_until(lambda: (browser.evaluate(polls) or 0) >= 8, 30, interval=0.2,
                       what="eight dashboard polls")
            rate = float(browser.evaluate("document.getElementById('chart-rate').dataset.last"))
            browser.screenshot(shot)
    finally:
        browser.close()
    assert rate > 0, "requests/s on the throughput chart"
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    keep = os.environ.get(SCREENSHOT_ENV)
    if keep:
        shutil.copyfile(shot, ROOT / keep)


def test_flower_lists_the_service_workers(stack: Stack) -> None:
    stack.calc.http.post("/encode", json={"data": {"op": "echo"}})
    worker_name = re.compile(rf"wkr\.{stack.calc.name}\.0@")

    def listed() -> dict | None:
        try:
            response = httpx.get(f"http://127.0.0.1:{stack.flower_port}/api/workers",
                                 params={"refresh": "1"}, timeout=10)
        except httpx.TransportError:
            return None
        if response.status_code != 200:
            return None
        workers = response.json()
        return workers if any(worker_name.match(name) for name in workers) else None

    workers = wait_until(listed, 60, interval=0.5, what="Flower to list the worker")
    (name,) = [n for n in workers if worker_name.match(n)]
    registered = workers[name].get("registered") or []
    assert "wkr_celery.predict" in registered
    assert workers[name]["stats"]["pool"]["max-concurrency"] == 1


def test_flower_lists_served_requests_as_tasks_when_task_events_are_on(stack: Stack) -> None:
    flower = f"http://127.0.0.1:{stack.flower_port}"
    wait_until(lambda: _flower_up(flower), 60, interval=0.5, what="Flower to answer")
    ok = stack.calc.http.post("/tasks", json={"data": {"op": "double", "x": 5}}).json()
    bad = stack.calc.http.post("/tasks", json={"data": {"op": "raise"}}).json()

    def seen() -> dict | None:
        tasks = httpx.get(f"{flower}/api/tasks", timeout=10).json()
        wanted = (tasks.get(ok["task_id"]), tasks.get(bad["task_id"]))
        done = all(t and t.get("state") in ("SUCCESS", "FAILURE") for t in wanted)
        return dict(zip(("ok", "bad"), wanted, strict=True)) if done else None

    tasks = wait_until(seen, 30, interval=0.3, what="Flower to receive the task events")
    assert tasks["ok"]["state"] == "SUCCESS" and tasks["ok"]["result"] == "10"
    assert tasks["ok"]["name"] == "wkr_celery.predict"
    assert tasks["ok"]["worker"].startswith(f"wkr.{stack.calc.name}.0@")
    assert tasks["bad"]["state"] == "FAILURE" and "PredictError" in tasks["bad"]["exception"]


def _flower_up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/workers", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def test_flowers_counts_of_a_worker_agree_with_the_services_own(stack: Stack) -> None:
    """What Flower shows of the calc worker (its page's "Processed tasks", Celery's
    ``inspect stats``; the workers table's received, succeeded and failed, from task events)
    grows by what this test sent, as the worker's own heartbeat counts do."""
    flower = f"http://127.0.0.1:{stack.flower_port}"
    wait_until(lambda: _flower_up(flower), 60, interval=0.5, what="Flower to answer")
    worker = re.compile(rf"wkr\.{stack.calc.name}\.0@")

    def counts() -> dict[str, float] | None:
        """None until Flower lists the worker in both views."""
        stats = httpx.get(f"{flower}/api/workers", params={"refresh": "1"}, timeout=10).json()
        table = httpx.get(f"{flower}/workers", params={"json": "1"}, timeout=10).json()["data"]
        names = [n for n in stats if worker.match(n) and "total" in stats[n].get("stats", {})]
        rows = [r for r in table if names and r["hostname"] == names[0]]
        if not rows:
            return None
        (beat,) = stack.calc_service.live_workers().values()
        return {"processed": stats[names[0]]["stats"]["total"].get("wkr_celery.predict", 0),
                **{k: rows[0].get(k, 0) for k in ("task-received", "task-succeeded",
                                                  "task-failed")},
                "ours": beat["requests"], "ours_failed": beat["failed"]}

    def settled() -> dict[str, float] | None:
        now = counts()
        return now if now and now["processed"] == now["ours"] else None

    stack.calc.http.post("/encode", json={"data": {"op": "echo"}})  # Flower connected: counted
    before = wait_until(settled, 30, interval=0.3,
                        what="Flower's processed count to match the worker's own")
    for x in range(6):
        assert stack.calc.http.post("/encode", json={"data": {"op": "double", "x": x}}
                                    ).status_code == 200
    for _ in range(2):
        assert stack.calc.http.post("/encode", json={"data": {"op": "raise"}}).status_code >= 400
    want = {"processed": 8, "task-received": 8, "task-succeeded": 6, "task-failed": 2,
            "ours": 8, "ours_failed": 2}

    def grown() -> dict[str, float] | None:
        now = counts()
        delta = {k: now[k] - before[k] for k in want} if now else None
        return delta if delta == want else None

    wait_until(grown, 30, interval=0.3, what=f"Flower's and the worker's counts to grow by {want}")
