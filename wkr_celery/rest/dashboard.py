"""``GET /dashboard``: a live page (vanilla JS + SVG, served from the package, no CDN).

The page polls ``GET /dashboard/data`` every second and derives rates from consecutive
snapshots; the server only reports cumulative figures, so any number of open tabs cost one
cached heartbeat read each.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

from ..clock import wall_time
from .auth import require_key
from .encoding import render
from .gateway import Gateway
from .status import snapshot

__all__ = ["router", "mount"]

router = APIRouter()


def mount(app: FastAPI) -> None:
    app.mount("/dashboard/static", StaticFiles(packages=[("wkr_celery.rest", "static")]),
              name="dashboard-static")


@router.get("/dashboard", response_class=HTMLResponse, summary="Live dashboard (HTML page)")
async def page() -> HTMLResponse:
    html = resources.files("wkr_celery.rest").joinpath("static/dashboard.html").read_text("utf-8")
    return HTMLResponse(html)


@router.get("/dashboard/data", dependencies=[Depends(require_key)],
            summary="Cumulative figures the dashboard polls")
async def data(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    settings = gateway.settings

    def build() -> dict[str, Any]:
        snap = snapshot(gateway)
        info = gateway.info()
        now = wall_time()
        workers = [{"id": wid, "device": beat.get("device_id"), "host": beat.get("host"),
                    "requests": beat.get("requests", 0), "batches": beat.get("batches", 0),
                    "failed": beat.get("failed", 0), "buffered": beat.get("buffered", 0),
                    "predict_seconds": beat.get("predict_seconds", 0.0),
                    "started": beat.get("started", now)}
                   for wid, beat in sorted(snap["workers"].items())]
        oldest = min((float(w["started"]) for w in workers), default=now)
        http_errors = 0.0
        for metric in request.app.state.metrics.requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels["outcome"] != "ok":
                    http_errors += sample.value
        return {"t": now, "name": settings.name, "uptime_s": now - oldest if workers else 0.0,
                "batch_size": int(info.get("batch_size") or settings.batch_size),
                "protocol": info.get("protocol", settings.protocol),
                "version": info.get("version", ""), "queue_length": snap["queue_length"],
                "totals": snap["totals"], "batch_sizes": snap["batch_sizes"],
                "statistics": snap["statistics"], "workers": workers,
                "http_errors": http_errors, "flower_port": settings.flower_port,
                "scaling": snap["scaling"]}

    return render(await run_in_threadpool(build))
